"""Reading L0 files safely: structure checks, amplifier extensions, gains (docs/reference.md §1).

Every problem raises :class:`~kpfmasters.core.errors.InputError` whose message starts with the
file's path and names the extension or keyword and what was expected. Pixel data are never
read here except by :func:`amp_data`, which returns the (possibly memory-mapped) array.

Images are opened unscaled: :func:`amp_data` gives the values as stored (BITPIX), and
:func:`image_scaling` the ``BSCALE``/``BZERO``/``BLANK`` that turn them into physical values
(``physical = stored * BSCALE + BZERO``; for a tile-compressed image the scaling of the
uncompressed image, or ``ZBSCALE``/``ZBZERO`` when a writer recorded it that way). Unsigned
16-bit (BITPIX 16, BZERO 32768) and 32-bit (BITPIX 32, BZERO 2147483648) data, any BSCALE,
signed integers and floats are all read exactly; the conversion applies the scaling in
float64 as it goes, so plain images stay memory-mapped (astropy refuses to memory-map a
scaled image).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from kpfmasters.core.errors import InputError

CCDS = ("GREEN", "RED")
AMP_NUMBERS = (1, 2, 3, 4)

# What astropy raises on damaged files (bad cards, short buffers, failed decompression).
READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, VerifyError)


def amp_name(ccd: str, number: int) -> str:
    """``("GREEN", 2)`` -> ``"GREEN_AMP2"``."""
    return f"{ccd}_AMP{number}"


def check_complete(hdul: fits.HDUList, path: str | Path, size: int) -> None:
    """Raise when an HDU's data (padded to 2880 bytes) runs past the end of the file.

    ``size`` is the file size in bytes. Uses astropy's ``fileinfo`` (data start and span),
    so a truncated file is caught before any pixel is read.
    """
    for index, hdu in enumerate(hdul):
        info = hdul.fileinfo(index)
        end = info["datLoc"] + info["datSpan"]
        if end > size:
            raise InputError(
                path,
                f"is truncated: HDU {index} ({hdu.name or 'no EXTNAME'}) needs its data to end "
                f"at byte {end}, but the file has only {size} bytes",
            )


def unparsable_card(header: fits.Header) -> str | None:
    """The first card of ``header`` whose value astropy cannot parse (e.g. ``EXPTIME =
    0.0.0``, an unquoted string, a control character or an unclosed quote), shown as
    ``repr`` of its 80 characters without trailing blanks; None when every card parses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns, then raises VerifyError
        for card in header.cards:
            try:
                card.value  # noqa: B018  (parses the card)
            except (VerifyError, ValueError):
                # the card as read (its image would be re-formatted, and fail again)
                text = getattr(card, "_image", None) or f"{card.keyword} = ..."
                return repr(text.rstrip())
    return None


def check_cards(hdul: fits.HDUList, path: str | Path) -> None:
    """Raise :class:`InputError` naming the HDU and the card when a header card of ``hdul``
    cannot be parsed (the file would also not be writable as a 2D file)."""
    for index, hdu in enumerate(hdul):
        bad = unparsable_card(hdu.header)
        if bad is not None:
            name = hdu.name or f"HDU {index}"
            raise InputError(
                path, f"{name} header card {bad} cannot be parsed, expected a valid FITS card"
            )


def check_headers(caught: list, path: str | Path) -> None:
    """Raise when astropy warned that it could not read an HDU's header.

    astropy then silently stops at that HDU, so a file cut (or damaged) inside a header
    would otherwise look like a file without its later extensions.
    """
    for record in caught:
        text = str(record.message)
        if "Error validating header for HDU" in text:
            detail = " ".join(text.split())
            raise InputError(path, f"is truncated or damaged: a header cannot be read ({detail})")


@contextmanager
def open_l0(path: str | Path):
    """Open an L0 FITS file read-only (memory-mapped where possible) after checking it.

    Yields the :class:`~astropy.io.fits.HDUList` with every header read; image data come
    unscaled (see :func:`image_scaling`). Raises
    :class:`InputError` for a missing, empty, non-FITS or truncated file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(
            path, f"cannot be read ({exc.strerror}), expected an L0 FITS file"
        ) from exc
    if size == 0:
        raise InputError(path, "is empty (0 bytes), expected an L0 FITS file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, mode="readonly", memmap=True, do_not_scale_image_data=True)
            hdul.readall()
    except READ_ERRORS as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from exc
    try:
        check_headers(caught, path)
        check_cards(hdul, path)  # before fileinfo, which "fixes" bad cards silently
        check_complete(hdul, path, size)
        yield hdul
    finally:
        hdul.close()


def find_amps(hdul: fits.HDUList, path: str | Path, ccd: str) -> list[str]:
    """Names of the amplifier extensions of ``ccd``: ``[]``, 2 names or 4 names.

    No extension at all means the CCD is absent (not an error). Any set other than AMP1-2 or
    AMP1-4 raises :class:`InputError` naming the missing extensions.
    """
    names = [hdu.name.upper() for hdu in hdul]
    for n in AMP_NUMBERS:
        if names.count(amp_name(ccd, n)) > 1:
            raise InputError(
                path,
                f"extension {amp_name(ccd, n)} appears {names.count(amp_name(ccd, n))} times, "
                "expected once",
            )
    present = [n for n in AMP_NUMBERS if amp_name(ccd, n) in hdul]
    if not present or present == [1, 2] or present == [1, 2, 3, 4]:
        return [amp_name(ccd, n) for n in present]
    wanted = (1, 2, 3, 4) if max(present) > 2 else (1, 2)
    missing = ", ".join(amp_name(ccd, n) for n in wanted if n not in present)
    found = ", ".join(amp_name(ccd, n) for n in present)
    raise InputError(
        path,
        f"extension {missing} missing (found {found}); expected {ccd}_AMP1..AMP2 "
        f"(2-amplifier mode) or {ccd}_AMP1..AMP4 (4-amplifier mode)",
    )


def amp_gain(header: fits.Header, path: str | Path, ext: str) -> float:
    """``CCDGAIN`` of an amplifier header, electrons per DN (a finite positive number)."""
    if "CCDGAIN" not in header:
        raise InputError(
            path, f"extension {ext}: keyword CCDGAIN missing, expected the gain in electrons/DN"
        )
    value = header["CCDGAIN"]
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        raise InputError(
            path,
            f"extension {ext}: keyword CCDGAIN is {value!r}, expected a positive number "
            "(electrons/DN)",
        )
    return float(value)


@dataclass(frozen=True)
class Scaling:
    """How stored values become physical ones: ``stored * bscale + bzero``.

    ``blank``: the stored integer marking an undefined pixel (None when there is none).
    """

    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None

    @property
    def identity(self) -> bool:
        """True when stored values are the physical values (no arithmetic needed)."""
        return self.bscale == 1 and self.bzero == 0 and self.blank is None


def _scaling_value(header: fits.Header, path, ext: str, keys: tuple[str, str], default):
    for key in keys:
        if key in header:
            value = header[key]
            ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if not ok or not math.isfinite(float(value)):
                raise InputError(
                    path, f"extension {ext}: keyword {key} is {value!r}, expected a finite number"
                )
            return value
    return default


def image_scaling(hdul: fits.HDUList, path: str | Path, ext: str) -> Scaling:
    """The :class:`Scaling` of image extension ``ext`` of a file opened by :func:`open_l0`.

    ``BSCALE``/``BZERO`` (default 1 and 0); for a tile-compressed image whose uncompressed
    scaling was recorded as ``ZBSCALE``/``ZBZERO`` instead, those. ``BLANK`` counts for
    integer images only. Raises :class:`InputError` for a scaling keyword that is not a
    finite number, or BSCALE 0.
    """
    header = hdul[ext].header
    compressed = isinstance(hdul[ext], fits.CompImageHDU)
    scale_keys = ("BSCALE", "ZBSCALE") if compressed else ("BSCALE",)
    zero_keys = ("BZERO", "ZBZERO") if compressed else ("BZERO",)
    bscale = _scaling_value(header, path, ext, scale_keys, 1)
    bzero = _scaling_value(header, path, ext, zero_keys, 0)
    if bscale == 0:
        raise InputError(path, f"extension {ext}: keyword BSCALE is 0, expected a non-zero scale")
    blank = None
    if header.get("BITPIX", 0) > 0 and "BLANK" in header:
        value = header["BLANK"]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise InputError(
                path, f"extension {ext}: keyword BLANK is {value!r}, expected an integer"
            )
        blank = int(value)
    return Scaling(bscale=bscale, bzero=bzero, blank=blank)


def physical(data: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Physical values of a (small) stored array: itself when unscaled; an unsigned integer
    array for the unsigned convention (BSCALE 1, BZERO 2**(bits - 1)); else float64, with
    NaN for BLANK pixels. For whole images (CA_HK), not for amplifiers (converted in place).
    """
    if scaling.identity:
        return data
    bits = data.dtype.itemsize * 8
    if (
        data.dtype.kind == "i"
        and scaling.bscale == 1
        and scaling.bzero == 2 ** (bits - 1)
        and scaling.blank is None
    ):
        native = data.astype(f"=i{data.dtype.itemsize}")
        sign = np.array(-(2 ** (bits - 1)), dtype=native.dtype)
        return (native ^ sign).view(f"=u{data.dtype.itemsize}")  # + 2**(bits-1), exactly
    out = data.astype(np.float64)
    out *= scaling.bscale
    out += scaling.bzero
    if scaling.blank is not None:
        out[data == scaling.blank] = np.nan
    return out


def image_data(hdul: fits.HDUList, path: str | Path, ext: str) -> np.ndarray | None:
    """Pixel array of image extension ``ext`` as stored (None when it has no data).

    Plain images come memory-mapped (no copy); RICE-compressed ones are decompressed here.
    """
    hdu = hdul[ext]
    if not hdu.is_image:
        raise InputError(path, f"extension {ext} is a {type(hdu).__name__}, expected an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hdu.data
    except MemoryError:
        raise
    except Exception as exc:  # astropy/cfitsio raise many types for damaged tiles
        raise InputError(path, f"extension {ext}: image data cannot be read ({exc})") from exc


def amp_data(hdul: fits.HDUList, path: str | Path, ext: str) -> np.ndarray:
    """The 2-D pixel array (rows, cols) of amplifier extension ``ext`` (raw DN * scale)."""
    data = image_data(hdul, path, ext)
    if data is None or data.ndim != 2:
        shape = "no data" if data is None else f"shape {data.shape}"
        raise InputError(path, f"extension {ext} has {shape}, expected a 2-D image")
    return data
