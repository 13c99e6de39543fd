rule order_traces:
    """Order traces of both CCDs from the night's master flat and the order mask (KPF CSV)."""
    input:
        flat=f"{MASTERS}/{{date}}/kpf_{{date}}_master_flat.fits",
        order_mask=CFG["order_mask"],
    output:
        green=f"{MASTERS}/{{date}}/kpf_{{date}}_master_flat_GREEN_CCD.csv",
        red=f"{MASTERS}/{{date}}/kpf_{{date}}_master_flat_RED_CCD.csv",
    log:
        f"{WORK}/logs/{{date}}/order_traces.log",
    benchmark:
        f"{WORK}/benchmarks/{{date}}/order_traces.tsv"
    conda:
        "../envs/kpfmasters.yaml"
    threads: 1
    resources:
        mem_mb=trace_mem_mb,
        runtime=10,
    params:
        traces=PLANS.trace_params(),
    script:
        "../scripts/order_traces.py"
