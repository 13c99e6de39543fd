"""Registering a night's masters: the night's level-0 ``calfiles`` rows become exactly the
masters on disk, in one transaction (SPEC section 6).

Every file is read and checksummed before the database is touched, so an unreadable or
invalid file stops the registration with nothing changed and an error naming the file. A
master whose file did not change keeps its row as it was (same ``cid``, ``created`` and
``status``, so an operator's ``status = 0`` sticks); a changed file updates its row (and
resets ``status`` to 1 when its checksum changed); a master no longer on disk loses its row.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extras

from kpfmasters import __version__
from kpfmasters.core.errors import InputError
from kpfmasters.db.connect import pg_reason
from kpfmasters.db.errors import DatabaseError
from kpfmasters.db.masterfile import (
    LEVEL_2D,
    MasterInfo,
    night_master_files,
    parse_night,
    read_master,
)
from kpfmasters.db.schema import check_schema
from kpfmasters.db.transaction import transaction

log = logging.getLogger(__name__)

STATUS_GOOD = 1
# pg_advisory_xact_lock(class, night): one registration of a night at a time.
_LOCK_CLASS = 0x6B70_6672  # "kpfr"

_UPSERT = """
INSERT INTO calfiles AS c (level, caltype, object, contentbits, nframes, minmjd, maxmjd,
    infobits, startdate, enddate, filename, checksum, status, createdby, comment)
VALUES (%(level)s, %(caltype)s, %(object)s, %(contentbits)s, %(nframes)s, %(minmjd)s,
    %(maxmjd)s, %(infobits)s, %(startdate)s, %(enddate)s, %(filename)s, %(checksum)s,
    %(status)s, %(createdby)s, %(comment)s)
ON CONFLICT (startdate, level, caltype, object) DO UPDATE SET
    contentbits = EXCLUDED.contentbits,
    nframes = EXCLUDED.nframes,
    minmjd = EXCLUDED.minmjd,
    maxmjd = EXCLUDED.maxmjd,
    infobits = EXCLUDED.infobits,
    enddate = EXCLUDED.enddate,
    filename = EXCLUDED.filename,
    status = CASE WHEN c.checksum = EXCLUDED.checksum THEN c.status ELSE EXCLUDED.status END,
    checksum = EXCLUDED.checksum,
    createdby = EXCLUDED.createdby,
    created = now(),
    comment = COALESCE(EXCLUDED.comment, c.comment)
WHERE (c.contentbits, c.nframes, c.minmjd, c.maxmjd, c.infobits, c.enddate, c.filename,
       c.checksum, c.comment)
    IS DISTINCT FROM
      (EXCLUDED.contentbits, EXCLUDED.nframes, EXCLUDED.minmjd, EXCLUDED.maxmjd,
       EXCLUDED.infobits, EXCLUDED.enddate, EXCLUDED.filename, EXCLUDED.checksum,
       COALESCE(EXCLUDED.comment, c.comment))
RETURNING c.cid, (c.xmax = 0) AS inserted
"""

_DELETE_GONE = """
DELETE FROM calfiles AS c
WHERE c.startdate = %(startdate)s AND c.level = %(level)s
  AND NOT EXISTS (
    SELECT 1 FROM unnest(%(caltypes)s::text[], %(objects)s::text[]) AS k(caltype, object)
    WHERE k.caltype = c.caltype AND k.object = c.object)
RETURNING c.cid, c.caltype, c.object, c.filename
"""

_NIGHT_ROWS = """
SELECT * FROM calfiles WHERE startdate = %(startdate)s AND level = %(level)s
ORDER BY caltype, object, cid
"""


@dataclass
class Registration:
    """What :func:`register_night_report` did; ``rows`` are the night's rows after it."""

    date: str
    rows: list[dict] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"night {self.date}: {len(self.rows)} master(s) registered ({self.inserted} new, "
            f"{self.updated} updated, {self.unchanged} unchanged), {len(self.removed)} row(s) "
            "removed"
        )


def default_createdby() -> str:
    """``<OS user> (kpfmasters <version>)``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user} (kpfmasters {__version__})"


def _check_distinct(infos: list[MasterInfo]) -> None:
    """Two files may not map to one unique key (OBJECT values equal once lowercased)."""
    seen: dict[tuple[str, str], MasterInfo] = {}
    for info in infos:
        key = (info.caltype, info.object)
        if key in seen:
            other = seen[key]
            raise InputError(
                info.path,
                f"OBJECT {info.raw_object!r} equals OBJECT {other.raw_object!r} of "
                f"{other.path.name} once lowercased; calfiles keeps one {info.caltype} per "
                "object and night",
            )
        seen[key] = info


def _row_params(info: MasterInfo, night: dt.date, createdby: str, comment: str | None):
    return {
        "level": LEVEL_2D,
        "caltype": info.caltype,
        "object": info.object,
        "contentbits": info.contentbits,
        "nframes": info.nframes,
        "minmjd": info.minmjd,
        "maxmjd": info.maxmjd,
        "infobits": info.infobits,
        "startdate": night,
        "enddate": night + dt.timedelta(days=1),
        "filename": str(info.path),
        "checksum": info.checksum,
        "status": STATUS_GOOD,
        "createdby": createdby,
        "comment": comment,
    }


def register_night_report(
    conn,
    masters_root: str | Path,
    date: str,
    comment: str | None = None,
    createdby: str | None = None,
) -> Registration:
    """Make the night's level-0 rows exactly its masters on disk; see the module docstring."""
    night = parse_night(date)
    infos = [read_master(path) for path in night_master_files(masters_root, date)]
    _check_distinct(infos)
    createdby = createdby or default_createdby()
    check_schema(conn)
    report = Registration(date=date)
    try:
        with transaction(conn), conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, int(date)))
            for info in infos:
                cur.execute(_UPSERT, _row_params(info, night, createdby, comment))
                done = cur.fetchone()
                if done is None:
                    report.unchanged += 1
                elif done["inserted"]:
                    report.inserted += 1
                else:
                    report.updated += 1
            cur.execute(
                _DELETE_GONE,
                {
                    "startdate": night,
                    "level": LEVEL_2D,
                    "caltypes": [info.caltype for info in infos],
                    "objects": [info.object for info in infos],
                },
            )
            report.removed = [dict(row) for row in cur.fetchall()]
            cur.execute(_NIGHT_ROWS, {"startdate": night, "level": LEVEL_2D})
            report.rows = [dict(row) for row in cur.fetchall()]
    except psycopg2.Error as exc:
        raise DatabaseError(
            f"registering night {date} failed, nothing changed: {pg_reason(exc)}"
        ) from None
    for row in report.removed:
        log.info("removed row cid %s (%s %r): %s is gone", *row.values())
    log.info("%s", report.summary())
    return report


def register_night(conn, masters_root: str | Path, date: str) -> list[dict]:
    """Register the night's masters (one transaction); return the night's rows after it."""
    return register_night_report(conn, masters_root, date).rows
