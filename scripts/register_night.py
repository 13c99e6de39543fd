"""Snakemake script: register the night's masters in the calibration database.

Inputs: the night's masters (only as dependencies). Params: ``masters_root``. Wildcards:
``date``. Output: a JSON receipt ``{"date", "rows", "not_made", "time"}``. Log: ``log[0]``.
"""

import contextlib

from kpfmasters.core.logs import script_logging
from kpfmasters.db import connect, describe, register_night, resolve_settings
from kpfmasters.db.report import format_row, write_receipt

with script_logging(snakemake.log[0], "kpfmasters.register_night") as log:
    date = str(snakemake.wildcards.date)
    log.info("registering night %s on %s", date, describe(resolve_settings()))
    with contextlib.closing(connect()) as conn:
        rows = register_night(conn, snakemake.params.masters_root, date)
    for row in rows:
        log.info("%s", format_row(row))
    write_receipt(snakemake.output[0], date, rows)
