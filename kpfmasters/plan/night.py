"""The night's L0 files: which exist, what their PRIMARY headers say, and whether they are
structurally usable, scanned once per night and cached in one index file.

The index (``<work_root>/index/<date>.json``) keeps, for every L0 file, the header keywords
selection needs (:data:`HEADER_KEYS` and every keyword a configured rule names), the CCD
shapes its amplifiers make, and a problem string when the file cannot be used. An entry is
reused while the file's size and modification time are unchanged and the index holds the
keywords asked for, so a night is read once and a re-run reads only new or changed files.
A failure of the system while reading (permission denied, an I/O error) makes the frame
unusable for this run only: it is never written to the index.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters.core.naming import parse_l0_name
from kpfmasters.io.files import file_identity
from kpfmasters.io.fits import atomic_output
from kpfmasters.science.l0read import unparsable_card

log = logging.getLogger(__name__)

INDEX_VERSION = 6
HEADER_KEYS = ("IMTYPE", "OBJECT", "EXPTIME", "ELAPSED", "MJD-OBS", "DATE-OBS")
CCDS = ("GREEN", "RED")
_AMP_RE = re.compile(r"^(GREEN|RED)_AMP([1-4])$")
# astropy's warning when it reads non-ASCII header bytes (it replaces each by "?"): the
# header is still read, so the file stays usable and the index notes it.
NON_ASCII_WARNING = "non-ASCII characters are present in the FITS file header"


@dataclass
class Frame:
    """One L0 file of a night, as selection sees it.

    ``header`` holds the raw values of :data:`HEADER_KEYS` (JSON types; absent keys absent).
    ``ccd_shapes`` maps ``GREEN_CCD``/``RED_CCD``/``CA_HK`` to the (rows, cols) the 2D image
    will have. ``problem`` is empty for a usable file, else says why it cannot be used.
    ``note`` says what was read leniently (non-ASCII header bytes: see
    :func:`raw_object_value`). ``transient``: the problem is the system's (permission
    denied, I/O error), not the file's, so the frame is read again next time.
    """

    name: str
    path: str
    size: int
    mtime_ns: int
    header: dict = field(default_factory=dict)
    ccd_shapes: dict = field(default_factory=dict)
    problem: str = ""
    note: str = ""
    transient: bool = False
    # The rest of the file's identity: a file replaced in place or re-delivered with an
    # older time (``rsync -t``, ``cp -p``) changes its ctime or inode even when size and
    # mtime stay.
    ctime_ns: int = 0
    inode: int = 0

    @property
    def identity(self) -> list[int]:
        """``[size, mtime_ns, ctime_ns, inode]``: what says the file is the one scanned."""
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode]

    @property
    def stem(self) -> str:
        return self.name[: -len(".fits")]

    @property
    def mjd(self) -> float:
        value = self.header.get("MJD-OBS")
        return float(value) if is_number(value) else math.inf

    def number(self, key: str) -> float | None:
        value = self.header.get(key)
        return float(value) if is_number(value) else None


def is_number(value) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return False


def jsonable(value):
    """A header value as the night index stores it (JSON): numbers, strings, booleans and
    None as they are, a non-finite float as its text, anything else as ``str``."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    return str(value)


def _ccd_shapes(hdul: fits.HDUList, amp_geometry: dict) -> tuple[dict, str]:
    """CCD shapes the amplifiers of ``hdul`` make, and a problem string ('' when fine)."""
    amps: dict[str, dict[int, fits.Header]] = {ccd: {} for ccd in CCDS}
    shapes: dict[str, tuple[int, int]] = {}
    for hdu in hdul:
        name = hdu.name.upper()
        match = _AMP_RE.match(name)
        if match:
            if int(match.group(2)) in amps[match.group(1)]:
                return {}, f"extension {name} appears more than once"
            amps[match.group(1)][int(match.group(2))] = hdu.header
        elif name == "CA_HK" and hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
            shapes["CA_HK"] = (hdu.header["NAXIS2"], hdu.header["NAXIS1"])
    pre = amp_geometry["prescan"]
    sov = amp_geometry["serial_overscan"]
    pov = amp_geometry["parallel_overscan"]
    for ccd, found in amps.items():
        if not found:
            continue
        numbers = sorted(found)
        if numbers not in ([1, 2], [1, 2, 3, 4]):
            missing = (
                sorted({1, 2, 3, 4}.difference(numbers))
                if len(numbers) > 2
                else [n for n in (1, 2) if n not in numbers]
            )
            names = ", ".join(f"{ccd}_AMP{n}" for n in missing)
            return {}, f"extension {names} missing (have {', '.join(f'AMP{n}' for n in numbers)})"
        dims = set()
        for number, header in found.items():
            ext = f"{ccd}_AMP{number}"
            if header.get("NAXIS", 0) != 2:
                return {}, f"extension {ext} is not a 2-D image"
            if not is_number(header.get("CCDGAIN")):
                return {}, f"extension {ext}: keyword CCDGAIN missing or not a number"
            if header["CCDGAIN"] <= 0:
                return {}, (
                    f"extension {ext}: keyword CCDGAIN is {header['CCDGAIN']!r}, expected a "
                    "positive number (electrons/DN)"
                )
            dims.add((header["NAXIS2"], header["NAXIS1"]))
        if len(dims) != 1:
            return {}, f"{ccd} amplifiers differ in shape: {sorted(dims)}"
        nrows, ncols = dims.pop()
        drows, dcols = nrows - pov, ncols - pre - sov
        if drows < 1 or dcols < 1:
            return {}, (
                f"extension {ccd}_AMP1 shape {nrows}x{ncols} too small for prescan {pre}, "
                f"serial overscan {sov}, parallel overscan {pov}"
            )
        if len(numbers) == 2:
            shapes[f"{ccd}_CCD"] = (drows, 2 * dcols)
        else:
            shapes[f"{ccd}_CCD"] = (2 * drows, 2 * dcols)
    if not any(k in shapes for k in ("GREEN_CCD", "RED_CCD")):
        return shapes, "no GREEN or RED amplifier extensions"
    return shapes, ""


_FITS_STRING = re.compile(rb" *'((?:[^']|'')*)'")


def _header_cards(path: Path):
    """The PRIMARY header's 80-byte cards, as bytes, up to (not including) END."""
    with open(path, "rb") as handle:
        for _ in range(1000):  # header blocks; a primary header is a few at most
            block = handle.read(2880)
            if len(block) < 2880:
                return
            for start in range(0, 2880, 80):
                card = block[start : start + 80]
                if card[:8] == b"END     ":
                    return
                yield card


def _card_string(text: bytes) -> bytes | None:
    """The quoted string at the start of ``text`` ('' unescaped, trailing blanks dropped)."""
    match = _FITS_STRING.match(text)
    return match.group(1).replace(b"''", b"'").rstrip(b" ") if match else None


def raw_string_card(path: Path, key: str) -> bytes | None:
    """The string value of PRIMARY keyword ``key``, byte for byte, or None when there is no
    such string card. FITS string rules apply: '' is a quote, trailing blanks are dropped, and
    a value ending in ``&`` goes on in the CONTINUE cards that follow (long strings)."""
    name = key.encode("ascii").ljust(8)
    cards = _header_cards(path)
    for card in cards:
        if card[:8] == name and card[8:10] == b"= ":
            value = _card_string(card[10:])
            while value is not None and value.endswith(b"&"):
                following = next(cards, b"")
                more = _card_string(following[8:]) if following[:8] == b"CONTINUE" else None
                if more is None:
                    break
                value = value[:-1] + more
            return value
    return None


def raw_object_value(path: Path) -> str | None:
    """OBJECT with each non-ASCII byte written ``\\xNN`` (None when it has none).

    FITS headers are ASCII; astropy reads every other byte as ``?``, so two arclamp settings
    spelt with different non-ASCII bytes of the same length would read alike and be stacked
    together. Escaping keeps them apart and stays ASCII, so it can be written to the master's
    header, file name tag and database row; a backslash of the value is doubled, so the
    escaped form reads back unambiguously.
    """
    raw = raw_string_card(path, "OBJECT")
    if raw is None or raw.isascii():
        return None
    return "".join("\\\\" if b == 0x5C else chr(b) if b < 0x80 else f"\\x{b:02x}" for b in raw)


def system_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is the operating system's
    failure (an :class:`OSError` with an errno: permission denied, I/O error, file gone),
    not a fault of the file's content; astropy's own OSErrors carry no errno."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno is not None:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def read_frame(path: Path, amp_geometry: dict, keys: tuple[str, ...] = HEADER_KEYS) -> Frame:
    """Read one L0 file's headers (never its pixels) into a :class:`Frame`.

    ``keys``: the PRIMARY keywords to keep (:data:`HEADER_KEYS` and those rules name). A
    failure of the system (see :func:`system_failure`) gives a ``transient`` problem.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        frame = Frame(name=path.name, path=str(path), size=-1, mtime_ns=-1, transient=True)
        frame.problem = f"cannot be read ({exc.strerror or exc})"
        return frame
    frame = Frame(
        name=path.name,
        path=str(path),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        ctime_ns=stat.st_ctime_ns,
        inode=stat.st_ino,
    )
    if stat.st_size == 0:
        frame.problem = "empty file (0 bytes)"
        return frame
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("error", AstropyUserWarning)
            warnings.filterwarnings("always", NON_ASCII_WARNING, AstropyUserWarning)
            with fits.open(path, lazy_load_hdus=True, memmap=False) as hdul:
                primary = hdul[0].header
                bad = unparsable_card(primary)
                if bad is not None:
                    frame.problem = f"PRIMARY header card {bad} cannot be parsed"
                    return frame
                frame.header = {k: jsonable(primary[k]) for k in keys if k in primary}
                hdul.readall()
                for i, hdu in enumerate(hdul):  # before fileinfo, which "fixes" bad cards
                    bad = unparsable_card(hdu.header)
                    if bad is not None:
                        frame.problem = (
                            f"{hdu.name or f'HDU {i}'} header card {bad} cannot be parsed"
                        )
                        return frame
                for i in range(len(hdul)):
                    info = hdul.fileinfo(i)
                    end = info["datLoc"] + info["datSpan"]
                    if end > stat.st_size:
                        frame.problem = (
                            f"truncated: extension {hdul[i].name or i} needs {end} bytes, "
                            f"file has {stat.st_size}"
                        )
                        return frame
                shapes, problem = _ccd_shapes(hdul, amp_geometry)
    except OSError as exc:
        if system_failure(exc):
            frame.problem, frame.transient = f"cannot be read ({exc.strerror or exc})", True
        else:
            frame.problem = f"not a readable FITS file ({exc})"
        return frame
    except (ValueError, TypeError, KeyError, IndexError, AstropyUserWarning) as exc:
        frame.problem = f"not a readable FITS file ({exc})"
        return frame
    frame.ccd_shapes = {k: list(v) for k, v in shapes.items()}
    frame.problem = problem
    if any(NON_ASCII_WARNING in str(w.message) for w in caught):
        frame.note = "non-ASCII characters in a header were read as '?' (FITS headers are ASCII)"
        try:
            escaped = raw_object_value(path)
        except OSError as exc:
            frame.problem = f"cannot be read ({exc.strerror or exc})"
            frame.transient = system_failure(exc)
            return frame
        if escaped is not None:
            frame.header["OBJECT"] = escaped
            frame.note = (
                "non-ASCII bytes in a header (FITS headers are ASCII); OBJECT read byte for "
                "byte, each such byte written \\xNN (a backslash as \\\\)"
            )
    return frame


def list_l0_files(l0_root: str | Path, date: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """The night's candidate L0 paths, and ``(name, reason)`` for every file ignored."""
    night_dir = Path(l0_root) / date
    if not night_dir.is_dir():
        return [], []
    keep, ignored = [], []
    for entry in sorted(os.scandir(night_dir), key=lambda e: e.name):
        if not entry.is_file():
            continue
        ok, reason = parse_l0_name(entry.name, date)
        if ok:
            keep.append(Path(entry.path))
        elif entry.name.endswith(".fits"):
            ignored.append((entry.name, reason))
    return keep, ignored


def index_keys(extra=()) -> list[str]:
    """The PRIMARY keywords an index holds: :data:`HEADER_KEYS` then ``extra`` (sorted)."""
    return [*HEADER_KEYS, *sorted(set(extra) - set(HEADER_KEYS))]


def scan_night(
    l0_root: str | Path,
    date: str,
    index_path: str | Path | None,
    amp_geometry: dict,
    keys=(),
    write: bool = True,
) -> tuple[list[Frame], list[tuple[str, str]]]:
    """All L0 frames of ``date`` (sorted by name) and the ignored files with reasons.

    ``keys``: PRIMARY keywords to keep besides :data:`HEADER_KEYS` (those the selection
    rules name). With ``index_path``, unchanged files (same size, mtime, ctime and inode)
    are taken from the index (when it holds the same keywords) and the index is rewritten
    (atomically) only when something changed, and only with ``write`` (a command that only
    shows writes nothing). Frames with a transient problem (:attr:`Frame.transient`) are
    left out of it.
    """
    paths, ignored = list_l0_files(l0_root, date)
    wanted = index_keys(keys)
    cached: dict[str, dict] = {}
    geometry_key = json.dumps(amp_geometry, sort_keys=True)
    if index_path and Path(index_path).is_file():
        try:
            data = json.loads(Path(index_path).read_text())
            if (
                data.get("version") == INDEX_VERSION
                and data.get("geometry") == geometry_key
                and data.get("keys") == wanted
            ):
                cached = {f["path"]: f for f in data["frames"]}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("index %s unreadable; rescanning night %s", index_path, date)
    frames, changed = [], False
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            stat = None
        entry = cached.get(str(path))
        identity = None if stat is None else file_identity(stat)
        if entry and identity is not None and Frame(**entry).identity == identity:
            frames.append(Frame(**entry))
        else:
            frame = read_frame(path, amp_geometry, tuple(wanted))
            if frame.transient:
                log.warning("%s: %s; tried again next time", path, frame.problem)
            frames.append(frame)
            changed = True
    kept = [f for f in frames if not f.transient]
    if write and index_path and (changed or len(kept) != len(cached)):
        payload = {
            "version": INDEX_VERSION,
            "date": date,
            "geometry": geometry_key,
            "keys": wanted,
            "frames": [asdict(f) for f in kept],
        }
        with atomic_output(index_path) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=1))
    return frames, ignored
