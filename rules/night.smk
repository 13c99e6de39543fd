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


rule retire_masters:
    """Move aside the night's masters its frames no longer make (the name is a digest of
    the list, so a new stale master is a new target)."""
    output:
        f"{WORK}/retired/{{date}}/{{digest}}.json",
    log:
        f"{WORK}/logs/{{date}}/retire_{{digest}}.log",
    localrule: True
    conda:
        "../envs/kpfmasters.yaml"
    params:
        stale=stale_masters,
    script:
        "../scripts/retire_masters.py"


if CFG["database"]["enabled"]:

    rule register_night:
        """Register the night's masters in the calibration database (one transaction)."""
        input:
            masters=night_masters,
            retired=retired_receipts,
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
