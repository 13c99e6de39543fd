"""Snakemake script of rule wls_qa: see kpfmasters.qa.wls_figures.wls_qa.

Inputs ``wls``, ``l2`` and ``previous`` (the previous night's solution of the lamp, or
none); output: the solution's QA directory. Warnings go to the log; QA never fails the night.
"""

from pathlib import Path

from kpfmasters.core.logs import script_logging
from kpfmasters.qa.wls_figures import wls_qa

with script_logging(snakemake.log[0], "kpfmasters.wls_qa") as log:
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    previous = str(snakemake.input.previous[0]) if len(snakemake.input.previous) else None
    try:
        record = wls_qa(
            snakemake.input.wls,
            snakemake.input.l2,
            previous,
            out,
            snakemake.params.qa.get("wls_max_rms_ratio"),
        )
    except Exception as exc:
        log.error("no QA of %s (%s: %s)", snakemake.input.wls, type(exc).__name__, exc)
        record = {"warnings": []}
    for warning in record["warnings"]:
        log.warning("%s", warning)
    log.info("QA of %s: %d warnings", Path(snakemake.input.wls).name, len(record["warnings"]))
