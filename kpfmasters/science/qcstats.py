"""QC statistics written into each master when it is made, as ``QC*`` header keywords.

Each CCD extension of a master gets (see :func:`ccd_statistics` and :func:`qc_cards`):

``QCMEDIAN``  median of the image (finite pixels; the flat: its normalised pixels, UNC > 0)
``QCNOISE``   robust noise of the same pixels, 1.4826 * median absolute deviation
``QCNPIX``    number of pixels in those two statistics
``QCLOWCNT``  fraction of pixels with CNT below the master's ``flag_min_count``
``QCREJFRC``  fraction of rejected samples, 1 - sum(CNT) / (NFRAMES * npix). The 2D inputs
              have no NaN, so every missing sample is one the clip rejected; a NaN input
              sample (none in practice) would count as rejected too.
``QCOSVn``    overscan level of amplifier n (electrons): mean of the inputs' ``OSCANVn``
``QCRNn``     read noise of amplifier n (electrons): median of the inputs' ``OSCANNn``
``QCPREV``    file name of the previous master of the same type (also in PRIMARY): the
              nearest earlier night holding one, chosen by the plan and declared as an
              input of the master's job (:mod:`kpfmasters.plan.previous`)
``QCPMED``    that master's median of the same extension (its ``QCMEDIAN``)
``QCDMED``    QCMEDIAN - QCPMED
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters.core.instrument import CCD_EXTS

MAD_TO_SIGMA = 1.4826
MAX_AMPS = 4


def stats_pixels(mtype: str, data: np.ndarray, unc: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the pixels the median and noise are taken over.

    Finite pixels; for the flat only its normalised pixels (UNC > 0): elsewhere the flat is
    1.0 by definition (off the traces, below the low-light limit) and would hide the traces.

    Parameters
    ----------
    mtype : str
        Master type (``bias``, ``dark``, ``flat``, ``arclamp``).
    data : ndarray, shape (rows, cols)
        The master's image of one CCD.
    unc : ndarray, shape (rows, cols), or None
        Its uncertainty image (used for the flat only).

    Returns
    -------
    ndarray, bool, shape (rows, cols)
        True for the pixels counted.
    """
    good = np.isfinite(data)
    if mtype == "flat" and unc is not None:
        good &= unc > 0
    return good


def robust_median_noise(values: np.ndarray) -> tuple[float, float]:
    """Median and robust noise (1.4826 * median absolute deviation) of some values.

    Parameters
    ----------
    values : ndarray, shape (n,)
        The values (a float64 array is overwritten: the work is done in place).

    Returns
    -------
    median, noise : float
        In the values' units; (NaN, NaN) when ``values`` is empty.
    """
    if values.size == 0:
        return math.nan, math.nan
    values = np.asarray(values, dtype=np.float64)
    med = float(np.median(values, overwrite_input=True))
    np.subtract(values, med, out=values)
    np.abs(values, out=values)
    return med, float(MAD_TO_SIGMA * np.median(values, overwrite_input=True))


def overscan_summary(headers: list[fits.Header]) -> tuple[list[float], list[float]]:
    """Per amplifier: mean of the inputs' OSCANVn and median of their OSCANNn.

    Amplifier n is reported while every input header has the keyword; 2D files written before
    OSCANN existed give no read noise.

    Parameters
    ----------
    headers : list of astropy.io.fits.Header
        One CCD extension's header of each 2D input.

    Returns
    -------
    levels, noises : list of float
        Overscan level and read noise (electrons) of amplifiers 1, 2, ... (at most 4).
    """
    levels, noises = [], []
    if not headers:
        return levels, noises
    for n in range(1, MAX_AMPS + 1):
        vals = [h.get(f"OSCANV{n}") for h in headers]
        if any(v is None for v in vals):
            break
        levels.append(float(np.mean(vals)))
    for n in range(1, len(levels) + 1):
        vals = [h.get(f"OSCANN{n}") for h in headers]
        if any(v is None for v in vals):
            break
        noises.append(float(np.median(vals)))
    return levels, noises


def read_frame_headers(paths: list[str], ext: str) -> list[fits.Header]:
    """One extension's header of each 2D input (only headers are read).

    Parameters
    ----------
    paths : list of str
        The 2D files.
    ext : str
        The extension (``GREEN_CCD``, ``RED_CCD``, ``CA_HK``).

    Returns
    -------
    list of astropy.io.fits.Header
        Copies, in the order of ``paths``.
    """
    out = []
    for path in paths:
        with fits.open(path, lazy_load_hdus=True) as hdul:
            out.append(hdul[ext].header.copy())
    return out


def ccd_statistics(
    mtype: str,
    data: np.ndarray,
    unc: np.ndarray | None,
    cnt: np.ndarray,
    nframes: int,
    flag_min_count: int,
    frame_headers: list[fits.Header] | None = None,
    previous_median: float | None = None,
) -> dict:
    """QC statistics of one CCD of a master (see the module docstring for each).

    Parameters
    ----------
    mtype : str
        Master type (``bias``, ``dark``, ``flat``, ``arclamp``).
    data : ndarray, shape (rows, cols)
        The master's image (its BUNIT: electrons, electrons/sec, dimensionless; DN or DN/sec
        for CA_HK).
    unc : ndarray, shape (rows, cols), or None
        Its uncertainty image (selects the flat's normalised pixels).
    cnt : ndarray, int32, shape (rows, cols)
        Values kept per pixel by the clipped stack.
    nframes : int
        Frames stacked.
    flag_min_count : int
        CNT below it counts as low.
    frame_headers : list of astropy.io.fits.Header, optional
        The extension's header of each input (overscan keywords).
    previous_median : float, optional
        QCMEDIAN of the previous master (same units as ``data``).

    Returns
    -------
    dict
        ``median``, ``noise`` (image units), ``npix_stats``, ``low_count_fraction``,
        ``rejected_fraction``, ``overscan_level`` and ``read_noise`` (lists, electrons),
        ``previous_median`` and ``median_change`` (image units, or None).
    """
    good = stats_pixels(mtype, data, unc)
    median, noise = robust_median_noise(np.asarray(data)[good])
    npix = cnt.size
    levels, noises = overscan_summary(frame_headers or [])
    change = None
    if previous_median is not None and math.isfinite(previous_median) and math.isfinite(median):
        change = median - previous_median
    return {
        "median": median,
        "noise": noise,
        "npix_stats": int(np.count_nonzero(good)),
        "low_count_fraction": float(np.count_nonzero(cnt < flag_min_count) / npix),
        "rejected_fraction": float(1.0 - np.sum(cnt, dtype=np.int64) / (nframes * npix)),
        "overscan_level": levels,
        "read_noise": noises,
        "previous_median": previous_median,
        "median_change": change,
    }


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def qc_cards(stats: dict, previous: str | None = None) -> list[tuple[str, object, str]]:
    """Header cards of :func:`ccd_statistics`; non-finite values are left out.

    Parameters
    ----------
    stats : dict
        As returned by :func:`ccd_statistics`.
    previous : str, optional
        File name of the previous master; QCPREV, QCPMED and QCDMED only with it.

    Returns
    -------
    list of (str, object, str)
        (keyword, value, comment) in header order (FITS headers cannot hold NaN).
    """
    cards = []

    def add(key, value, comment):
        if _finite(value):
            cards.append((key, value, comment))

    add("QCMEDIAN", stats["median"], "QC median of the image")
    add("QCNOISE", stats["noise"], "QC robust noise, 1.4826*MAD")
    cards.append(("QCNPIX", stats["npix_stats"], "QC pixels in QCMEDIAN and QCNOISE"))
    add("QCLOWCNT", stats["low_count_fraction"], "QC fraction of pixels with low CNT")
    add("QCREJFRC", stats["rejected_fraction"], "QC 1-sum(CNT)/(NFRAMES*npix)")
    for n, level in enumerate(stats["overscan_level"], start=1):
        add(f"QCOSV{n}", level, f"QC mean overscan level AMP{n} [e-]")
    for n, noise in enumerate(stats["read_noise"], start=1):
        add(f"QCRN{n}", noise, f"QC median read noise AMP{n} [e-]")
    if previous:
        cards.append(("QCPREV", previous, "QC previous master compared"))
        add("QCPMED", stats["previous_median"], "QC median of the previous master")
        add("QCDMED", stats["median_change"], "QC QCMEDIAN - QCPMED")
    return cards


def master_medians(path: str | Path) -> dict[str, float]:
    """QCMEDIAN of each CCD extension of a master (computed when a file predates QC).

    Parameters
    ----------
    path : str or Path
        A master file.

    Returns
    -------
    dict of str to float
        Extension name -> median (image units), for the CCD extensions present.
    """
    out = {}
    with fits.open(path, memmap=True) as hdul:
        for ext in CCD_EXTS:
            if ext not in hdul:
                continue
            value = hdul[ext].header.get("QCMEDIAN")
            if value is None:
                mtype = str(hdul[0].header.get("IMTYPE", "")).lower()
                data = np.asarray(hdul[ext].data, dtype=np.float64)
                unc = hdul[f"{ext}_UNC"].data if f"{ext}_UNC" in hdul else None
                value, _ = robust_median_noise(data[stats_pixels(mtype, data, unc)])
            out[ext] = float(value)
    return out
