rule master_arclamp:
    """Stack calibrated arclamp frames of one OBJECT (the file name carries its tag)."""
    input:
        frames=frames_2d("arclamp"),
        settings=settings_stamp("arclamp"),
        previous=previous_master("arclamp"),
        bias=predecessor("bias"),
        dark=predecessor("dark"),
        flat=predecessor("flat"),
    output:
        f"{MASTERS}/{{date}}/kpf_{{date}}_master_arclamp_{{tag}}.fits",
    log:
        f"{WORK}/logs/{{date}}/master_arclamp_{{tag}}.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/master_arclamp_{{tag}}.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: CFG["stack"]["threads"]
    resources:
        mem_mb=stack_mem_mb("arclamp"),
        band_mb=CFG["stack"]["memory_mb"],
        band_rows=CFG["stack"]["band_rows"],
        runtime=stack_runtime("arclamp"),
    params:
        master=master_params("arclamp"),
    script:
        "../scripts/master_arclamp.py"
