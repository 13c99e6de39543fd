"""Frames whose L0 -> 2D conversion failed, remembered so later runs leave them out.

The header scan (:mod:`kpfmasters.plan.night`) cannot see every defect without reading pixels
(NaN in an overscan strip, a damaged compressed tile). When the 2D job meets one, it records
the problem in ``<work_root>/rejects/<date>/<L0 stem>.json`` (with the file's size and
modification time) and fails. The next DAG build marks that frame unusable, so its masters
are made without it, with ``USED = false`` and the reason in their INPUTS table. Replacing
the L0 file (new size or time) makes the record stale and the frame is tried again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kpfmasters.io.fits import atomic_output
from kpfmasters.plan.night import Frame

log = logging.getLogger(__name__)
PREFIX = "2D conversion failed: "


def rejects_dir(work_root: str | Path, date: str) -> Path:
    return Path(work_root) / "rejects" / date


def record_rejection(folder: str | Path, l0_path: str | Path, problem: str) -> Path:
    """Remember in ``folder`` (:func:`rejects_dir`) that ``l0_path`` could not be converted."""
    l0_path = Path(l0_path)
    stat = l0_path.stat()
    record = {
        "name": l0_path.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "problem": problem,
    }
    path = Path(folder) / f"{l0_path.name[: -len('.fits')]}.json"
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))
    log.error("%s will be left out of the night's masters from the next run on", l0_path.name)
    return path


def apply_rejections(frames: list[Frame], work_root: str | Path, date: str) -> int:
    """Mark frames with a current rejection record unusable; return how many were marked."""
    folder = rejects_dir(work_root, date)
    if not folder.is_dir():
        return 0
    by_name = {f.name: f for f in frames}
    marked = 0
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            frame = by_name.get(record["name"])
            current = (
                frame is not None
                and frame.size == record["size"]
                and frame.mtime_ns == record["mtime_ns"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable rejection record %s ignored", path)
            continue
        if current and not frame.problem:
            frame.problem = PREFIX + record["problem"]
            marked += 1
    return marked
