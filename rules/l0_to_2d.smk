rule l0_to_2d:
    """One L0 frame -> its 2D image in electrons (SPEC section 2)."""
    input:
        # Its time does not decide a rerun (a re-delivered file may be older, a clock ahead):
        # its identity does (params.identity).
        l0=ancient(f"{L0_ROOT}/{{date}}/{{stem}}.fits"),
    output:
        f"{WORK}/2D/{{date}}/{{stem}}_2D.fits",
    log:
        f"{WORK}/logs/{{date}}/2D/{{stem}}.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/2D/{{stem}}.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=l0_mem_mb,
        runtime=10,
    params:
        geometry=PLANS.amp_geometry(),
        adc_scale=CFG["adc_scale"],
        rejects_dir=rejects_dir_of,
        identity=l0_identity,
        planned=planned_header,
        version=__version__,
    script:
        "../scripts/l0_to_2d.py"
