"""Master flat after stacking: lamp-pattern removal and per-orderlet normalisation.

The rules, per CCD (docs/reference.md, 'The master flat: normalisation'):

1. L = the stack blurred with a 2-D Gaussian (``scipy.ndimage.gaussian_filter``, sigma 2.0,
   mode ``reflect``, truncate 4.0; NaN stack pixels count as 0); U = stack / L.
2. The order mask gives each pixel its orderlet: 0 off-trace, 1..5 SKY, SCI1, SCI2, SCI3, CAL.
   No mask (CA_HK always) means one orderlet covering the whole CCD.
3. n_v = the mode of rint(100 U) / 100 over the pixels of orderlet v whose stack is at least
   the low-light limit (ties go to the smaller value); flat = U / n_v there.
4. flat = 1 off-trace, where the stack is below the low-light limit or NaN; UNC = unc / L / n_v,
   and 0 wherever the flat was set to 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.ndimage import gaussian_filter

from kpfmasters.core.errors import InputError
from kpfmasters.io.fits import check_complete

MAX_ORDERLET = 5
MAX_LABEL = 255  # largest orderlet value normalize_flat accepts
# Largest key range (in units of 0.01) counted with one bincount; wider ranges use np.unique.
BINCOUNT_SPAN = 1 << 22


@dataclass
class FlatResult:
    """Normalised flat of one CCD; every image has the stack's shape (rows, cols).

    Attributes
    ----------
    flat : ndarray, float64, shape (rows, cols)
        The normalised flat (dimensionless); 1 where it was not normalised.
    unc : ndarray, float32, shape (rows, cols)
        Its uncertainty (dimensionless); 0 where the flat was set to 1.
    lamp : ndarray, float64, shape (rows, cols)
        The smoothed stack L (stack units: e-/s, DN/s for CA_HK).
    norms : dict of int to float
        Orderlet value -> n_v (dimensionless).
    problems : list of str
        Lines for the log (e.g. an orderlet without any usable pixel).
    """

    flat: np.ndarray
    unc: np.ndarray
    lamp: np.ndarray
    norms: dict[int, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def smooth_lamp(stack: np.ndarray, sigma: float) -> np.ndarray:
    """L: the stack with non-finite pixels set to 0, Gaussian-blurred.

    ``gaussian_filter`` with mode ``reflect`` and truncate 4.0 (scipy's defaults).

    Parameters
    ----------
    stack : ndarray, shape (rows, cols)
        The stacked flat (e-/s; DN/s for CA_HK); may hold NaN.
    sigma : float
        Standard deviation of the Gaussian, in pixels.

    Returns
    -------
    ndarray, float64, shape (rows, cols)
        L, in the stack's units.
    """
    filled = np.where(np.isfinite(stack), stack, 0.0).astype(np.float64, copy=False)
    return gaussian_filter(filled, sigma=sigma, mode="reflect", truncate=4.0)


def key_mode(keys: np.ndarray) -> float:
    """Most frequent value of ``keys``; ties go to the smaller.

    One bincount over the key range when it is at most :data:`BINCOUNT_SPAN` wide (the usual
    case), else a sort (``np.unique``).

    Parameters
    ----------
    keys : ndarray, float64, shape (n,), n >= 1
        Finite, integral values.

    Returns
    -------
    float
        The mode.
    """
    low, high = keys.min(), keys.max()
    if high - low < BINCOUNT_SPAN:
        counts = np.bincount((keys - low).astype(np.int64))
        return float(low + np.argmax(counts))  # argmax: first maximum = smallest key
    uniq, counts = np.unique(keys, return_counts=True)
    return float(uniq[np.argmax(counts)])


def rounded_mode(values: np.ndarray) -> float:
    """Mode of ``rint(100 * values) / 100``; ties go to the smaller.

    Parameters
    ----------
    values : array_like, shape (n,), n >= 1
        Finite values (converted to float64).

    Returns
    -------
    float
        The mode of the values rounded to 0.01.
    """
    return key_mode(np.rint(100.0 * np.asarray(values, dtype=np.float64))) / 100.0


def orderlet_values(mask: np.ndarray) -> list[int]:
    """Orderlet values present in an order mask, ascending.

    Parameters
    ----------
    mask : ndarray, integer, shape (rows, cols)
        Orderlet of each pixel (0 off-trace).

    Returns
    -------
    list of int
        The values 1..255 that occur.

    Raises
    ------
    ValueError
        When a value is above 255.
    """
    high = int(mask.max()) if mask.size else 0
    if high > MAX_LABEL:
        raise ValueError(f"mask value {high} is above {MAX_LABEL}; orderlets are 1..5")
    return [v for v in range(1, high + 1) if np.any(mask == v)]


def orderlet_modes(labels: np.ndarray, keys: np.ndarray, values: list[int]) -> dict[int, float]:
    """n_v = mode of ``keys`` / 100 over ``labels == v``, for each orderlet v.

    With a narrow key range, one bincount over (label, key) pairs does every orderlet at
    once; otherwise each orderlet is counted on its own. Ties go to the smaller key.

    Parameters
    ----------
    labels : ndarray, integer, shape (n,)
        Orderlet of each usable pixel (1..255).
    keys : ndarray, float64, shape (n,)
        ``rint(100 U)`` of the same pixels (integral values).
    values : list of int
        The orderlets wanted.

    Returns
    -------
    dict of int to float
        n_v (dimensionless) for each v of ``values`` that has at least one pixel.
    """
    if keys.size == 0:
        return {}
    low, high = keys.min(), keys.max()
    rows = max(values) + 1
    if (high - low + 1) * rows <= BINCOUNT_SPAN:
        span = int(high - low) + 1
        pairs = labels.astype(np.int64) * span + (keys - low).astype(np.int64)
        counts = np.bincount(pairs, minlength=rows * span).reshape(rows, span)
        return {
            v: float(low + np.argmax(counts[v])) / 100.0  # first maximum = smallest key
            for v in values
            if counts[v].any()
        }
    modes = {}
    for v in values:
        chosen = keys[labels == v]
        if chosen.size:
            modes[v] = key_mode(chosen) / 100.0
    return modes


def normalize_flat(
    stack: np.ndarray,
    unc: np.ndarray,
    mask: np.ndarray | None,
    *,
    smooth_sigma: float,
    low_light_limit: float,
) -> FlatResult:
    """Normalise a stacked flat; see the module docstring for the rules.

    A pixel whose U is not finite (L <= 0 next to negative pixels) also gets flat 1, UNC 0.
    The usable pixels are gathered once into 1-D arrays, and all orderlets counted together.

    Parameters
    ----------
    stack : ndarray, float64, shape (rows, cols)
        The stacked flat (e-/s; DN/s for CA_HK); may hold NaN (treated like any non-finite
        value).
    unc : ndarray, shape (rows, cols)
        Its uncertainty (same units).
    mask : ndarray, integer, shape (rows, cols), or None
        Orderlet image (values 0..255; below 1 is off-trace), or None for one orderlet over
        the whole CCD.
    smooth_sigma : float
        Sigma of the Gaussian that makes L (pixels).
    low_light_limit : float
        Stack pixels below it (stack units) are not normalised (flat 1).

    Returns
    -------
    FlatResult
        The flat and its UNC (dimensionless), L, the n_v and the problems for the log.

    Raises
    ------
    ValueError
        When the shapes differ, or a mask value is above 255.
    """
    stack = np.asarray(stack, dtype=np.float64)
    unc = np.asarray(unc)
    if stack.ndim != 2 or unc.shape != stack.shape:
        raise ValueError(f"stack {stack.shape} and unc {unc.shape} must be one 2-D shape")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != stack.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the stack's {stack.shape}")
    lamp = smooth_lamp(stack, smooth_sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = stack / lamp
    usable = stack >= low_light_limit  # False for NaN
    usable &= np.isfinite(ratio)
    if mask is None:
        values = [1]
        labels = np.ones(np.count_nonzero(usable), dtype=np.uint8)
    else:
        values = orderlet_values(mask)
        usable &= mask >= 1
        labels = mask[usable].astype(np.uint8)
    u = ratio[usable]
    del ratio  # full-frame temporaries go as soon as they are used: a 4080^2 CCD is 133 MB
    result = FlatResult(
        flat=np.ones(stack.shape, dtype=np.float64),
        unc=np.zeros(stack.shape, dtype=np.float32),
        lamp=lamp,
    )
    modes = orderlet_modes(labels, np.rint(100.0 * u), values)
    table = np.full(MAX_LABEL + 1, np.nan)  # n_v by orderlet value; NaN: flat stays 1
    for value in values:
        norm = modes.get(value)
        if norm is None:
            result.problems.append(
                f"orderlet {value}: no pixel with stack >= {low_light_limit:g}; flat set to 1"
            )
        elif norm == 0.0:
            result.problems.append(f"orderlet {value}: mode of U is 0; flat set to 1")
        else:
            result.norms[value] = table[value] = norm
    scale = table[labels]
    done = np.isfinite(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        u /= scale  # in place: the same arithmetic as u / scale, without the copies
        u[~done] = 1.0
        result.flat[usable] = u
        del u
        scaled_unc = unc[usable].astype(np.float64)
        scaled_unc /= lamp[usable]
        scaled_unc /= scale
        scaled_unc[~done] = 0.0
        result.unc[usable] = scaled_unc
    return result


def load_order_mask(path: str | Path, extname: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Orderlet image of one CCD from the order-mask FITS file.

    A file cut short or with a damaged header is refused as a whole (never read as "no
    extension").

    Parameters
    ----------
    path : str or Path
        The order-mask FITS file (configuration key ``order_mask``).
    extname : str
        The CCD's extension (``GREEN_CCD``, ``RED_CCD``).
    shape : tuple of int
        The CCD's (rows, cols), in pixels.

    Returns
    -------
    ndarray, int8, shape ``shape``, or None
        Orderlet of each pixel (0 off-trace, 1..5 SKY, SCI1, SCI2, SCI3, CAL); None when the
        file has no such extension (CA_HK never has one).

    Raises
    ------
    InputError
        Naming the file and extension when the file cannot be read, the extension has no
        image, the shape differs, or the values are not integers in 0..5.
    """
    path = Path(path)
    try:
        check_complete(path)
    except InputError as exc:
        raise InputError(
            path, f"order mask extension {extname} cannot be read, the file {exc.problem}"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                if extname not in hdul:
                    return None
                hdu = hdul[extname]
                data = hdu.data if hdu.is_image else None
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise InputError(
            path, f"order mask extension {extname} cannot be read ({exc}), expected a FITS image"
        ) from exc
    if data is None:
        raise InputError(path, f"order mask extension {extname} has no image data")
    if data.shape != tuple(shape):
        raise InputError(
            path,
            f"order mask extension {extname} has shape {data.shape}, expected {tuple(shape)}",
        )
    if data.dtype.kind == "f":
        integral = np.isfinite(data) & (data == np.round(data))
        if not integral.all():
            raise InputError(
                path,
                f"order mask extension {extname} has {int(data.size - integral.sum())} "
                "values that are not integers, expected orderlet values 0..5",
            )
    elif data.dtype.kind not in "iub":
        raise InputError(
            path, f"order mask extension {extname} has type {data.dtype}, expected integers"
        )
    low, high = float(data.min()), float(data.max())
    if low < 0 or high > MAX_ORDERLET:
        raise InputError(
            path,
            f"order mask extension {extname} has values {low:g}..{high:g}, expected 0..5",
        )
    return data.astype(np.int8)
