rule l2_arclamp:
    """Drift of an arclamp's lines against the reference wavelengths of its L1 (table RV)."""
    input:
        l1=f"{MASTERS}/{{date}}/kpf_{{date}}_master_arclamp_{{tag}}_L1.fits",
        wls=f"{MASTERS}/{{date}}/kpf_{{date}}_master_WLS_{{tag}}_L1.fits",
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_arclamp_{{tag}}_L2.fits",
    log:
        f"{WORK}/logs/{{date}}/l2_{{tag}}.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/l2_{{tag}}.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=wls_mem_mb,
        runtime=5,
    script:
        "../scripts/l2_arclamp.py"
