"""Snakemake script: register the night's masters in the calibration database.

Inputs: the night's masters (only as dependencies). Params: ``masters_root``. Wildcards:
``date``. Output: a JSON receipt ``{"date", "rows", "time"}``. Log: ``log[0]``.
"""

import contextlib
import datetime as dt
import json

from kpfmasters.core.logs import script_logging
from kpfmasters.db import connect, describe, register_night, resolve_settings
from kpfmasters.db.report import format_row, row_to_json
from kpfmasters.io.fits import atomic_output

with script_logging(snakemake.log[0], "kpfmasters.register_night") as log:
    date = str(snakemake.wildcards.date)
    log.info("registering night %s on %s", date, describe(resolve_settings()))
    with contextlib.closing(connect()) as conn:
        rows = register_night(conn, snakemake.params.masters_root, date)
    for row in rows:
        log.info("%s", format_row(row))
    receipt = {
        "date": date,
        "rows": [row_to_json(row) for row in rows],
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_output(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(receipt, indent=2) + "\n")
