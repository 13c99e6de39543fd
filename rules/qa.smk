# Quality assessment: previews and statistics of every master, the night's QA document, and
# what `snakemake --report report.html` shows (captions in report/).
report: "../report/workflow.rst"


wildcard_constraints:
    kind=r"(bias|dark|flat|arclamp_[A-Za-z0-9._+-]+)",


rule master_qa:
    """Previews (image and histograms per CCD) and the statistics/provenance page of a master."""
    input:
        master=f"{MASTERS}/{{date}}/kpf_{{date}}_master_{{kind}}.fits",
        order_mask=qa_order_mask,
    output:
        report(
            directory(f"{WORK}/qa/{{date}}/{{kind}}"),
            patterns=["{ccd}-{figure}.png", "{ccd}-{figure}.html"],
            caption="../report/master.rst",
            category="master {kind}",
            subcategory="night {date}",
            labels={"night": "{date}", "part": "{ccd}", "figure": "{figure}"},
        ),
    log:
        f"{WORK}/logs/{{date}}/qa_{{kind}}.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/qa/master_qa_{{kind}}.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=qa_mem_mb,
        runtime=15,
    params:
        qa=QA_CFG,
        settings=qa_settings_of,
        flag_fraction=CFG["flag_fraction"],
    script:
        "../scripts/master_qa.py"


rule night_qa:
    """The night's QA document (statistics, provenance, warnings, the wavelength solutions'
    summaries) and statistics page."""
    input:
        masters=night_masters,
        previews=qa_previews,
        wls=night_wls_qa,
    output:
        json=report(
            f"{MASTERS}/{{date}}/kpf_{{date}}_masters_qa.json",
            caption="../report/qa_json.rst",
            category="night summary",
            subcategory="night {date}",
            labels={"night": "{date}", "figure": "QA document (JSON)"},
        ),
        table=report(
            f"{WORK}/qa/{{date}}/statistics.html",
            caption="../report/statistics.rst",
            category="night summary",
            subcategory="night {date}",
            labels={"night": "{date}", "figure": "statistics and warnings"},
        ),
    log:
        f"{WORK}/logs/{{date}}/qa_night.log",
    localrule: True
    conda:
        "../envs/kpfmasters.yaml"
    params:
        qa=QA_CFG,
        flag_fraction=CFG["flag_fraction"],
        settings=ws.canonical(CFG["masters"]),
        rejects=night_rejects,
    script:
        "../scripts/night_qa.py"


rule l1_qa:
    """Figures of an L1: extracted orders; for the flat its blaze and the trace overlay."""
    input:
        l1=f"{MASTERS}/{{date}}/kpf_{{date}}_master_{{kind}}_L1.fits",
        flat=l1_qa_flat,
        traces=l1_qa_traces,
    output:
        report(
            directory(f"{WORK}/qa/{{date}}/L1/{{kind}}"),
            patterns=["{part}-{figure}.png"],
            caption="../report/l1.rst",
            category="master {kind}",
            subcategory="night {date}",
            labels={"night": "{date}", "part": "{part}", "figure": "{figure}"},
        ),
    log:
        f"{WORK}/logs/{{date}}/qa_l1_{{kind}}.log",
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=qa_mem_mb,
        runtime=15,
    params:
        qa=QA_CFG,
    script:
        "../scripts/l1_qa.py"


rule wls_qa:
    """Figures, per-order table and warnings of a wavelength solution and its drift table."""
    input:
        wls=f"{MASTERS}/{{date}}/kpf_{{date}}_master_WLS_{{tag}}_L1.fits",
        l2=f"{MASTERS}/{{date}}/kpf_{{date}}_master_arclamp_{{tag}}_L2.fits",
        previous=wls_qa_previous,
    output:
        report(
            directory(f"{WORK}/qa/{{date}}/WLS/{{tag}}"),
            patterns=["WLS-{figure}.png", "WLS-{figure}.html"],
            caption="../report/wls.rst",
            category="wavelength solution {tag}",
            subcategory="night {date}",
            labels={"night": "{date}", "figure": "{figure}"},
        ),
    log:
        f"{WORK}/logs/{{date}}/qa_wls_{{tag}}.log",
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=qa_mem_mb,
        runtime=15,
    params:
        qa=QA_CFG,
    script:
        "../scripts/wls_qa.py"
