"""The nearest registered master in time (docs/reference.md, 'The calibration database').

A candidate is a ``calfiles`` row of the level and caltype (and object, when given, compared
exactly after lowercasing: never a LIKE pattern). It qualifies when ``status > 0``,
``nframes >= min_nframes`` or null, every required content bit is present, and it is at most
``max_age_days`` from the night. Candidates are looked at nearest first, ties to the earlier
night; the first that qualifies and whose file exists with the registered MD5 wins, and the
nearer ones passed over are reported (log warnings, :attr:`Nearest.skipped`). When none does,
:class:`~kpfmasters.core.errors.NoPredecessorError` says which criterion ruled out which candidate.

The rules are evaluated once, in SQL; Python only turns their outcomes into words.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extras

from kpfmasters.core.errors import NoPredecessorError
from kpfmasters.db.connect import pg_reason
from kpfmasters.db.errors import DatabaseError
from kpfmasters.db.masterfile import CONTENT_BITS, LEVEL_2D, md5_file, parse_night
from kpfmasters.db.schema import check_schema

log = logging.getLogger(__name__)

DEFAULT_REQUIRED_BITS = CONTENT_BITS["GREEN_CCD"] | CONTENT_BITS["RED_CCD"]
DEFAULT_MIN_NFRAMES = 5
# At most this many ruled-out candidates are spelled out in an error message.
EXPLAIN_LIMIT = 8

_CANDIDATES = """
SELECT *,
    abs(startdate - %(night)s::date) AS age,
    status > 0 AS ok_status,
    (nframes IS NULL OR nframes >= %(min_nframes)s) AS ok_nframes,
    (contentbits & %(bits)s) = %(bits)s AS ok_bits,
    (%(max_age)s::integer IS NULL OR abs(startdate - %(night)s::date) <= %(max_age)s::integer)
        AS ok_age
FROM calfiles
WHERE level = %(level)s AND caltype = %(caltype)s
  AND (%(object)s::text IS NULL OR object = %(object)s::text)
  AND NOT (%(others)s AND startdate = %(night)s::date)
ORDER BY age, startdate, cid
"""


@dataclass
class Nearest:
    """The chosen row (``row``, ``path``) and the candidates passed over on the way."""

    path: Path
    row: dict
    skipped: list[str] = field(default_factory=list)


def _bit_names(bits: int) -> str:
    return "|".join(name for name, bit in CONTENT_BITS.items() if bits & bit) or "none"


def _label(row: dict) -> str:
    text = f"{row['startdate']:%Y%m%d} {row['caltype']}"
    return f"{text} {row['object']!r}" if row["caltype"] == "arclamp" else text


def rule_failures(row: dict, required_bits: int, min_nframes: int, max_age: int | None):
    """Why the SQL rules ruled ``row`` out, in words (empty when it qualifies)."""
    reasons = []
    if not row["ok_status"]:
        reasons.append(f"status {row['status']} (not good)")
    if not row["ok_nframes"]:
        reasons.append(f"nframes {row['nframes']} < {min_nframes}")
    if not row["ok_bits"]:
        missing = required_bits & ~row["contentbits"]
        reasons.append(f"lacks {_bit_names(missing)} (contentbits {row['contentbits']})")
    if not row["ok_age"]:
        reasons.append(f"{row['age']} days > max age {max_age}")
    return reasons


def file_failure(row: dict) -> str | None:
    """Why the row's file cannot be used (missing, unreadable, MD5 mismatch), or None."""
    path = Path(row["filename"])
    try:
        digest = md5_file(path)
    except FileNotFoundError:
        return f"file {path} is missing"
    except OSError as exc:
        return f"file {path} cannot be read ({exc.strerror})"
    if digest != row["checksum"]:
        return f"file {path} has MD5 {digest}, registered {row['checksum']}"
    return None


def find_nearest(
    conn,
    date: str,
    caltype: str,
    object: str | None = None,
    max_age_days: int | None = None,
    required_bits: int = DEFAULT_REQUIRED_BITS,
    min_nframes: int = DEFAULT_MIN_NFRAMES,
    level: int = LEVEL_2D,
    other_nights: bool = False,
) -> Nearest:
    """Like :func:`nearest_master`, returning the row and the candidates passed over.

    ``other_nights``: leave the night's own row out (a night that does not make its own
    master, e.g. its frames were reclassified, is calibrated with another night's)."""
    night = parse_night(date)
    caltype = caltype.lower()
    params = {
        "night": night,
        "level": level,
        "caltype": caltype,
        "object": None if object is None else object.lower(),
        "bits": int(required_bits),
        "min_nframes": int(min_nframes),
        "max_age": None if max_age_days is None else int(max_age_days),
        "others": bool(other_nights),
    }
    check_schema(conn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(_CANDIDATES, params)
            rows = [dict(row) for row in cur.fetchall()]
        if not conn.autocommit:
            conn.rollback()  # end the read-only transaction
    except psycopg2.Error as exc:
        raise DatabaseError(f"nearest-master query failed: {pg_reason(exc)}") from None

    skipped: list[str] = []
    for row in rows:
        reasons = rule_failures(row, params["bits"], params["min_nframes"], max_age_days)
        if not reasons:
            reasons = [failure] if (failure := file_failure(row)) else []
            if not reasons:
                for note in skipped:
                    log.warning("passed over %s", note)
                return Nearest(Path(row["filename"]), row, skipped)
        skipped.append(f"{_label(row)}: {', '.join(reasons)}")
    raise NoPredecessorError(_explain(night, caltype, params["object"], level, skipped))


def _explain(night: dt.date, caltype: str, obj: str | None, level: int, skipped: list[str]):
    what = f"master {caltype}" + (f" {obj!r}" if obj is not None else "")
    head = f"no usable {what} (level {level}) for {night:%Y%m%d}"
    if not skipped:
        return f"{head}: none is registered"
    listed = "; ".join(skipped[:EXPLAIN_LIMIT])
    more = len(skipped) - EXPLAIN_LIMIT
    return f"{head}: {listed}" + (f"; and {more} more" if more > 0 else "")


def nearest_master(
    conn,
    date: str,
    caltype: str,
    object: str | None = None,
    max_age_days: int | None = None,
    required_bits: int = DEFAULT_REQUIRED_BITS,
    min_nframes: int = DEFAULT_MIN_NFRAMES,
    level: int = LEVEL_2D,
    other_nights: bool = False,
) -> Path:
    """Path of the nearest usable master (see the module docstring).

    Raises :class:`~kpfmasters.core.errors.NoPredecessorError` explaining every rule-out.
    """
    return find_nearest(
        conn, date, caltype, object, max_age_days, required_bits, min_nframes, level, other_nights
    ).path
