"""Snakemake script of rule night_selection: write what the headers selected, and why."""

from pathlib import Path

from kpfmasters.core.logs import script_logging
from kpfmasters.io.fits import atomic_output

with script_logging(snakemake.log[0]) as log:
    text = "\n".join(snakemake.params.lines) + "\n"
    with atomic_output(snakemake.output[0]) as tmp:
        Path(tmp).write_text(text)
    log.info("selection of night %s written to %s", snakemake.wildcards.date, snakemake.output[0])
