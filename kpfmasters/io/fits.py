"""FITS helpers shared by every writer: atomic writes, header-only reads, checksum checks.

Every product is written under a temporary name in the destination directory, flushed to
disk, and renamed over the final name, so a reader (or a killed job) never sees a
half-written file under the final name. A temporary file a killed writer left behind is
harmless (hidden, never a final name) and is removed by the next successful write of the
same product.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters.core.errors import InputError

TMP_MARK = ".tmp-"


def temporary_name(path: str | Path) -> Path:
    """Hidden name beside ``path`` used while it is being written (unique per process).

    Parameters
    ----------
    path : str or Path
        The final file.

    Returns
    -------
    Path
        ``<dir>/.<name>.tmp-<pid>``.
    """
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files of ``path`` left by writers that no longer run.

    A file ``.<name>.tmp-<pid>`` beside ``path`` is stale when ``<pid>`` is not this process
    and no process with that id exists on this host.

    Parameters
    ----------
    path : str or Path
        The final file whose temporaries are looked for.

    Returns
    -------
    list of Path
        The files removed (empty when the directory cannot be listed).
    """
    path = Path(path)
    prefix = f".{path.name}{TMP_MARK}"
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name[len(prefix) :]
        if not (entry.name.startswith(prefix) and pid_text.isdigit()):
            continue
        pid = int(pid_text)
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path; on success rename it to ``path``, on any error remove it.

    The temporary file lives in the destination directory so the final ``os.replace`` is a
    rename within one file system (atomic on POSIX); it is fsync'ed before the rename. After
    a successful rename, stale temporaries of ``path`` (see :func:`remove_stale_temporaries`)
    are removed.

    Parameters
    ----------
    path : str or Path
        The final file; its directory is made when missing.

    Yields
    ------
    Path
        The temporary name (:func:`temporary_name`) the block must write.
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
    remove_stale_temporaries(path)


def write_fits(hdul: fits.HDUList, path: str | Path) -> Path:
    """Write an HDU list atomically, with CHECKSUM/DATASUM in every HDU.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        The file's HDUs (verified with ``output_verify="exception"``).
    path : str or Path
        The final file, replaced when it exists (:func:`atomic_output`).

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_output(path) as tmp:
        hdul.writeto(tmp, checksum=True, overwrite=True, output_verify="exception")
    return Path(path)


def check_complete(path: str | Path) -> None:
    """Check that a FITS file is complete: every header reads, every HDU's data is present.

    Reads headers only: cheap, but no checksum is verified (:func:`verify_checksums`).

    Parameters
    ----------
    path : str or Path
        The FITS file.

    Raises
    ------
    InputError
        Naming the file when it is missing, empty, not FITS, or truncated (naming the HDU
        and the bytes it needs).
    """
    path = Path(path)
    read_primary_header(path)
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, lazy_load_hdus=True, memmap=False) as hdul:
                hdul.readall()
                for index in range(len(hdul)):
                    info = hdul.fileinfo(index)
                    end = info["datLoc"] + info["datSpan"]
                    if end > size:
                        raise InputError(
                            path, f"is truncated: HDU {index} needs {end} bytes, file has {size}"
                        )
    except (OSError, ValueError, AstropyUserWarning) as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from exc


def verify_checksums(path: str | Path) -> None:
    """Check that every HDU of a FITS file carries CHECKSUM and DATASUM matching its bytes.

    The data are read through a memory map, not converted.

    Parameters
    ----------
    path : str or Path
        The FITS file.

    Raises
    ------
    InputError
        Naming the file: unreadable or not FITS, an HDU without CHECKSUM/DATASUM (naming
        the HDU), or a sum that does not match.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, checksum=True, memmap=True) as hdul:
                hdul.readall()
                for index, hdu in enumerate(hdul):
                    missing = [k for k in ("CHECKSUM", "DATASUM") if k not in hdu.header]
                    if missing:
                        raise InputError(
                            path,
                            f"HDU {index} ({hdu.name or 'no EXTNAME'}) has no "
                            f"{'/'.join(missing)}, expected both (kpf-masters writes them)",
                        )
    except AstropyUserWarning as exc:
        detail = " ".join(str(exc).split())
        raise InputError(path, f"fails checksum verification ({detail})") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from exc


def read_primary_header(path: str | Path) -> fits.Header:
    """Read only the PRIMARY header of a FITS file.

    Parameters
    ----------
    path : str or Path
        The FITS file.

    Returns
    -------
    astropy.io.fits.Header
        Its PRIMARY header.

    Raises
    ------
    InputError
        Naming the file when it cannot be read, is empty (0 bytes) or is not FITS.
    """
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
