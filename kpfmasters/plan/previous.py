"""The previous master of the same kind: what a new master's QC compares against.

The plan chooses it (the nearest earlier night that holds a readable master of the same kind,
or that the same run makes), and the master's job receives it as a declared input, so the
same inputs always give the same product.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from kpfmasters.core.naming import master_kind

log = logging.getLogger(__name__)

NIGHT_DIR_RE = re.compile(r"^\d{8}$")


def earlier_masters(output: str | Path, date: str) -> list[Path]:
    """Masters of the same kind as ``output`` on earlier nights on disk, nearest first.

    Parameters
    ----------
    output : str or Path
        The new master, ``<masters_root>/<date>/kpf_<date>_master_<kind>.fits``; anything
        else (a file outside a night directory) has no previous master.
    date : str
        Its night, ``YYYYMMDD``.

    Returns
    -------
    list of Path
        ``<masters_root>/<night>/kpf_<night>_master_<kind>.fits`` of the earlier nights
        that hold one, latest night first (not checked for readability).
    """
    output = Path(output)
    kind = master_kind(output)
    if kind is None or output.parent.name != date:
        return []
    root = output.parent.parent
    try:
        nights = sorted(
            (d.name for d in root.iterdir() if NIGHT_DIR_RE.match(d.name) and d.name < date),
            reverse=True,
        )
    except OSError:
        return []
    found = []
    for night in nights:
        path = root / night / f"kpf_{night}_master_{kind}.fits"
        if path.is_file():
            found.append(path)
    return found


def previous_master(
    output: str | Path,
    date: str,
    pending: dict[str, Path] | None = None,
    problem: Callable[[Path], str] | None = None,
) -> Path | None:
    """The master a new master ``output`` of night ``date`` is compared with, or None.

    Parameters
    ----------
    output : path
        The new master, ``<masters_root>/<date>/kpf_<date>_master_<kind>.fits``.
    date : str
        Its night, ``YYYYMMDD``.
    pending : dict, optional
        Night -> path of the same kind's masters that this run makes on earlier nights; such
        a master is taken as it will be (the job then waits for it).
    problem : callable, optional
        ``problem(path)`` is '' when a master on disk can be read, else why not; an
        unreadable one is logged and passed over for the next earlier night.

    Returns
    -------
    Path or None
        The nearest earlier night's master of the same kind.
    """
    candidates = {p.parent.name: p for p in earlier_masters(output, date)}
    for night, path in (pending or {}).items():
        if night < date:
            candidates[night] = Path(path)
    for night in sorted(candidates, reverse=True):
        path = candidates[night]
        if pending and night in pending:
            return path
        why = problem(path) if problem else ""
        if not why:
            return path
        log.warning("previous master %s cannot be read (%s); trying an earlier one", path, why)
    return None
