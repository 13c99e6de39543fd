"""A corpus of broken L0 files, made from the frames of a simulated night (never committed).

Each helper derives a new L0 file of the night from a good simulated frame: the derived file
gets its own name (``KP.<date>.<seconds>.fits``) with MJD-OBS and DATE-OBS to match, then one
defect. Nothing here knows what the pipeline should do with it; the tests say that.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters.sim.simulate import iso_time, mjd_of_date


def l0_name(date: str, seconds: float) -> str:
    return f"KP.{date}.{seconds:08.2f}.fits"


def derive(
    source: Path,
    date: str,
    seconds: float,
    header: dict | None = None,
    drop: tuple[str, ...] = (),
    edit=None,
) -> Path:
    """Copy L0 ``source`` to the night's file at ``seconds``; ``header`` sets PRIMARY keys,
    ``drop`` removes them, ``edit(hdul)`` changes anything else. Written with checksums."""
    path = Path(source).parent.parent / date / l0_name(date, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    centis = int(round(seconds * 100))
    with fits.open(source) as src:
        hdus = [hdu.copy() for hdu in src]
    out = fits.HDUList(hdus)
    primary = out[0].header
    primary["MJD-OBS"] = mjd_of_date(date) + centis / 8640000
    primary["DATE-OBS"] = iso_time(date, centis)
    for key, value in (header or {}).items():
        primary[key] = value
    for key in drop:
        primary.remove(key)
    if edit is not None:
        edit(out)
    out.writeto(path, checksum=True)
    return path


def empty_file(night_dir: Path, date: str, seconds: float) -> Path:
    path = night_dir / l0_name(date, seconds)
    path.write_bytes(b"")
    return path


def not_fits(night_dir: Path, date: str, seconds: float) -> Path:
    path = night_dir / l0_name(date, seconds)
    path.write_text("This is a log file someone saved with a .fits name.\n" * 40)
    return path


def truncate(path: Path, keep_fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def duplicate(source: Path, date: str, seconds: float) -> Path:
    """A byte-for-byte copy under another name (same headers, same size)."""
    path = Path(source).parent / l0_name(date, seconds)
    shutil.copyfile(source, path)
    return path


def replace_in_header(path: Path, old: bytes, new: bytes) -> None:
    """Patch PRIMARY header bytes in place (same length), e.g. to put non-ASCII bytes in."""
    assert len(old) == len(new), (old, new)
    data = path.read_bytes()
    head = data[:2880]
    assert head.count(old) == 1, old
    path.write_bytes(head.replace(old, new) + data[2880:])


def float_amps_with(bad: dict[str, list[tuple[int, int, float]]]):
    """An ``edit`` turning every amplifier into float64 and setting ``bad`` stored pixels:
    ``{extname: [(row, col, value), ...]}``."""

    def edit(hdul: fits.HDUList) -> None:
        for i, hdu in enumerate(hdul):
            if "_AMP" in hdu.name:
                data = hdu.data.astype(np.float64)
                for row, col, value in bad.get(hdu.name, []):
                    data[row, col] = value
                hdul[i] = fits.ImageHDU(data, header=hdu.header, name=hdu.name)

    return edit


def narrow_amp(extname: str, columns: int = 1):
    """An ``edit`` cutting ``columns`` columns off one amplifier (wrong shape)."""

    def edit(hdul: fits.HDUList) -> None:
        hdu = hdul[extname]
        hdul[extname] = fits.ImageHDU(hdu.data[:, columns:], header=hdu.header, name=extname)

    return edit
