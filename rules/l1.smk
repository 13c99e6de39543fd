rule l1_master:
    """1D spectra (L1) of a master: box extraction of every trace, WAVE from the reference."""
    input:
        master=f"{MASTERS}/{{date}}/kpf_{{date}}_master_{{kind}}.fits",
        traces=l1_traces,
        wls=PLANS.wls_reference(),
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_{{kind}}_L1.fits",
    log:
        f"{WORK}/logs/{{date}}/l1_{{kind}}.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/l1_{{kind}}.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=l1_mem_mb,
        runtime=10,
    params:
        l1=l1_params,
    script:
        "../scripts/l1_master.py"
