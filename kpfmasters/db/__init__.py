"""The PostgreSQL calibration database (docs/reference.md §6): table ``calfiles``.

- :func:`connect`: libpq settings (``KPFDBUSER``/``KPFDBNAME`` honoured), password from pgpass.
- :func:`init_schema`: apply ``schema.sql`` and the read-only and pipeline roles (admin).
- :func:`register_night`: the night's level-0 rows become exactly its masters on disk.
- :func:`nearest_master`: the nearest usable master in time, MD5-verified.
- :func:`nearest_traces`: the order traces of both CCDs of the nearest earlier night.
"""

from kpfmasters.db.connect import connect, describe, resolve_settings
from kpfmasters.db.errors import ConnectError, DatabaseError, NightError, SchemaError
from kpfmasters.db.nearest import (
    Nearest,
    NearestNight,
    find_nearest,
    find_nearest_night,
    nearest_master,
    nearest_traces,
)
from kpfmasters.db.register import Registration, register_night, register_night_report
from kpfmasters.db.report import format_row, row_to_json
from kpfmasters.db.schema import SCHEMA_VERSION, check_schema, init_schema

__all__ = [
    "SCHEMA_VERSION",
    "ConnectError",
    "DatabaseError",
    "Nearest",
    "NearestNight",
    "NightError",
    "Registration",
    "SchemaError",
    "check_schema",
    "connect",
    "describe",
    "find_nearest",
    "find_nearest_night",
    "format_row",
    "init_schema",
    "nearest_master",
    "nearest_traces",
    "register_night",
    "register_night_report",
    "resolve_settings",
    "row_to_json",
]
