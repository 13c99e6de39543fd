"""Finding the master bias, dark or flat a night's later masters are calibrated with.

A night that makes its own predecessor uses it. Otherwise the nearest master of that type in
time is used (ties go to the earlier night) within a maximum age, from the masters directory
(or from the calibration database, see :mod:`kpfmasters.db`). See docs/reference.md,
'Predecessors'.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kpfmasters.core.errors import NoPredecessorError
from kpfmasters.core.naming import MASTER_NAME_RE, master_path


def night_date(date: str) -> dt.date:
    """A night as a date.

    Parameters
    ----------
    date : str
        The night, ``YYYYMMDD``.

    Returns
    -------
    datetime.date
        The calendar date.
    """
    return dt.datetime.strptime(date, "%Y%m%d").date()


def days_between(a: str, b: str) -> int:
    """Days between two nights.

    Parameters
    ----------
    a, b : str
        Nights, ``YYYYMMDD``.

    Returns
    -------
    int
        The absolute difference, in days.
    """
    return abs((night_date(a) - night_date(b)).days)


@dataclass(frozen=True)
class Candidate:
    """A master that could serve as a predecessor.

    Attributes
    ----------
    date : str
        Its night, ``YYYYMMDD``.
    path : Path
        The master file.
    pending : bool
        True when this run makes it (not on disk yet, so never checked).
    """

    date: str
    path: Path
    pending: bool = False  # made by this run, not on disk yet


def masters_on_disk(masters_root: str | Path, mtype: str) -> list[Candidate]:
    """The masters of one type on disk, one per night directory.

    Parameters
    ----------
    masters_root : str or Path
        The masters directory; a missing one holds none.
    mtype : str
        Master type (``bias``, ``dark``, ``flat``).

    Returns
    -------
    list of Candidate
        Every ``<masters_root>/<date>/kpf_<date>_master_<mtype>.fits`` that is a file, in
        directory order (not sorted).
    """
    root = Path(masters_root)
    found = []
    if not root.is_dir():
        return found
    for night in root.iterdir():
        if not (night.is_dir() and night.name.isdigit() and len(night.name) == 8):
            continue
        path = master_path(root, night.name, mtype)
        if path.is_file():
            match = MASTER_NAME_RE.match(path.name)
            if match and match.group("type") == mtype:
                found.append(Candidate(night.name, path))
    return found


def nearest(
    date: str,
    mtype: str,
    candidates: list[Candidate],
    max_age_days: int | None,
    problem: Callable[[Candidate], str] | None = None,
) -> Candidate:
    """The candidate nearest to ``date`` (ties to the earlier night) within the age limit.

    Parameters
    ----------
    date : str
        The night that needs a predecessor, ``YYYYMMDD``; its own candidates are ignored.
    mtype : str
        The predecessor's type, for the error message.
    candidates : list of Candidate
        Masters of that type (on disk, pending, or from the database).
    max_age_days : int or None
        Largest distance in days (inclusive); None for no limit.
    problem : callable, optional
        ``problem(candidate)`` says why a master on disk cannot be used ('' when it can);
        such candidates are passed over (pending ones are never checked).

    Returns
    -------
    Candidate
        The nearest usable one.

    Raises
    ------
    NoPredecessorError
        Saying what was looked at when nothing qualifies (none exists, the nearest is N days
        away, every one is unusable, and which were passed over).
    """
    others = [c for c in candidates if c.date != date]
    ranked = sorted(others, key=lambda c: (days_between(c.date, date), c.date))
    passed: list[str] = []
    for cand in ranked:
        if max_age_days is None or days_between(cand.date, date) <= max_age_days:
            why = "" if cand.pending or problem is None else problem(cand)
            if not why:
                return cand
            passed.append(f"{cand.path.name} ({why})")
    if not ranked:
        detail = "none exists"
    elif passed and len(passed) == len(ranked):
        detail = "every one is unusable"
    elif passed:
        detail = f"no other is within the maximum age of {max_age_days} days"
    else:
        best = ranked[0]
        detail = (
            f"the nearest ({best.path.name}) is {days_between(best.date, date)} days away, "
            f"more than the maximum age of {max_age_days} days"
        )
    if passed:
        detail += "; passed over: " + ", ".join(passed)
    raise NoPredecessorError(f"night {date} has no master {mtype} of its own and {detail}")
