"""Snakemake script of rule ``retire_masters``: move aside masters the night no longer makes.

Params: ``stale`` (paths). Output: a JSON receipt of what moved where. Log: ``log[0]``.
"""

import json
from pathlib import Path

from kpfmasters.core.logs import script_logging
from kpfmasters.io.fits import atomic_output
from kpfmasters.workflow.jobs import retire

with script_logging(snakemake.log[0], "kpfmasters.retire_masters") as log:
    output = Path(snakemake.output[0])
    moved = retire(list(snakemake.params.stale), output.parent)
    for record in moved:
        log.warning("master %s no longer made: moved to %s", record["from"], record["to"])
    with atomic_output(output) as tmp:
        Path(tmp).write_text(json.dumps({"moved": moved}, indent=1) + "\n")
