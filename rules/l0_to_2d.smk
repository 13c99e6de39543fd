rule l0_to_2d:
    """One L0 frame -> its 2D image in electrons (docs/reference.md, 'L0 to 2D')."""
    input:
        # The L0 file's time never decides (a re-delivered file may be older, a clock ahead,
        # which Snakemake would take for clock skew): its identity does (size, mtime, ctime,
        # inode in the stamp). The file itself is a parameter.
        identity=identity_stamp,
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
        l0=l0_path,
        geometry=PLANS.amp_geometry(),
        adc_scale=CFG["adc_scale"],
        rejects_dir=rejects_dir_of,
        planned=planned_header,
        version=__version__,
    script:
        "../scripts/l0_to_2d.py"
