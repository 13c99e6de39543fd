"""L0 -> 2D: amplifiers in scaled DN -> one overscan-subtracted CCD image in electrons.

docs/reference.md §2, for each CCD (GREEN, RED):

1. ``e = raw / adc_scale * CCDGAIN`` per amplifier, float64.
2. Orient: flip AMP2 left-right, AMP3 up-down, AMP4 both, so every amplifier reads
   prescan | data | serial overscan, with the parallel-overscan rows last.
3. Overscan level per amplifier: :func:`clipped_mean` of the strip of all rows and columns
   ``[prescan + ndata + edge_skip, ncols - edge_skip)``; subtract it.
4. Keep rows ``[0, nrows - parallel_overscan)`` and columns ``[prescan, prescan + ndata)``,
   undo the flip, tile: AMP1 bottom-left (lowest row indices), AMP2 bottom-right, AMP3
   top-left, AMP4 top-right; 2 amplifiers: AMP1 | AMP2 side by side at full height. Then
   the CCDs configured for the amplifier mode (KPF: GREEN in 2-amplifier mode, whose two
   amplifiers read from the other edge) are flipped up-down, so 2D images, order masks and
   traces share KPF production's orientation.

Raw values are read as stored and scaled here (``stored * BSCALE + BZERO``, float64, see
:mod:`kpfmasters.science.l0read`): unsigned and scaled encodings cost one more operation on a block
that is in cache, and plain images stay memory-mapped.

``ndata = ncols - prescan - serial_overscan``: the data size is what remains of the image, so
small simulated frames go through the same code as real 4110 x 2094 amplifiers.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters.core.errors import ConfigError, InputError
from kpfmasters.io.fits import write_fits
from kpfmasters.science.l0read import (
    CCDS,
    Scaling,
    amp_data,
    amp_gain,
    find_amps,
    image_data,
    image_scaling,
    open_l0,
    physical,
)

log = logging.getLogger(__name__)

# Rows converted per step: the float64 scratch block (ROW_BLOCK x ncols) stays in cache.
ROW_BLOCK = 32
# Big-endian float32, as FITS stores it: astropy then writes and checksums without a byteswap.
FITS_FLOAT32 = np.dtype(">f4")
AMPS_KEYWORD = {"GREEN": "GRNAMPS", "RED": "REDAMPS"}
UNSCALED = Scaling()


@dataclass(frozen=True)
class AmpGeometry:
    """Amplifier layout, in pixels (columns for the first two, rows for the third).

    ``edge_skip`` columns are skipped at each edge of the serial overscan; ``nsigma`` is the
    clip k of the overscan level. ``flip_2amp``/``flip_4amp``: the CCDs (``GREEN``,
    ``RED``) whose tiled image is flipped up-down in 2- and 4-amplifier mode.
    """

    prescan: int
    serial_overscan: int
    parallel_overscan: int
    edge_skip: int
    nsigma: float
    flip_2amp: tuple[str, ...]
    flip_4amp: tuple[str, ...]

    def __post_init__(self):
        for name in ("flip_2amp", "flip_4amp"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(v in CCDS for v in value):
                raise ConfigError(
                    f"amplifier geometry {name}: {value!r} is not a list of CCDs {list(CCDS)}"
                )
            object.__setattr__(self, name, tuple(value))
        for name in ("prescan", "serial_overscan", "parallel_overscan", "edge_skip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"amplifier geometry {name}: {value!r} is not an integer >= 0")
        if self.serial_overscan <= 2 * self.edge_skip:
            raise ConfigError(
                f"amplifier geometry: serial_overscan ({self.serial_overscan}) must exceed "
                f"2 * overscan_edge_skip ({2 * self.edge_skip}) to leave an overscan strip"
            )
        if not (isinstance(self.nsigma, (int, float)) and self.nsigma > 0):
            raise ConfigError(f"amplifier geometry nsigma: {self.nsigma!r} is not > 0")

    @classmethod
    def from_config(cls, cfg: dict) -> AmpGeometry:
        """Build from the whole configuration (its ``amplifier`` section)."""
        amp = cfg["amplifier"]
        return cls(
            prescan=amp["prescan"],
            serial_overscan=amp["serial_overscan"],
            parallel_overscan=amp["parallel_overscan"],
            edge_skip=amp["overscan_edge_skip"],
            nsigma=amp["overscan_nsigma"],
            flip_2amp=tuple(amp["flip_updown"]["two_amp"]),
            flip_4amp=tuple(amp["flip_updown"]["four_amp"]),
        )

    def flipped(self, ccd: str, namps: int) -> bool:
        """Whether ``ccd``'s tiled image is flipped up-down with ``namps`` amplifiers."""
        return ccd in (self.flip_2amp if namps == 2 else self.flip_4amp)

    def data_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(data rows, data columns) of an amplifier of ``shape`` (rows, cols)."""
        nrows, ncols = shape
        return nrows - self.parallel_overscan, ncols - self.prescan - self.serial_overscan

    def strip_columns(self, ncols: int) -> slice:
        """Columns of the overscan strip in an oriented amplifier of ``ncols`` columns."""
        ndata = ncols - self.prescan - self.serial_overscan
        return slice(self.prescan + ndata + self.edge_skip, ncols - self.edge_skip)


def clipped_mean(values: np.ndarray, nsigma: float) -> float:
    """One-pass clipped mean of ``values`` (any shape, flattened), docs/reference.md §4 in 1-D.

    m = median, s = 0.5 * (p84 - p16) (NumPy's default linear percentiles); keep
    ``m - k s <= x <= m + k s``; return the mean of the kept values (float64). NaN in
    ``values`` propagates (callers check for finite input first).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    work = x.copy()  # partially sorted in place below; x keeps its order for the mean
    p16, p84 = np.percentile(work, [16.0, 84.0], overwrite_input=True)
    m = np.median(work, overwrite_input=True)
    half = nsigma * (0.5 * (p84 - p16))
    kept = x[(x >= m - half) & (x <= m + half)]
    return float(np.mean(kept))


def orient(image: np.ndarray, number: int) -> np.ndarray:
    """View of amplifier ``number`` (1-4) flipped to AMP1's reading direction.

    AMP2 is flipped left-right, AMP3 up-down, AMP4 both. The flips are their own inverse, so
    the same function undoes them. No copy is made.
    """
    if number in (2, 4):
        image = image[:, ::-1]
    if number in (3, 4):
        image = image[::-1, :]
    return image


def tile_slices(number: int, namps: int, drows: int, dcols: int) -> tuple[slice, slice]:
    """(row, column) slices of amplifier ``number``'s data in the CCD image.

    Row 0 is the bottom: AMP1 bottom-left, AMP2 bottom-right, AMP3 top-left, AMP4 top-right.
    With 2 amplifiers both span the full height.
    """
    col = slice(0, dcols) if number in (1, 3) else slice(dcols, 2 * dcols)
    row = slice(0, drows) if number in (1, 2) or namps == 2 else slice(drows, 2 * drows)
    return row, col


def to_electrons(
    raw: np.ndarray,
    adc_scale: float,
    gain: float,
    out: np.ndarray,
    scaling: Scaling = UNSCALED,
) -> np.ndarray:
    """``(raw * bscale + bzero) / adc_scale * gain`` into float64 ``out``; returns ``out``.

    ``raw`` holds stored values, ``scaling`` their BSCALE/BZERO (``out`` has ``raw``'s
    shape). The physical value is exact in float64 for every integer encoding (and for
    float32), so every encoding of the same physical values gives the same bits. For a
    power-of-two ``adc_scale`` the division is exact, so one multiplication by
    ``gain / adc_scale`` gives bit-identical results.
    """
    power_of_two = math.frexp(adc_scale)[0] == 0.5
    if scaling.bscale == 1 and scaling.bzero == 0:
        if power_of_two:
            return np.multiply(raw, gain / adc_scale, out=out)
        np.divide(raw, adc_scale, out=out)
    else:
        if scaling.bscale == 1:
            np.add(raw, np.float64(scaling.bzero), out=out)
        else:
            np.multiply(raw, np.float64(scaling.bscale), out=out)
            if scaling.bzero != 0:
                out += np.float64(scaling.bzero)
        if power_of_two:
            out *= gain / adc_scale
            return out
        out /= adc_scale
    out *= gain
    return out


def strip_statistics(e: np.ndarray, nsigma: float) -> tuple[float, float]:
    """(level, noise) of an overscan strip ``e`` (float64 electrons, 1-D, C-contiguous).

    ``level`` is :func:`clipped_mean` (k = ``nsigma``) and ``noise`` :func:`robust_std` of
    the same values, bit for bit, from one sort: the percentiles, the median and the mean of
    the kept values are those NumPy computes on the unsorted strip (order statistics do not
    depend on the order; the kept values are taken from ``e`` in its own order, so the mean
    sums them the same way).
    """
    ordered = np.sort(e)
    p16, p84 = np.percentile(ordered, [16.0, 84.0], overwrite_input=True)
    m = np.median(ordered, overwrite_input=True)
    half = nsigma * (0.5 * (p84 - p16))
    level = float(np.mean(e[(e >= m - half) & (e <= m + half)]))
    deviation = np.abs(e - m)
    deviation.sort()
    noise = float(1.4826 * np.median(deviation, overwrite_input=True))
    return level, noise


def overscan_statistics(
    raw: np.ndarray,
    number: int,
    gain: float,
    geometry: AmpGeometry,
    adc_scale: float,
    scaling: Scaling = UNSCALED,
) -> tuple[float, float]:
    """(level, read noise), electrons, of amplifier ``number`` given as stored (rows, cols).

    Both come from the strip of all rows and the columns :meth:`AmpGeometry.strip_columns`
    of the oriented amplifier: the level is its clipped mean (k = ``geometry.nsigma``,
    :func:`clipped_mean`), the noise its :func:`robust_std`. Both are NaN when the strip
    holds a NaN, Inf or BLANK value.
    """
    oriented = orient(raw, number)
    strip = oriented[:, geometry.strip_columns(oriented.shape[1])]
    if scaling.blank is not None and np.any(strip == scaling.blank):
        return math.nan, math.nan
    e = np.empty(strip.shape, dtype=np.float64)
    e = to_electrons(strip, adc_scale, gain, e, scaling).ravel()
    if raw.dtype.kind == "f" and not np.isfinite(e).all():
        return math.nan, math.nan
    return strip_statistics(e, geometry.nsigma)


def robust_std(values: np.ndarray) -> float:
    """1.4826 * median absolute deviation from the median (float64; the std of a normal)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    deviation = np.abs(x - np.median(x))
    return float(1.4826 * np.median(deviation, overwrite_input=True))


def subtract_into(
    raw: np.ndarray,
    gain: float,
    level: float,
    adc_scale: float,
    out: np.ndarray,
    scaling: Scaling = UNSCALED,
) -> None:
    """``out[...] = float32(physical(raw) / adc_scale * gain - level)``, in float64 blocks.

    ``raw`` (stored values, ``scaling`` their BSCALE/BZERO/BLANK) and ``out`` are 2-D of
    the same shape (views allowed, any strides); the float64 scratch block is reused so no
    full-size temporary is made. Non-finite values of a floating-point ``raw`` (NaN, +-Inf)
    and BLANK pixels become NaN: a missing pixel for the stack.
    """
    scratch = np.empty((min(ROW_BLOCK, raw.shape[0]), raw.shape[1]), dtype=np.float64)
    floating = raw.dtype.kind == "f"
    for start in range(0, raw.shape[0], ROW_BLOCK):
        src = raw[start : start + ROW_BLOCK]
        block = to_electrons(src, adc_scale, gain, scratch[: src.shape[0]], scaling)
        block -= level  # float64, in cache; then one cast (and byte swap) to the output
        dest = out[start : start + ROW_BLOCK]
        dest[...] = block
        if floating:
            dest[np.isinf(dest)] = np.nan
        elif scaling.blank is not None:
            dest[src == scaling.blank] = np.nan


def convert_amp(
    raw: np.ndarray,
    number: int,
    gain: float,
    geometry: AmpGeometry,
    adc_scale: float,
    tile: np.ndarray,
    scaling: Scaling = UNSCALED,
) -> tuple[float, float]:
    """Overscan-subtract amplifier ``number`` (stored, (rows, cols)) into its CCD ``tile``.

    ``tile`` is the (drows, dcols) view of the CCD image the data go to. Returns the overscan
    (level, read noise) in electrons (:func:`overscan_statistics`); when they are NaN
    (NaN/Inf/BLANK in the strip) the tile is filled with NaN.
    """
    level, noise = overscan_statistics(raw, number, gain, geometry, adc_scale, scaling)
    if not math.isfinite(level):
        tile[...] = np.nan
        return level, noise
    drows, dcols = tile.shape
    oriented = orient(raw, number)
    data = orient(oriented[:drows, geometry.prescan : geometry.prescan + dcols], number)
    subtract_into(data, gain, level, adc_scale, tile, scaling)
    return level, noise


def convert_ccd(
    raws: list[np.ndarray],
    gains: list[float],
    geometry: AmpGeometry,
    adc_scale: float,
    threads: int = 1,
    scalings: list[Scaling] | None = None,
    flip: bool = False,
) -> tuple[np.ndarray, list[float], list[float]]:
    """One CCD from its 2 or 4 amplifiers (AMP1 first, all of one shape).

    ``raws``: arrays (rows, cols) as stored in the L0 file, ``scalings`` their BSCALE/BZERO
    (default: none); ``gains``: electrons per DN. Returns the image, float32 electrons
    (big-endian, as FITS stores them) of shape (drows, 2 dcols) for 2 amplifiers or
    (2 drows, 2 dcols) for 4, flipped up-down after tiling when ``flip``, the overscan level
    and the overscan read noise of each amplifier in electrons (NaN for a strip with
    NaN/Inf, whose tile is then NaN). ``threads`` > 1 converts amplifiers concurrently
    (NumPy releases the GIL); the result does not depend on it.
    """
    namps = len(raws)
    scalings = scalings or [UNSCALED] * namps
    drows, dcols = geometry.data_size(raws[0].shape)
    image = np.empty((drows if namps == 2 else 2 * drows, 2 * dcols), dtype=FITS_FLOAT32)
    tiled = image[::-1] if flip else image  # the flip costs nothing: tiles land flipped

    def one(number: int) -> tuple[float, float]:
        rows, cols = tile_slices(number, namps, drows, dcols)
        tile = tiled[rows, cols]
        i = number - 1
        return convert_amp(raws[i], number, gains[i], geometry, adc_scale, tile, scalings[i])

    numbers = range(1, namps + 1)
    if threads > 1:
        with ThreadPoolExecutor(max_workers=min(threads, namps)) as pool:
            stats = list(pool.map(one, numbers))
    else:
        stats = [one(number) for number in numbers]
    return image, [level for level, _ in stats], [noise for _, noise in stats]


def read_ccd(
    hdul: fits.HDUList, path: str | Path, ccd: str, geometry: AmpGeometry
) -> tuple[list[np.ndarray], list[float], list[Scaling]] | None:
    """Amplifier arrays (as stored), gains and scalings of ``ccd`` (None when it has no
    amplifier extension)."""
    names = find_amps(hdul, path, ccd)
    if not names:
        return None
    raws, gains, scalings = [], [], []
    for ext in names:
        raw = amp_data(hdul, path, ext)
        gains.append(amp_gain(hdul[ext].header, path, ext))
        scalings.append(image_scaling(hdul, path, ext))
        if raws and raw.shape != raws[0].shape:
            raise InputError(
                path,
                f"extension {ext} has shape {raw.shape}, expected {raws[0].shape} "
                f"like {names[0]} (all amplifiers of a CCD have one shape)",
            )
        raws.append(raw)
    drows, dcols = geometry.data_size(raws[0].shape)
    if drows < 1 or dcols < 1:
        raise InputError(
            path,
            f"extension {names[0]} has shape {raws[0].shape}, too small: expected more than "
            f"{geometry.parallel_overscan} rows (parallel overscan) and more than "
            f"{geometry.prescan + geometry.serial_overscan} columns (prescan + serial overscan)",
        )
    return raws, gains, scalings


def ccd_hdu(
    ccd: str,
    image: np.ndarray,
    levels: list[float],
    noises: list[float] | None = None,
    flipped: bool = False,
) -> fits.ImageHDU:
    """``<CCD>_CCD`` extension: float32 electrons with BUNIT, FLIPUD, OSCANV1..n and
    OSCANN1..n."""
    hdu = fits.ImageHDU(data=image, name=f"{ccd}_CCD")
    hdu.header["BUNIT"] = ("electrons", "units of the image")
    hdu.header["FLIPUD"] = (flipped, "image flipped up-down after tiling")
    for number, level in enumerate(levels, start=1):
        hdu.header[f"OSCANV{number}"] = (level, f"overscan level of AMP{number} [electrons]")
    for number, noise in enumerate(noises or [], start=1):
        hdu.header[f"OSCANN{number}"] = (noise, f"overscan robust std of AMP{number} [e-]")
    return hdu


def copy_image_hdu(hdul: fits.HDUList, path: str | Path, ext: str) -> fits.ImageHDU:
    """A plain image extension with the data and header of ``ext`` (physical values
    unchanged: unsigned integers stay unsigned, scaled ones become float64)."""
    data = image_data(hdul, path, ext)
    if data is not None:
        data = physical(data, image_scaling(hdul, path, ext))
    header = hdul[ext].header.copy()
    for key in ("CHECKSUM", "DATASUM", "BSCALE", "BZERO", "BLANK", "ZBSCALE", "ZBZERO"):
        header.remove(key, ignore_missing=True)
    return fits.ImageHDU(data=data, header=header, name=ext)


def strip_error(l0_path: Path, ccd: str, number: int, ncols: int, geometry: AmpGeometry):
    """The :class:`InputError` for a NaN/Inf value in amplifier ``number``'s overscan strip,
    naming the stored columns (``ncols`` wide amplifier)."""
    cols = geometry.strip_columns(ncols)
    first, last = cols.start, cols.stop - 1
    if number in (2, 4):  # stored mirrored
        first, last = ncols - 1 - last, ncols - 1 - first
    return InputError(
        l0_path,
        f"extension {ccd}_AMP{number}: NaN/Inf (or BLANK) values in the serial-overscan "
        f"strip (stored columns {first}..{last}), expected finite values",
    )


def build_2d(
    hdul: fits.HDUList,
    l0_path: str | Path,
    geometry: AmpGeometry,
    adc_scale: float,
    threads: int = 1,
) -> tuple[fits.HDUList, dict]:
    """The 2D HDUList of an open L0 file (docs/reference.md §2), in memory, and a report.

    ``hdul`` comes from :func:`~kpfmasters.science.l0read.open_l0` (it must stay open while the
    result is used: the CA_HK copy may be memory-mapped). The list holds PRIMARY (the L0
    primary header plus GRNAMPS/REDAMPS, 0 for an absent CCD), ``GREEN_CCD``/``RED_CCD``
    (float32 electrons) for the CCDs that have amplifiers, ``CA_HK`` as is when present.
    Raises :class:`InputError` on bad input (including a file with no amplifier at all).

    Report keys: ``amps`` ({ccd: number of amplifiers, 0 when absent}), ``overscan``
    ({ccd: levels in electrons}), ``read_noise`` ({ccd: robust std of each overscan strip
    in electrons}), ``ca_hk`` (bool).
    """
    l0_path = Path(l0_path)
    report: dict = {"amps": {}, "overscan": {}, "read_noise": {}, "ca_hk": False}
    primary = hdul[0].header.copy()
    for key in ("CHECKSUM", "DATASUM"):
        primary.remove(key, ignore_missing=True)
    extensions = []
    for ccd in CCDS:
        amps = read_ccd(hdul, l0_path, ccd, geometry)
        namps = 0 if amps is None else len(amps[0])
        primary[AMPS_KEYWORD[ccd]] = (namps, f"number of {ccd} amplifiers")
        report["amps"][ccd], report["overscan"][ccd], report["read_noise"][ccd] = namps, [], []
        if amps is None:
            log.info("%s: no %s amplifier extensions; %s_CCD left out", l0_path, ccd, ccd)
            continue
        raws, gains, scalings = amps
        flip = geometry.flipped(ccd, namps)
        image, levels, noises = convert_ccd(
            raws, gains, geometry, adc_scale, threads, scalings, flip
        )
        for number, level in enumerate(levels, start=1):
            if not math.isfinite(level):
                raise strip_error(l0_path, ccd, number, raws[0].shape[1], geometry)
        report["overscan"][ccd], report["read_noise"][ccd] = levels, noises
        extensions.append(ccd_hdu(ccd, image, levels, noises, flip))
    if not extensions:
        raise InputError(
            l0_path,
            "no amplifier extension (GREEN_AMP1.., RED_AMP1..), expected at least one CCD",
        )
    if "CA_HK" in hdul and hdul["CA_HK"].is_image:
        extensions.append(copy_image_hdu(hdul, l0_path, "CA_HK"))
        report["ca_hk"] = True
    else:
        log.info("%s: no CA_HK image extension; left out", l0_path)
    return fits.HDUList([fits.PrimaryHDU(header=primary), *extensions]), report


def convert_l0(
    l0_path: str | Path,
    out_path: str | Path,
    geometry: AmpGeometry,
    adc_scale: float,
    threads: int = 1,
) -> dict:
    """Convert one L0 file into its 2D file (docs/reference.md §2); return a short report.

    :func:`build_2d` then an atomic write with CHECKSUM/DATASUM; on bad input an
    :class:`InputError` is raised and nothing is written. ``threads``: amplifiers converted
    concurrently (see :func:`convert_ccd`). The report is :func:`build_2d`'s plus
    ``output`` (path) and ``seconds`` (float, the whole conversion).
    """
    t0 = time.perf_counter()
    l0_path, out_path = Path(l0_path), Path(out_path)
    with open_l0(l0_path) as hdul:
        result, report = build_2d(hdul, l0_path, geometry, adc_scale, threads)
        write_fits(result, out_path)
    report["output"] = str(out_path)
    report["seconds"] = time.perf_counter() - t0
    return report


def describe(report: dict) -> str:
    """One log line for a :func:`convert_l0` report."""
    parts = []
    for ccd, namps in report["amps"].items():
        if namps:
            levels = ", ".join(f"{v:.2f}" for v in report["overscan"][ccd])
            noises = ", ".join(f"{v:.2f}" for v in report.get("read_noise", {}).get(ccd, []))
            parts.append(f"{ccd} {namps} amps (overscan {levels} e-, read noise {noises} e-)")
        else:
            parts.append(f"{ccd} absent")
    parts.append("CA_HK copied" if report["ca_hk"] else "no CA_HK")
    return f"wrote {report['output']} in {report['seconds']:.2f} s: " + "; ".join(parts)
