rule night_selection:
    """What the night's headers selected for each master, and why (a text report)."""
    output:
        f"{WORK}/selection/{{date}}.txt",
    log:
        f"{WORK}/logs/{{date}}/selection.log",
    localrule: True
    conda:
        "../envs/kpfmasters.yaml"
    params:
        lines=selection_lines,
    script:
        "../scripts/night_selection.py"


if CFG["database"]["enabled"]:

    rule register_night:
        """Register the night's masters, traces and L1 files in the database (one transaction)."""
        input:
            night_products,
        output:
            f"{WORK}/registered/{{date}}.json",
        log:
            f"{WORK}/logs/{{date}}/register.log",
        localrule: True
        conda:
            "../envs/kpfmasters.yaml"
        params:
            masters_root=MASTERS,
        script:
            "../scripts/register_night.py"
