"""FITS helpers shared by every writer: atomic writes and header-only reads.

Every product is written under a temporary name in the destination directory, flushed to
disk, and renamed over the final name, so a reader (or a killed job) never sees a
half-written file under the final name.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from .errors import InputError

TMP_MARK = ".tmp-"


def temporary_name(path: str | Path) -> Path:
    """Hidden name beside ``path`` used while it is being written (unique per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path; on success rename it to ``path``, on any error remove it.

    The temporary file lives in the destination directory so the final ``os.replace`` is a
    rename within one file system (atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_fits(hdul: fits.HDUList, path: str | Path) -> Path:
    """Write ``hdul`` to ``path`` atomically, with CHECKSUM/DATASUM in every HDU."""
    with atomic_output(path) as tmp:
        hdul.writeto(tmp, checksum=True, overwrite=True, output_verify="exception")
    return Path(path)


def read_primary_header(path: str | Path) -> fits.Header:
    """Read only the PRIMARY header of ``path``; raise :class:`InputError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from exc
    if size == 0:
        raise InputError(path, "is empty (0 bytes), expected a FITS file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            return fits.getheader(path, 0)
    except (OSError, ValueError, AstropyUserWarning) as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from exc
