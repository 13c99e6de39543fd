rule master_dark:
    """Stack (frame - master bias) / EXPTIME of the night's darks."""
    input:
        frames=frames_2d("dark"),
        settings=settings_stamp("dark"),
        previous=previous_master("dark"),
        bias=predecessor("bias"),
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_dark.fits",
    log:
        f"{WORK}/logs/{{date}}/master_dark.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/master_dark.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: CFG["stack"]["threads"]
    resources:
        mem_mb=stack_mem_mb("dark"),
        band_mb=CFG["stack"]["memory_mb"],
        band_rows=CFG["stack"]["band_rows"],
        runtime=stack_runtime("dark"),
    params:
        master=master_params("dark"),
    script:
        "../scripts/master_dark.py"
