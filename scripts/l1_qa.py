"""Snakemake script of rule l1_qa: see kpfmasters.qa.l1_figures.l1_figures.

Input ``l1`` (and, for the flat, ``flat`` and its ``traces``); output: the L1's QA directory
with ``L1-orders.png`` (and ``L1-blaze.png``, ``L1-traces.png``). Params: ``qa``.
"""

from pathlib import Path

from kpfmasters.core.logs import script_logging
from kpfmasters.qa.l1_figures import l1_figures
from kpfmasters.science.traces import read_traces

with script_logging(snakemake.log[0], "kpfmasters.l1_qa") as log:
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    flat = str(snakemake.input.flat[0]) if len(snakemake.input.flat) else None
    traces = {}
    for path in snakemake.input.traces:
        ccd = "GREEN_CCD" if path.endswith("_GREEN_CCD.csv") else "RED_CCD"
        traces[ccd] = read_traces(path)
    try:  # QA never fails the night: an L1 that cannot be shown is logged
        made = l1_figures(
            snakemake.input.l1, out, flat, traces, int(snakemake.params.qa["preview_max_pixels"])
        )
    except Exception as exc:
        log.error("no figures of %s (%s: %s)", snakemake.input.l1, type(exc).__name__, exc)
        made = []
    log.info("figures of %s: %s", Path(snakemake.input.l1).name, ", ".join(made) or "none")
