rule master_flat:
    """Stack bias-, dark-corrected flats and normalise per orderlet with the order mask."""
    input:
        frames=frames_2d("flat"),
        settings=settings_stamp("flat"),
        previous=previous_master("flat"),
        bias=predecessor("bias"),
        dark=predecessor("dark"),
        order_mask=CFG["order_mask"],
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_flat.fits",
    log:
        f"{WORK}/logs/{{date}}/master_flat.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/master_flat.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: CFG["stack"]["threads"]
    resources:
        mem_mb=stack_mem_mb("flat"),
        band_mb=CFG["stack"]["memory_mb"],
        band_rows=CFG["stack"]["band_rows"],
        runtime=stack_runtime("flat"),
    params:
        master=master_params("flat"),
    script:
        "../scripts/master_flat.py"
