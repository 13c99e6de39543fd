"""File names: L0 inputs, 2D intermediates and master products.

See docs/reference.md, 'Names and nights', 'The 2D file' and 'Names' (of the master files).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from kpfmasters.core.products import MASTER_TYPES, product

L0_NAME_RE = re.compile(r"^KP\.(?P<date>\d{8})\.(?P<seconds>\d{5}\.\d{2})\.fits$")
_SAFE_TAG_RE = re.compile(r"[^A-Za-z0-9._+-]+")
# A tag used as it is has at most this many characters (a file name is at most 255 bytes).
MAX_TAG = 64
# A piece of up to 8 characters repeated 8 times or more in a row (Snakemake refuses a
# wildcard value ending in 20 repeats as "periodic", and such names are unreadable anyway).
_RUN_RE = re.compile(r"(.{1,8}?)\1{7,}")


def parse_l0_name(name: str, night: str) -> tuple[bool, str]:
    """Decide whether ``name`` is an L0 file of ``night``.

    A valid name is ``KP.YYYYMMDD.SSSSS.ss.fits`` with the night's date and seconds after UT
    midnight below 86400; re-delivered files (a ``-`` in the name) are not.

    Parameters
    ----------
    name : str
        File name (no directory).
    night : str
        The night, ``YYYYMMDD``.

    Returns
    -------
    tuple of (bool, str)
        ``(True, "")`` for a valid name, else ``(False, reason)`` for the log.
    """
    if "-" in name:
        return False, "re-delivered file (name contains '-')"
    match = L0_NAME_RE.match(name)
    if not match:
        return False, "name does not match KP.YYYYMMDD.SSSSS.ss.fits"
    if match.group("date") != night:
        return False, f"date in name ({match.group('date')}) differs from the night ({night})"
    if float(match.group("seconds")) >= 86400.0:
        return False, "seconds after UT midnight out of range"
    return True, ""


def l0_stem(name: str) -> str:
    """The name without its ``.fits`` suffix.

    Parameters
    ----------
    name : str
        An L0 file name, e.g. ``KP.20230606.12345.67.fits``.

    Returns
    -------
    str
        ``KP.20230606.12345.67`` (a name without ``.fits`` is returned as it is).
    """
    return name[:-5] if name.endswith(".fits") else name


def two_d_name(l0_name: str) -> str:
    """Name of the 2D file made from an L0 file (docs/reference.md, 'The 2D file').

    Parameters
    ----------
    l0_name : str
        The L0 file name, ``KP.<date>.<seconds>.fits``.

    Returns
    -------
    str
        ``KP.<date>.<seconds>_2D.fits``.
    """
    return f"{l0_stem(l0_name)}_2D.fits"


def object_tag(obj: str) -> str:
    """A file-name-safe, unique tag for an OBJECT value.

    Values of at most :data:`MAX_TAG` characters made only of ``[A-Za-z0-9._+-]``, with no
    long repeated run, are used as they are (``autocal-une-sky``). Anything else (spaces,
    slashes, quotes, non-ASCII, a long value, a piece repeated 8 times or more) is folded to
    ASCII, unsafe runs become ``_``, repeated runs are cut to two repeats, the result is
    shortened to 48 characters and an 8-hex-digit hash of the exact value is appended, so
    two different OBJECT values never share a file name and every name stays short.

    Parameters
    ----------
    obj : str
        The PRIMARY ``OBJECT`` value.

    Returns
    -------
    str
        The tag: ``obj`` itself, or at most 48 safe characters, ``_`` and the hash.
    """
    if (
        obj
        and len(obj) <= MAX_TAG
        and _SAFE_TAG_RE.search(obj) is None
        and not obj.startswith(".")
        and _RUN_RE.search(obj) is None
    ):
        return obj
    folded = unicodedata.normalize("NFKD", obj).encode("ascii", "ignore").decode()
    safe = _SAFE_TAG_RE.sub("_", folded)
    safe = _RUN_RE.sub(lambda m: m.group(1) * 2, safe)
    safe = safe[:48].strip("._") or "object"
    digest = hashlib.sha256(obj.encode("utf-8")).hexdigest()[:8]
    return f"{safe}_{digest}"


def master_name(date: str, mtype: str, obj: str | None = None) -> str:
    """File name of a master (docs/reference.md, 'Names').

    Parameters
    ----------
    date : str
        The night, ``YYYYMMDD``.
    mtype : str
        Master type (``bias``, ``dark``, ``flat``, ``arclamp``).
    obj : str, optional
        The OBJECT value; required for types made per OBJECT (arclamps).

    Returns
    -------
    str
        ``kpf_<date>_master_<type>.fits``, or ``kpf_<date>_master_arclamp_<tag>.fits`` with
        the OBJECT tag of :func:`object_tag`.

    Raises
    ------
    ValueError
        When ``mtype`` is unknown, or an arclamp is named without its OBJECT.
    """
    if product(mtype).per_object:
        if obj is None:
            raise ValueError("an arclamp master needs its OBJECT value")
        return f"kpf_{date}_master_{mtype}_{object_tag(obj)}.fits"
    return f"kpf_{date}_master_{mtype}.fits"


def master_path(masters_root: str | Path, date: str, mtype: str, obj: str | None = None) -> Path:
    """Path of a master under the masters directory.

    Parameters
    ----------
    masters_root : str or Path
        The masters directory (configuration key ``masters_root``).
    date, mtype, obj
        As for :func:`master_name`.

    Returns
    -------
    Path
        ``<masters_root>/<date>/`` + :func:`master_name`.
    """
    return Path(masters_root) / date / master_name(date, mtype, obj)


MASTER_NAME_RE = re.compile(
    rf"^kpf_(?P<date>\d{{8}})_master_(?P<type>{'|'.join(MASTER_TYPES)})(?:_(?P<tag>.+))?\.fits$"
)


def master_kind(path: str | Path) -> str | None:
    """The kind of master a file name says: its type, and the OBJECT tag for arclamps.

    Parameters
    ----------
    path : str or Path
        A master file (only its name is read).

    Returns
    -------
    str or None
        ``bias``, ``dark``, ``flat`` or ``arclamp_<tag>``; None when the name is not
        ``kpf_<date>_master_<kind>.fits``.
    """
    match = MASTER_NAME_RE.match(Path(path).name)
    if not match:
        return None
    return match.group("type") + (f"_{match.group('tag')}" if match.group("tag") else "")
