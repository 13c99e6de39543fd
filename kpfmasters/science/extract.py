"""Box extraction of order traces: 2D image -> one spectrum per trace (vectorised).

In column ``x`` a trace's aperture is ``[y_c(x) - BottomEdge, y_c(x) + TopEdge]``; row ``r``
covers ``[r - 0.5, r + 0.5]`` and gets the weight ``w_r``, the length of its overlap with
the aperture (0..1). ``FLUX = sum w_r D[r, x]`` and ``VAR = sum w_r**2 UNC[r, x]**2``. NaN
pixels (in D or UNC) and rows off the CCD are left out; a column that loses more than half
of its aperture weight so, or lies outside ``[X1, X2]``, is NaN.

The work is done for a few traces at a time on index arrays of shape (traces, rows, columns),
so memory stays near ``chunk * aperture rows * columns * 8`` bytes whatever the CCD.
"""

from __future__ import annotations

import numpy as np

from kpfmasters.science.traces import ORDERLETS, TraceSet, evaluate

CHUNK_TRACES = 8


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


def box_extract(
    traces: TraceSet,
    image: np.ndarray,
    unc: np.ndarray | None = None,
    chunk: int = CHUNK_TRACES,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Box-extract every trace of ``traces`` from ``image``.

    Parameters
    ----------
    traces : TraceSet
        Apertures (rows as functions of column, pixels).
    image : ndarray, shape (nrows, ncols)
        The 2D image D (any unit; float32 or float64).
    unc : ndarray, shape (nrows, ncols), optional
        Its 1-sigma uncertainty; when given, VAR is returned too.
    chunk : int
        Traces processed at a time (memory only; results do not depend on it).

    Returns
    -------
    flux : ndarray, shape (n_traces, ncols), float64
        ``sum w D``, in the image's unit; NaN where the column is not extracted.
    var : ndarray, shape (n_traces, ncols), float64, or None
        ``sum w**2 UNC**2``, in the unit squared.
    """
    nrows, ncols = image.shape
    n = len(traces)
    flux = np.full((n, ncols), np.nan)
    var = np.full((n, ncols), np.nan) if unc is not None else None
    flat_image = image.reshape(-1)
    flat_unc = unc.reshape(-1) if unc is not None else None
    cols = np.arange(ncols, dtype=np.int64)
    for start in range(0, n, chunk):
        sel = slice(start, min(start + chunk, n))
        centre = evaluate(traces.coeffs[sel], cols.astype(np.float64))
        rows, w = aperture_weights(centre, traces.bottom[sel], traces.top[sel])
        on = (rows >= 0) & (rows < nrows)
        index = np.clip(rows, 0, nrows - 1) * ncols + cols[None, None, :]
        d = flat_image.take(index).astype(np.float64, copy=False)
        good = on & np.isfinite(d)
        if flat_unc is not None:
            u = flat_unc.take(index).astype(np.float64, copy=False)
            good &= np.isfinite(u)
        wg = np.where(good, w, 0.0)
        total = w.sum(axis=1)
        kept = wg.sum(axis=1)
        f = (wg * np.where(good, d, 0.0)).sum(axis=1)
        ok = kept >= 0.5 * total
        ok &= (cols[None, :] >= traces.x1[sel, None]) & (cols[None, :] <= traces.x2[sel, None])
        flux[sel] = np.where(ok, f, np.nan)
        if var is not None:
            u = np.where(good, u, 0.0)
            v = (wg * wg * u * u).sum(axis=1)
            var[sel] = np.where(ok, v, np.nan)
    return flux, var


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
