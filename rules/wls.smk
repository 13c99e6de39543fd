rule wls_master:
    """Wavelength solution of a ThAr or comb arclamp: its L1 with WAVE solved, line tables."""
    input:
        l1=f"{MASTERS}/{{date}}/kpf_{{date}}_master_arclamp_{{tag}}_L1.fits",
        prior=wls_prior,
        linelist=wls_linelist,
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_WLS_{{tag}}_L1.fits",
    log:
        f"{WORK}/logs/{{date}}/wls_{{tag}}.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/wls_{{tag}}.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: CFG["stack"]["threads"]
    resources:
        mem_mb=wls_mem_mb,
        runtime=10,
    params:
        wls=wls_params,
    script:
        "../scripts/wls_master.py"
