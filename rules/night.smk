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
