"""What the calibration database records about one product file, read from the file itself.

A night's 2D masters are ``<masters_root>/<date>/kpf_<date>_master_<type>.fits`` (level 0;
docs/reference.md, 'Names'), their 1D spectra ``kpf_<date>_master_<type>_L1.fits`` (level 1,
caltype and object of the 2D master) and the order traces of its master flat
``kpf_<date>_master_flat_<CCD>.csv`` (level 0, caltype ``ordertrace``, object
``green_ccd``/``red_ccd``; docs/reference.md, sections 9 and 10); the wavelength solutions
``kpf_<date>_master_WLS_<tag>_L1.fits`` (level 1, caltype ``wls``, object the arclamp's) and
the arclamp drift tables ``kpf_<date>_master_arclamp_<tag>_L2.fits`` (level 2, caltype
``arclamp``, object the arclamp's; sections 11 and 12). Other files there are ignored with a
log line: names of another night, hidden temporary files.
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
from kpfmasters.core.naming import (
    L2_NAME_RE,
    MASTER_NAME_RE,
    TRACE_NAME_RE,
    WLS_NAME_RE,
    object_tag,
)
from kpfmasters.core.products import product
from kpfmasters.db.errors import NightError

log = logging.getLogger(__name__)

CONTENT_BITS = {ext: 1 << bit for ext, bit in CCD_BIT.items()}
LEVEL_2D = 0
LEVEL_L1 = 1
LEVEL_L2 = 2
TRACE_CALTYPE = "ordertrace"
WLS_CALTYPE = "wls"
TRACE_HEADER = ",Coeff0,Coeff1,Coeff2,Coeff3,BottomEdge,TopEdge,X1,X2,Fiber,Order"
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
    level: int = LEVEL_2D


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
        if match.group("date") != date:
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


def night_l1_files(masters_root: str | Path, date: str) -> list[Path]:
    """The night's L1 files (``kpf_<date>_master_<type>_L1.fits``), sorted, absolute."""
    night_dir = Path(os.path.abspath(masters_root)) / date
    if not night_dir.is_dir():
        return []
    found = []
    for entry in sorted(night_dir.iterdir()):
        match = MASTER_NAME_RE.match(entry.name.replace("_L1.fits", ".fits"))
        if entry.name.endswith("_L1.fits") and match and match.group("date") == date:
            if entry.is_file():
                found.append(entry)
    return found


def night_trace_files(masters_root: str | Path, date: str) -> list[Path]:
    """The night's order-trace files (``kpf_<date>_master_flat_<CCD>.csv``), sorted."""
    night_dir = Path(os.path.abspath(masters_root)) / date
    if not night_dir.is_dir():
        return []
    return [
        entry
        for entry in sorted(night_dir.iterdir())
        if (m := TRACE_NAME_RE.match(entry.name)) and m.group("date") == date and entry.is_file()
    ]


def read_l1(path: str | Path) -> MasterInfo:
    """``calfiles`` fields of an L1 file: level 1, caltype and object of its 2D master (from
    the PRIMARY header it copies), content bits from its GREEN_/RED_ extensions."""
    path = Path(os.path.abspath(path))
    match = MASTER_NAME_RE.match(path.name.replace("_L1.fits", ".fits"))
    if not (path.name.endswith("_L1.fits") and match):
        raise InputError(path, "name is not kpf_<date>_master_<type>_L1.fits")
    caltype = match.group("type")
    headers = _open_headers(path)
    primary = headers[0]
    imtype = str(primary.get("IMTYPE", ""))
    expected = product(caltype).imtype
    if imtype.lower() != expected.lower():
        raise InputError(path, f"PRIMARY IMTYPE = {imtype!r}, expected {expected!r}")
    raw_object = _keyword(path, primary, "OBJECT", str)
    contentbits = 0
    for header in headers[1:]:
        name = str(header.get("EXTNAME", "")).upper()
        if header.get("XTENSION") == "IMAGE":
            contentbits |= CONTENT_BITS.get(name.split("_")[0] + "_CCD", 0)
    if not contentbits:
        raise InputError(path, "has no GREEN_* or RED_* spectra extension, expected L1 images")
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
        level=LEVEL_L1,
    )


def read_trace_file(path: str | Path, flat: MasterInfo | None) -> MasterInfo:
    """``calfiles`` fields of a trace CSV: level 0, caltype ``ordertrace``, object the CCD
    (lowercase); frames and MJD range of the master flat it was traced on (``flat``, the
    night's; :class:`InputError` when the night has none)."""
    path = Path(os.path.abspath(path))
    match = TRACE_NAME_RE.match(path.name)
    if not match:
        raise InputError(path, "name is not kpf_<date>_master_flat_<CCD>.csv")
    if flat is None:
        raise InputError(path, "the night has no master flat, expected the flat it was traced on")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read ({exc})") from None
    if not lines or lines[0].strip() != TRACE_HEADER:
        got = lines[0].strip() if lines else ""
        raise InputError(path, f"header is {got!r}, expected {TRACE_HEADER!r} (a trace CSV)")
    if len([line for line in lines[1:] if line.strip()]) == 0:
        raise InputError(path, "holds no traces")
    ccd = match.group("ccd")
    try:
        checksum = md5_file(path)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    return MasterInfo(
        path=path,
        caltype=TRACE_CALTYPE,
        object=ccd.lower(),
        raw_object=ccd,
        contentbits=CONTENT_BITS[ccd],
        nframes=flat.nframes,
        minmjd=flat.minmjd,
        maxmjd=flat.maxmjd,
        infobits=0,
        checksum=checksum,
        level=LEVEL_2D,
    )


def _night_matches(masters_root: str | Path, date: str, pattern) -> list[Path]:
    night_dir = Path(os.path.abspath(masters_root)) / date
    if not night_dir.is_dir():
        return []
    return [
        entry
        for entry in sorted(night_dir.iterdir())
        if (m := pattern.match(entry.name)) and m.group("date") == date and entry.is_file()
    ]


def night_wls_files(masters_root: str | Path, date: str) -> list[Path]:
    """The night's wavelength solutions (``kpf_<date>_master_WLS_<tag>_L1.fits``), sorted."""
    return _night_matches(masters_root, date, WLS_NAME_RE)


def night_l2_files(masters_root: str | Path, date: str) -> list[Path]:
    """The night's arclamp drift tables (``kpf_<date>_master_arclamp_<tag>_L2.fits``)."""
    return _night_matches(masters_root, date, L2_NAME_RE)


def _arclamp_product(path: Path, pattern, what: str, caltype: str, level: int, needed: str):
    """``calfiles`` fields of an arclamp's WLS or L2 file: the arclamp's object, frames and
    MJD range (from the PRIMARY header it copies); ``needed`` an extension it must hold."""
    match = pattern.match(path.name)
    if not match:
        raise InputError(path, f"name is not {what}")
    headers = _open_headers(path)
    primary = headers[0]
    imtype = str(primary.get("IMTYPE", ""))
    if imtype.lower() != product("arclamp").imtype.lower():
        raise InputError(
            path, f"PRIMARY IMTYPE = {imtype!r}, expected {product('arclamp').imtype!r}"
        )
    raw_object = _keyword(path, primary, "OBJECT", str)
    if object_tag(raw_object) != match.group("tag"):
        raise InputError(
            path,
            f"PRIMARY OBJECT = {raw_object!r} belongs in a file of tag {object_tag(raw_object)}",
        )
    names = [str(h.get("EXTNAME", "")).upper() for h in headers[1:]]
    if needed not in names:
        raise InputError(path, f"has no extension {needed}")
    contentbits = 0
    for name in names:
        contentbits |= CONTENT_BITS.get(name.split("_")[0] + "_CCD", 0)
    if needed == "RV":
        contentbits = CONTENT_BITS["GREEN_CCD"] | CONTENT_BITS["RED_CCD"]
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
        level=level,
    )


def read_wls(path: str | Path) -> MasterInfo:
    """``calfiles`` fields of a wavelength solution: level 1, caltype ``wls``, the arclamp's
    object; :class:`InputError` names the file and the problem."""
    path = Path(os.path.abspath(path))
    return _arclamp_product(
        path, WLS_NAME_RE, "kpf_<date>_master_WLS_<tag>_L1.fits", WLS_CALTYPE, LEVEL_L1,
        "WLS_ORDERS",
    )  # fmt: skip


def read_l2(path: str | Path) -> MasterInfo:
    """``calfiles`` fields of an arclamp drift table: level 2, caltype ``arclamp``."""
    path = Path(os.path.abspath(path))
    return _arclamp_product(
        path, L2_NAME_RE, "kpf_<date>_master_arclamp_<tag>_L2.fits", "arclamp", LEVEL_L2, "RV"
    )
