rule master_bias:
    """Stack the night's bias frames (docs/reference.md, sections 3-5)."""
    input:
        frames=frames_2d("bias"),
        settings=settings_stamp("bias"),
        previous=previous_master("bias"),
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_bias.fits",
    log:
        f"{WORK}/logs/{{date}}/master_bias.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/master_bias.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: CFG["stack"]["threads"]
    resources:
        mem_mb=stack_mem_mb("bias"),
        band_mb=CFG["stack"]["memory_mb"],
        band_rows=CFG["stack"]["band_rows"],
        runtime=stack_runtime("bias"),
    params:
        master=master_params("bias"),
    script:
        "../scripts/master_bias.py"
