"""What the calibration database records about one master file, read from the file itself.

A night's 2D masters are ``<masters_root>/<date>/kpf_<date>_master_<type>.fits``
(docs/reference.md, 'Names'). Other files there are ignored with a log line: KPF's 1D
products (``*_L1.fits``, ``*_L2.fits``), names of another night, hidden temporary files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters.core.errors import InputError
from kpfmasters.core.instrument import CCD_BIT
from kpfmasters.core.naming import MASTER_NAME_RE, object_tag
from kpfmasters.core.products import product
from kpfmasters.db.errors import NightError

log = logging.getLogger(__name__)

CONTENT_BITS = {ext: 1 << bit for ext, bit in CCD_BIT.items()}
LEVEL_2D = 0
_PRODUCT_SUFFIXES = ("_L1", "_L2")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MasterInfo:
    """One master file as a ``calfiles`` row sees it.

    Attributes
    ----------
    path : Path
        The file (absolute).
    caltype : str
        Master type from the file name (``bias``, ``dark``, ``flat``, ``arclamp``).
    object : str
        PRIMARY ``OBJECT``, lowercase.
    raw_object : str
        PRIMARY ``OBJECT`` as written.
    contentbits : int
        Bit of each CCD image present (:data:`CONTENT_BITS`: 1 GREEN_CCD, 2 RED_CCD,
        4 CA_HK).
    nframes : int
        PRIMARY ``NFRAMES``.
    minmjd, maxmjd : float
        PRIMARY ``MINMJD`` and ``MAXMJD`` (days).
    infobits : int
        PRIMARY ``INFOBITS``.
    checksum : str
        MD5 hex digest of the file's bytes.
    """

    path: Path
    caltype: str
    object: str
    raw_object: str
    contentbits: int
    nframes: int
    minmjd: float
    maxmjd: float
    infobits: int
    checksum: str


def parse_night(date: str) -> dt.date:
    """A night argument as a date.

    Parameters
    ----------
    date : str
        The night, ``YYYYMMDD``.

    Returns
    -------
    datetime.date
        The calendar date.

    Raises
    ------
    NightError
        When it is not 8 digits or not a calendar date.
    """
    text = str(date)
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise NightError(f"night {text!r} is not a date YYYYMMDD") from None


def md5_file(path: str | Path) -> str:
    """MD5 hex digest of the file's bytes (read in 1 MiB chunks).

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    str
        32 hex digits.
    """
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def night_master_files(masters_root: str | Path, date: str) -> list[Path]:
    """The night's master files, sorted by name, as absolute paths (symlinks kept).

    Parameters
    ----------
    masters_root : str or Path
        The masters directory.
    date : str
        The night, ``YYYYMMDD``.

    Returns
    -------
    list of Path
        ``<masters_root>/<date>/kpf_<date>_master_*.fits`` that are regular files with a
        2D master name of that night; empty (with a warning) when the night has no
        directory.

    Raises
    ------
    NightError
        When ``date`` is not a night.
    InputError
        When ``masters_root`` is not a directory.
    """
    parse_night(date)
    root = Path(os.path.abspath(masters_root))
    if not root.is_dir():
        raise InputError(root, "masters root is not a directory")
    night_dir = root / date
    if not night_dir.is_dir():
        log.warning("%s does not exist: the night has no masters", night_dir)
        return []
    found = []
    for entry in sorted(night_dir.iterdir()):
        match = MASTER_NAME_RE.match(entry.name)
        if not match:
            continue
        stem = entry.name[: -len(".fits")]
        if stem.endswith(_PRODUCT_SUFFIXES):
            log.info("ignoring %s: an L1/L2 product, not a 2D master", entry.name)
        elif match.group("date") != date:
            log.warning("ignoring %s: its date differs from the night %s", entry.name, date)
        elif (match.group("type") == "arclamp") != (match.group("tag") is not None):
            log.info("ignoring %s: not a 2D master name", entry.name)
        elif not entry.is_file():
            log.warning("ignoring %s: not a regular file", entry.name)
        else:
            found.append(entry)
    return found


def _keyword(path: Path, header: fits.Header, key: str, kind: type):
    if key not in header:
        raise InputError(path, f"PRIMARY keyword {key} is missing")
    value = header[key]
    try:
        if kind is int and (isinstance(value, bool) or float(value) != int(value)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(
            path, f"PRIMARY keyword {key} = {value!r} is not {kind.__name__}"
        ) from None


def _open_headers(path: Path) -> list[fits.Header]:
    """Every HDU's header; data checksums verified where the file has them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # VerifyWarning, checksums
            with fits.open(path, checksum=True, memmap=True) as hdul:
                return [hdu.header.copy() for hdu in hdul]
    except OSError as exc:
        if exc.errno is not None:
            raise InputError(path, f"cannot be read ({exc.strerror})") from None
        raise InputError(path, f"is not a readable FITS file ({exc})") from None
    except Exception as exc:  # astropy raises warnings, ValueError, VerifyError, ...
        detail = " ".join(str(exc).split())
        raise InputError(path, f"is not a valid FITS file ({detail})") from None


def read_master(path: str | Path) -> MasterInfo:
    """Read a master's ``calfiles`` fields from its name and headers.

    Every header is read with the data checksums verified; the MD5 of the file is computed.

    Parameters
    ----------
    path : str or Path
        The master file.

    Returns
    -------
    MasterInfo
        Its fields.

    Raises
    ------
    InputError
        Naming the file and the problem: a name that is not a master's, an unreadable or
        invalid FITS file, IMTYPE not that of the type, an arclamp OBJECT that does not
        match its file name, or a PRIMARY keyword (OBJECT, NFRAMES, MINMJD, MAXMJD,
        INFOBITS) missing or of the wrong type.
    """
    path = Path(os.path.abspath(path))
    match = MASTER_NAME_RE.match(path.name)
    if not match:
        raise InputError(path, "name is not kpf_<date>_master_<type>.fits")
    caltype = match.group("type")
    headers = _open_headers(path)
    primary = headers[0]
    imtype = str(primary.get("IMTYPE", ""))
    expected = product(caltype).imtype
    if imtype.lower() != expected.lower():
        raise InputError(path, f"PRIMARY IMTYPE = {imtype!r}, expected {expected!r}")
    raw_object = _keyword(path, primary, "OBJECT", str)
    if product(caltype).per_object and object_tag(raw_object) != match.group("tag"):
        raise InputError(
            path,
            f"PRIMARY OBJECT = {raw_object!r} belongs in a file named "
            f"..._arclamp_{object_tag(raw_object)}.fits",
        )
    contentbits = 0
    for header in headers[1:]:
        if header.get("XTENSION") == "IMAGE" or header.get("ZIMAGE"):
            contentbits |= CONTENT_BITS.get(str(header.get("EXTNAME", "")).upper(), 0)
    try:
        checksum = md5_file(path)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    return MasterInfo(
        path=path,
        caltype=caltype,
        object=raw_object.lower(),
        raw_object=raw_object,
        contentbits=contentbits,
        nframes=_keyword(path, primary, "NFRAMES", int),
        minmjd=_keyword(path, primary, "MINMJD", float),
        maxmjd=_keyword(path, primary, "MAXMJD", float),
        infobits=_keyword(path, primary, "INFOBITS", int),
        checksum=checksum,
    )
