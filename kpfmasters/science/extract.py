"""Box extraction of order traces: 2D image -> one spectrum per trace (vectorised).

In column ``x`` a trace's aperture is ``[y_c(x) - BottomEdge, y_c(x) + TopEdge]``; row ``r``
covers ``[r - 0.5, r + 0.5]`` and gets the weight ``w_r``, the length of its overlap with
the aperture (0..1). ``FLUX = sum w_r D[r, x]`` and ``VAR = sum w_r**2 UNC[r, x]**2``. NaN
pixels (in D or UNC) and rows off the CCD are left out; a column that loses more than half
of its aperture weight so, or lies outside ``[X1, X2]``, is NaN.

:func:`box_extract` runs the definition as a compiled loop (numba, cached like the stack
kernel); :func:`aperture_weights` gives the same weights as arrays (for tests and figures).
"""

from __future__ import annotations

import numpy as np

from kpfmasters.science.stack_kernel import _jit
from kpfmasters.science.traces import ORDERLETS, TraceSet


def aperture_weights(
    centre: np.ndarray, bottom: np.ndarray, top: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and weights of the box apertures of a few traces.

    Parameters
    ----------
    centre : ndarray, shape (n, ncols)
        ``y_c(x)`` of each trace (rows).
    bottom, top : ndarray, shape (n,)
        ``BottomEdge``, ``TopEdge`` (pixels).

    Returns
    -------
    rows : ndarray of int64, shape (n, k, ncols)
        Row index of each aperture pixel (may lie off the CCD).
    weight : ndarray of float64, shape (n, k, ncols)
        Overlap of each row with the aperture, 0..1.
    """
    lo = centre - bottom[:, None]
    hi = centre + top[:, None]
    k = int(np.ceil(np.max(bottom + top))) + 2
    first = np.floor(lo + 0.5).astype(np.int64)
    rows = first[:, None, :] + np.arange(k, dtype=np.int64)[None, :, None]
    weight = np.minimum(hi[:, None, :], rows + 0.5) - np.maximum(lo[:, None, :], rows - 0.5)
    np.clip(weight, 0.0, 1.0, out=weight)
    return rows, weight


@_jit()
def _box_kernel(image, unc, coeffs, bottom, top, x1, x2, with_var, flux, var):  # pragma: no cover
    """The box definition, trace by trace, column by column, row by row (compiled)."""
    nrows, ncols = image.shape
    ncoef = coeffs.shape[1]
    for i in range(coeffs.shape[0]):
        for x in range(ncols):
            flux[i, x] = np.nan
            var[i, x] = np.nan
            if x < x1[i] or x > x2[i]:
                continue
            yc = 0.0
            for k in range(ncoef - 1, -1, -1):
                yc = yc * x + coeffs[i, k]
            lo = yc - bottom[i]
            hi = yc + top[i]
            f = 0.0
            v = 0.0
            lost = 0.0
            for r in range(int(np.floor(lo + 0.5)), int(np.floor(hi + 0.5)) + 1):
                w = min(hi, r + 0.5) - max(lo, r - 0.5)
                if w <= 0.0:
                    continue
                if w > 1.0:
                    w = 1.0
                if r < 0 or r >= nrows:
                    lost += w
                    continue
                d = image[r, x]
                u = unc[r, x] if with_var else 0.0
                if not (np.isfinite(d) and np.isfinite(u)):
                    lost += w
                    continue
                f += w * d
                v += w * w * u * u
            if lost <= 0.5 * (hi - lo):
                flux[i, x] = f
                var[i, x] = v


def box_extract(
    traces: TraceSet, image: np.ndarray, unc: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Box-extract every trace of ``traces`` from ``image`` (module docstring).

    Parameters
    ----------
    traces : TraceSet
        Apertures (rows as functions of column, pixels).
    image : ndarray, shape (nrows, ncols)
        The 2D image D (any unit; any float dtype or byte order).
    unc : ndarray, shape (nrows, ncols), optional
        Its 1-sigma uncertainty; when given, VAR is returned too.

    Returns
    -------
    flux : ndarray, shape (n_traces, ncols), float64
        ``sum w D``, in the image's unit; NaN where the column is not extracted.
    var : ndarray, shape (n_traces, ncols), float64, or None
        ``sum w**2 UNC**2``, in the unit squared.

    A compiled loop (numba) over traces, columns and the rows of each aperture: about 16
    million pixel visits for a full-size KPF CCD, with no temporary arrays.
    """
    image = _native(image)
    with_var = unc is not None
    unc = _native(unc) if with_var else np.zeros((1, 1), dtype=np.float32)
    if with_var and unc.shape != image.shape:
        raise ValueError(f"UNC shape {unc.shape} differs from the image's {image.shape}")
    n, ncols = len(traces), image.shape[1]
    flux = np.empty((n, ncols))
    var = np.empty((n, ncols))
    if n:
        _box_kernel(
            image,
            unc,
            np.ascontiguousarray(traces.coeffs, dtype=np.float64),
            np.ascontiguousarray(traces.bottom, dtype=np.float64),
            np.ascontiguousarray(traces.top, dtype=np.float64),
            np.ascontiguousarray(traces.x1, dtype=np.int64),
            np.ascontiguousarray(traces.x2, dtype=np.int64),
            with_var,
            flux,
            var,
        )
    return flux, (var if with_var else None)


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (FITS data are big-endian), float32 or float64."""
    array = np.asarray(array)
    if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
        return np.ascontiguousarray(array, dtype=np.float64)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def to_orders(traces: TraceSet, per_trace: np.ndarray, n_orders: int | None = None):
    """Rearrange per-trace spectra into one (orders, columns) image per orderlet.

    Parameters
    ----------
    traces : TraceSet
    per_trace : ndarray, shape (n_traces, ncols)
    n_orders : int, optional
        Rows of each image (default: the trace set's number of orders).

    Returns
    -------
    dict
        Orderlet name (``SKY``, ``SCI1``, ``SCI2``, ``SCI3``, ``CAL``) -> float64 array of
        shape (n_orders, ncols); row i is order i; NaN where the order has no such trace.
    """
    n_orders = traces.n_orders if n_orders is None else n_orders
    ncols = per_trace.shape[1]
    out = {name: np.full((n_orders, ncols), np.nan) for name in ORDERLETS}
    for i, (fiber, order) in enumerate(zip(traces.fiber, traces.order, strict=True)):
        if order < n_orders:
            out[fiber][order] = per_trace[i]
    return out
