"""Reference implementations written plainly, for the tests to check the fast code against."""

from __future__ import annotations

import warnings

import numpy as np

from kpfmasters.science.stack import StackResult, clip_correction


def reference_stack(cube: np.ndarray, nsigma: float) -> StackResult:
    """The clipped stack written plainly with NumPy, for testing the kernel against.

    ``cube`` (N, rows, cols), any real dtype (converted to float64); returns the same fields
    as :func:`stack_cube` with ``limits=True``. Slow (np.nanpercentile loops in Python over
    pixels): for small arrays only.
    """
    x = np.asarray(cube, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"cube must have shape (N >= 1, rows, cols), got {x.shape}")
    cf = clip_correction(nsigma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels give NaN
        m = np.nanmedian(x, axis=0)
        p16, p84 = np.nanpercentile(x, [16, 84], axis=0)
    s = 0.5 * (p84 - p16)
    low = m - nsigma * s
    high = m + nsigma * s
    keep = (x >= low) & (x <= high)  # NaN compares false: missing values are never kept
    cnt = keep.sum(axis=0).astype(np.int32)
    kept = np.ma.masked_array(x, mask=~keep)
    avg = np.ma.filled(kept.mean(axis=0), np.nan)
    var = np.ma.filled(kept.var(axis=0, ddof=0), np.nan)  # two-pass in numpy.ma
    with np.errstate(invalid="ignore", divide="ignore"):
        unc = np.sqrt(cf * var / cnt).astype(np.float32)
    avg = np.where(cnt > 0, avg, np.nan)
    unc = np.where(cnt > 0, unc, np.float32(np.nan)).astype(np.float32)
    nrej = int(np.count_nonzero(~np.isnan(x)) - cnt.sum(dtype=np.int64))
    return StackResult(np.asarray(avg, dtype=np.float64), unc, cnt, nrej, low, high)
