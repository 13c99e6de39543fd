"""A short table of a night's masters: type, frames used, INFOBITS, median level, path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters.core.instrument import CCD_EXTS
from kpfmasters.core.naming import MASTER_NAME_RE
from kpfmasters.core.products import MASTER_TYPES, product


def master_row(path: str | Path) -> dict:
    """Summary of one master file (median of its first CCD extension present).

    The median is the extension's ``QCMEDIAN`` (the pixels QA takes: finite ones; for the
    flat, those with UNC > 0), so this table and the headers agree; a master without QC
    keywords gets the median of its finite pixels.
    """
    path = Path(path)
    with fits.open(path, memmap=True) as hdul:
        prim = hdul[0].header
        ext = next(e for e in CCD_EXTS if e in hdul)
        header = hdul[ext].header
        if "QCMEDIAN" in header:
            median = float(header["QCMEDIAN"])
        else:
            median = float(np.nanmedian(hdul[ext].data))
        bunit = header.get("BUNIT", "")
    match = MASTER_NAME_RE.match(path.name)
    kind = match.group("type") if match else prim.get("IMTYPE", "?").lower()
    if kind in MASTER_TYPES and product(kind).per_object:
        kind = f"{kind} {prim.get('OBJECT', '')}"
    return {
        "master": kind,
        "nframes": prim.get("NFRAMES"),
        "infobits": prim.get("INFOBITS"),
        "median": median,
        "unit": bunit,
        "ext": ext,
        "path": str(path),
    }


def night_masters(masters_root: str | Path, date: str) -> list[Path]:
    night = Path(masters_root) / date
    order = {name: i for i, name in enumerate(MASTER_TYPES)}
    found = [p for p in night.glob(f"kpf_{date}_master_*.fits") if MASTER_NAME_RE.match(p.name)]
    return sorted(found, key=lambda p: (order[MASTER_NAME_RE.match(p.name).group("type")], p.name))


def format_table(rows: list[dict]) -> str:
    head = ("master", "frames", "INFOBITS", "median", "path")
    body = [
        (
            r["master"],
            str(r["nframes"]),
            str(r["infobits"]),
            f"{r['median']:.4g} {r['unit']} ({r['ext']})",
            r["path"],
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)
