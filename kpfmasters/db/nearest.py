"""The nearest registered master in time (docs/reference.md, 'The calibration database').

A candidate is a ``calfiles`` row of the level and caltype (and object, when given, compared
exactly after lowercasing: never a LIKE pattern), of any night but the night's own with
``other_nights``, of earlier nights only (``startdate`` before the night) with
``earlier_only``. It qualifies when ``status > 0``, ``nframes >= min_nframes`` or null, every
required content bit is present, and it is at most ``max_age_days`` from the night.
Candidates are looked at nearest first, ties to the earlier night; the first that qualifies
and whose file exists with the registered MD5 wins, and the nearer ones passed over are
reported (log warnings, :attr:`Nearest.skipped`). When none does,
:class:`~kpfmasters.core.errors.NoPredecessorError` says which criterion ruled out which candidate.

:func:`find_nearest_night` asks the same of several objects at once (each with its own
required bits) and wins with the nearest night where the row of every object qualifies and
every file checks: :func:`nearest_traces` so finds the order traces of both CCDs of one
earlier night (level 0, caltype ``ordertrace``, objects ``green_ccd`` and ``red_ccd``, each
requiring its CCD's content bit).

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
from kpfmasters.core.naming import TRACE_CCDS
from kpfmasters.db.connect import pg_reason
from kpfmasters.db.errors import DatabaseError
from kpfmasters.db.masterfile import (
    CONTENT_BITS,
    LEVEL_2D,
    TRACE_CALTYPE,
    md5_file,
    parse_night,
)
from kpfmasters.db.schema import check_schema

log = logging.getLogger(__name__)

DEFAULT_REQUIRED_BITS = CONTENT_BITS["GREEN_CCD"] | CONTENT_BITS["RED_CCD"]
DEFAULT_MIN_NFRAMES = 5
# At most this many ruled-out candidates are spelled out in an error message.
EXPLAIN_LIMIT = 8
# Object of each CCD's trace row -> the content bit it must carry.
TRACE_OBJECTS = {ccd.lower(): CONTENT_BITS[ccd] for ccd in TRACE_CCDS}

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
  AND NOT (%(earlier)s AND startdate >= %(night)s::date)
ORDER BY age, startdate, cid
"""


@dataclass
class Nearest:
    """The chosen row (``row``, ``path``) and the candidates passed over on the way."""

    path: Path
    row: dict
    skipped: list[str] = field(default_factory=list)


@dataclass
class NearestNight:
    """The chosen night, its row of each object (``rows``: object -> row) and the nights
    passed over on the way."""

    night: dt.date
    rows: dict[str, dict]
    skipped: list[str] = field(default_factory=list)

    @property
    def paths(self) -> dict[str, Path]:
        """Object -> the registered file of its row."""
        return {obj: Path(row["filename"]) for obj, row in self.rows.items()}


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


def _query_params(
    night: dt.date,
    level: int,
    caltype: str,
    object: str | None,
    required_bits: int,
    min_nframes: int,
    max_age_days: int | None,
    other_nights: bool,
    earlier_only: bool,
) -> dict:
    """The parameters of the candidates query (``object`` lowercased, None for any)."""
    return {
        "night": night,
        "level": level,
        "caltype": caltype.lower(),
        "object": None if object is None else object.lower(),
        "bits": int(required_bits),
        "min_nframes": int(min_nframes),
        "max_age": None if max_age_days is None else int(max_age_days),
        "others": bool(other_nights),
        "earlier": bool(earlier_only),
    }


def _fetch_candidates(conn, params: dict) -> list[dict]:
    """The candidate rows, nearest first, with the rules' outcomes (``ok_*``) and ``age``."""
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(_CANDIDATES, params)
            rows = [dict(row) for row in cur.fetchall()]
        if not conn.autocommit:
            conn.rollback()  # end the read-only transaction
    except psycopg2.Error as exc:
        raise DatabaseError(f"nearest-master query failed: {pg_reason(exc)}") from None
    return rows


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
    earlier_only: bool = False,
) -> Nearest:
    """Like :func:`nearest_master`, returning the row and the candidates passed over.

    ``other_nights``: leave the night's own row out (a night that does not make its own
    master, e.g. its frames were reclassified, is calibrated with another night's).
    ``earlier_only``: leave the night's own and every later night's rows out."""
    night = parse_night(date)
    params = _query_params(
        night,
        level,
        caltype,
        object,
        required_bits,
        min_nframes,
        max_age_days,
        other_nights,
        earlier_only,
    )
    check_schema(conn)
    rows = _fetch_candidates(conn, params)
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
    raise NoPredecessorError(_explain(night, params["caltype"], params["object"], level, skipped))


def _night_failures(
    rows: dict[str, dict], objects: dict[str, int], min_nframes: int, max_age: int | None
) -> list[str]:
    """Why one night's rows (object -> row) are not usable together, in words (empty when
    they are): an object without a row or whose row the rules rule out; once every row
    qualifies, a file that is missing or changed."""
    reasons = []
    for obj, bits in objects.items():
        row = rows.get(obj)
        if row is None:
            reasons.append(f"{obj!r}: none is registered")
        elif failures := rule_failures(row, bits, min_nframes, max_age):
            reasons.append(f"{obj!r}: {', '.join(failures)}")
    if reasons:
        return reasons
    return [f"{obj!r}: {why}" for obj in objects if (why := file_failure(rows[obj]))]


def find_nearest_night(
    conn,
    date: str,
    caltype: str,
    objects: dict[str, int],
    max_age_days: int | None = None,
    min_nframes: int = DEFAULT_MIN_NFRAMES,
    level: int = LEVEL_2D,
    other_nights: bool = False,
    earlier_only: bool = False,
) -> NearestNight:
    """The nearest night (ties to the earlier) whose row of every object in ``objects``
    (object -> required content bits) qualifies and whose files all check; the other
    parameters as in :func:`find_nearest`.

    Raises :class:`~kpfmasters.core.errors.NoPredecessorError` naming, per night, the object
    and criterion that ruled it out.
    """
    night = parse_night(date)
    check_schema(conn)
    by_night: dict[dt.date, dict[str, dict]] = {}
    for obj, bits in objects.items():
        params = _query_params(
            night, level, caltype, obj, bits, min_nframes, max_age_days, other_nights, earlier_only
        )
        for row in _fetch_candidates(conn, params):
            by_night.setdefault(row["startdate"], {})[obj.lower()] = row
    wanted = {obj.lower(): int(bits) for obj, bits in objects.items()}
    order = sorted(by_night, key=lambda d: (min(r["age"] for r in by_night[d].values()), d))
    skipped: list[str] = []
    for when in order:
        reasons = _night_failures(by_night[when], wanted, int(min_nframes), max_age_days)
        if not reasons:
            for note in skipped:
                log.warning("passed over %s", note)
            return NearestNight(when, by_night[when], skipped)
        skipped.append(f"{when:%Y%m%d} {caltype.lower()}: {'; '.join(reasons)}")
    objs = " and ".join(repr(obj) for obj in wanted)
    head = f"no usable {caltype.lower()} {objs} of one night (level {level}) "
    head += f"{'before' if earlier_only else 'for'} {night:%Y%m%d}"
    raise NoPredecessorError(_listed(head, skipped))


def nearest_traces(
    conn, date: str, max_age_days: int | None = None, min_nframes: int = DEFAULT_MIN_NFRAMES
) -> NearestNight:
    """The order traces of the nearest earlier night with a usable trace file of both CCDs
    (:data:`TRACE_OBJECTS`), at most ``max_age_days`` days before ``date``, traced on a flat
    of at least ``min_nframes`` frames (the rows' ``nframes``, or null)."""
    return find_nearest_night(
        conn,
        date,
        TRACE_CALTYPE,
        TRACE_OBJECTS,
        max_age_days=max_age_days,
        min_nframes=min_nframes,
        earlier_only=True,
    )


def _listed(head: str, skipped: list[str]) -> str:
    """``head`` and the first :data:`EXPLAIN_LIMIT` candidates ruled out."""
    if not skipped:
        return f"{head}: none is registered"
    listed = "; ".join(skipped[:EXPLAIN_LIMIT])
    more = len(skipped) - EXPLAIN_LIMIT
    return f"{head}: {listed}" + (f"; and {more} more" if more > 0 else "")


def _explain(night: dt.date, caltype: str, obj: str | None, level: int, skipped: list[str]):
    what = f"master {caltype}" + (f" {obj!r}" if obj is not None else "")
    return _listed(f"no usable {what} (level {level}) for {night:%Y%m%d}", skipped)


def nearest_master(conn, date: str, caltype: str, object: str | None = None, **options) -> Path:
    """Path of the nearest usable master (see the module docstring); ``options`` are those
    of :func:`find_nearest` (``max_age_days``, ``required_bits``, ``min_nframes``,
    ``level``, ``other_nights``, ``earlier_only``).

    Raises :class:`~kpfmasters.core.errors.NoPredecessorError` explaining every rule-out.
    """
    return find_nearest(conn, date, caltype, object, **options).path
