"""Frames whose L0 -> 2D conversion failed, remembered so later runs leave them out.

The header scan (:mod:`kpfmasters.plan.night`) cannot see every defect without reading pixels
(NaN in an overscan strip, a damaged compressed tile). When the 2D job meets one, it records
the problem in ``<work_root>/rejects/<date>/<L0 stem>.json`` and fails. The next DAG build
marks that frame unusable, so its masters are made without it, with ``USED = false`` and the
reason in their INPUTS table.

A record holds the file's identity (size, modification and change times, inode) and the
software version that refused it: replacing the L0 file, or a release that may read it
(another version), makes the record stale and the frame is tried again. A failure of the
system (permission denied, an I/O error) is never recorded: it says nothing about the file.
``kpfmasters rejects --date D [--clear]`` lists (and clears) a night's records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kpfmasters import __version__
from kpfmasters.io.files import file_identity
from kpfmasters.io.fits import atomic_output
from kpfmasters.plan.night import Frame, system_failure

log = logging.getLogger(__name__)
PREFIX = "2D conversion failed: "


def rejects_dir(work_root: str | Path, date: str) -> Path:
    return Path(work_root) / "rejects" / date


def is_transient(exc: BaseException) -> bool:
    """Whether a conversion failure is the system's (not to be recorded as a reject)."""
    return system_failure(exc)


def record_rejection(folder: str | Path, l0_path: str | Path, problem: str) -> Path:
    """Remember in ``folder`` (:func:`rejects_dir`) that ``l0_path`` could not be converted
    by this software version."""
    l0_path = Path(l0_path)
    stat = l0_path.stat()
    record = {
        "name": l0_path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "identity": file_identity(stat),
        "version": __version__,
        "problem": problem,
    }
    path = Path(folder) / f"{l0_path.name[: -len('.fits')]}.json"
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))
    log.error("%s will be left out of the night's masters from the next run on", l0_path.name)
    return path


def current(record: dict, l0_path: str | Path) -> bool:
    """Whether ``record`` still applies to ``l0_path``: same file identity, same version."""
    try:
        identity = file_identity(Path(l0_path).stat())
    except OSError:
        return False
    return record.get("identity") == identity and record.get("version") == __version__


def read_rejections(work_root: str | Path, date: str) -> list[tuple[Path, dict | None]]:
    """Every record file of the night and its content (None when unreadable), by name."""
    folder = rejects_dir(work_root, date)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                record = None
        except (OSError, ValueError):
            record = None
        out.append((path, record))
    return out


def night_rejections(work_root: str | Path, l0_root: str | Path, date: str) -> list[dict]:
    """The night's rejects for reports: ``name``, ``problem``, ``version`` and ``current``
    (False when the file changed or another version refused it: it will be tried again)."""
    rows = []
    for path, record in read_rejections(work_root, date):
        if record is None:
            rows.append({"name": path.name, "problem": "unreadable record", "current": False})
            continue
        l0 = Path(l0_root) / date / record["name"]
        rows.append(
            {
                "name": record["name"],
                "problem": str(record.get("problem", "")),
                "version": record.get("version"),
                "current": current(record, l0),
            }
        )
    return rows


def clear_rejections(work_root: str | Path, date: str) -> list[str]:
    """Remove every record of the night; return the names of the frames they were about."""
    names = []
    for path, record in read_rejections(work_root, date):
        path.unlink(missing_ok=True)
        names.append(record["name"] if record else path.name)
    return names


def apply_rejections(frames: list[Frame], work_root: str | Path, date: str) -> int:
    """Mark frames with a current rejection record unusable; return how many were marked."""
    by_name = {f.name: f for f in frames}
    marked = 0
    for path, record in read_rejections(work_root, date):
        if record is None:
            log.warning("unreadable rejection record %s ignored", path)
            continue
        frame = by_name.get(record["name"])
        if frame is None or frame.problem or not current(record, frame.path):
            continue
        frame.problem = PREFIX + str(record.get("problem", ""))
        marked += 1
    return marked
