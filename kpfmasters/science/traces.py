"""Order traces from a master flat and the order mask, and KPF's trace CSV format.

A trace is one connected region of one orderlet value of the order mask (1..5 = SKY, SCI1,
SCI2, SCI3, CAL). Its centre ``y_c(x)`` (row, 0-based, as a function of the 0-based column
``x``) is a power-series polynomial fitted to the flux-weighted centroid of the flat's lamp
stack in each column. Traces are numbered from the bottom of the CCD up and grouped into
orders bottom to top: an order holds at most one trace of each orderlet, in the sequence
SKY, SCI1, SCI2, SCI3, CAL, and a trace whose orderlet does not come later in that sequence
than the previous trace's starts the next order.

The CSV is KPF's (``,Coeff0,...,Coeff3,BottomEdge,TopEdge,X1,X2``) plus kpf-next's
``Fiber`` and ``Order`` columns; ``Order`` counts from 0 here.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from kpfmasters.core.errors import InputError
from kpfmasters.science.stack_kernel import _jit

log = logging.getLogger(__name__)

ORDERLETS = ("SKY", "SCI1", "SCI2", "SCI3", "CAL")
EDGE_COLUMNS = ("BottomEdge", "TopEdge", "X1", "X2", "Fiber", "Order")


@dataclass
class TraceSet:
    """The traces of one CCD, bottom to top.

    Attributes
    ----------
    coeffs : ndarray, shape (n_traces, degree + 1), float64
        Power-series coefficients of ``y_c(x)`` (rows; ``x`` in columns, 0-based).
    bottom, top : ndarray, shape (n_traces,), float64
        ``BottomEdge`` and ``TopEdge``: aperture extent below and above the centre (pixels).
    x1, x2 : ndarray, shape (n_traces,), int64
        First and last column of the trace.
    fiber : list of str
        Orderlet name of each trace (``SKY``, ``SCI1``, ``SCI2``, ``SCI3``, ``CAL``).
    order : ndarray, shape (n_traces,), int64
        Order index, 0 = the bottom order of the CCD.
    rms : ndarray, shape (n_traces,), float64
        RMS of the used centroids about the fit (pixels); NaN when read from a CSV.
    """

    coeffs: np.ndarray
    bottom: np.ndarray
    top: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    fiber: list[str]
    order: np.ndarray
    rms: np.ndarray = field(default=None)

    def __post_init__(self):
        self.coeffs = np.atleast_2d(np.asarray(self.coeffs, dtype=np.float64))
        self.bottom = np.asarray(self.bottom, dtype=np.float64)
        self.top = np.asarray(self.top, dtype=np.float64)
        self.x1 = np.asarray(self.x1, dtype=np.int64)
        self.x2 = np.asarray(self.x2, dtype=np.int64)
        self.order = np.asarray(self.order, dtype=np.int64)
        self.fiber = [str(f) for f in self.fiber]
        if self.rms is None:
            self.rms = np.full(len(self.fiber), np.nan)

    def __len__(self) -> int:
        return len(self.fiber)

    @property
    def n_orders(self) -> int:
        """Number of orders (rows of an L1 image): the largest order index + 1."""
        return int(self.order.max()) + 1 if len(self) else 0

    def centres(self, ncols: int) -> np.ndarray:
        """``y_c(x)`` of every trace at columns ``0..ncols-1``, shape (n_traces, ncols)."""
        return evaluate(self.coeffs, np.arange(ncols, dtype=np.float64))

    def find(self, fiber: str, order: int) -> int | None:
        """Index of the trace of ``fiber`` in ``order``, None when there is none."""
        for i, (f, o) in enumerate(zip(self.fiber, self.order, strict=True)):
            if f == fiber and o == order:
                return i
        return None


def evaluate(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Power series ``sum_k coeffs[:, k] * x**k`` for every row of ``coeffs``.

    Parameters
    ----------
    coeffs : ndarray, shape (n, degree + 1)
    x : ndarray, shape (m,)

    Returns
    -------
    ndarray, shape (n, m), float64
    """
    coeffs = np.atleast_2d(coeffs)
    out = np.zeros((coeffs.shape[0], x.size), dtype=np.float64)
    for k in range(coeffs.shape[1] - 1, -1, -1):  # Horner
        out *= x[None, :]
        out += coeffs[:, k : k + 1]
    return out


def assign_orders(fiber_index: np.ndarray) -> np.ndarray:
    """Order index of each trace from its orderlet index (0..4), traces bottom to top.

    A trace whose orderlet index is not greater than the previous trace's starts a new order.

    Parameters
    ----------
    fiber_index : ndarray of int, shape (n_traces,)

    Returns
    -------
    ndarray of int64, shape (n_traces,); the first trace is in order 0.
    """
    order = np.zeros(len(fiber_index), dtype=np.int64)
    current, previous = 0, -1
    for i, f in enumerate(fiber_index):
        if f <= previous:
            current += 1
        order[i] = current
        previous = f
    return order


def column_centroids(
    stack: np.ndarray, region: np.ndarray, row0: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flux-weighted centroid per column of one region.

    Parameters
    ----------
    stack : ndarray, shape (h, w)
        Lamp image (e-/s) cut to the region's bounding box; NaN pixels count as 0 and
        negative values are clipped at 0.
    region : ndarray of bool, shape (h, w)
        The region's pixels in the bounding box.
    row0 : int
        CCD row of the bounding box's first row.

    Returns
    -------
    centroid : ndarray, shape (w,)
        Centroid (CCD row) per column, NaN where the column has no flux.
    flux : ndarray, shape (w,)
        Summed flux per column.
    lowest, highest : ndarray of int64, shape (w,)
        Lowest and highest CCD row of the region per column (-1 where it has none).
    """
    values = np.where(region & np.isfinite(stack), np.maximum(stack, 0.0), 0.0)
    rows = np.arange(region.shape[0], dtype=np.float64)[:, None] + row0
    flux = values.sum(axis=0, dtype=np.float64)
    moment = (values * rows).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = np.where(flux > 0, moment / flux, np.nan)
    has = region.any(axis=0)
    lowest = np.where(has, region.argmax(axis=0) + row0, -1)
    highest = np.where(has, region.shape[0] - 1 - region[::-1].argmax(axis=0) + row0, -1)
    return centroid, flux, lowest.astype(np.int64), highest.astype(np.int64)


def window_centroids(stack: np.ndarray, centre: np.ndarray, half: float) -> np.ndarray:
    """Centroid per column in the window ``[centre - half, centre + half]`` (fractional edge
    weights, as the box aperture), shape (ncols,); NaN where the window leaves the image or
    holds a NaN pixel or no flux.

    Parameters
    ----------
    stack : ndarray, shape (nrows, ncols), e-/s (native byte order)
    centre : ndarray, shape (ncols,), rows
    half : float, pixels
    """
    out = np.empty(stack.shape[1])
    _window_kernel(stack, np.ascontiguousarray(centre, dtype=np.float64), float(half), out)
    return out


@_jit()
def _window_kernel(stack, centre, half, out):  # pragma: no cover - compiled
    nrows, ncols = stack.shape
    for x in range(ncols):
        lo = centre[x] - half
        hi = centre[x] + half
        flux = 0.0
        moment = 0.0
        bad = False
        for r in range(int(np.floor(lo + 0.5)), int(np.floor(hi + 0.5)) + 1):
            w = min(hi, r + 0.5) - max(lo, r - 0.5)
            if w <= 0.0:
                continue
            if w > 1.0:
                w = 1.0
            if r < 0 or r >= nrows or not np.isfinite(stack[r, x]):
                bad = True
                break
            flux += w * stack[r, x]
            moment += w * stack[r, x] * r
        out[x] = moment / flux if (not bad and flux > 0.0) else np.nan


def scaled_to_power(coeffs: np.ndarray, centre: float, scale: float) -> np.ndarray:
    """Power-series coefficients in ``x`` of ``sum_k coeffs[k] * ((x - centre) / scale)**k``."""
    out = np.zeros(coeffs.size)
    for k, c in enumerate(coeffs):
        # ((x - centre) / scale)**k = sum_j binom(k, j) x**j (-centre)**(k - j) / scale**k
        for j in range(k + 1):
            out[j] += c * math.comb(k, j) * (-centre) ** (k - j) / scale**k
    return out


def scaled_basis(x: np.ndarray, degree: int) -> tuple[float, float, np.ndarray]:
    """``(mid, half, V)``: ``u = (x - mid) / half`` spans [-1, 1]; ``V[:, k] = u**k``."""
    mid = 0.5 * (x.min() + x.max())
    half = max(0.5 * (x.max() - x.min()), 1.0)
    return mid, half, np.vander((x - mid) / half, degree + 1, increasing=True)


def fit_centre(
    x: np.ndarray,
    y: np.ndarray,
    degree: int,
    nsigma: float,
    iterations: int,
    basis: tuple[float, float, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial ``y(x)`` of ``degree`` with iterative clipping of outlying points.

    Least squares in the scaled variable ``u = (x - mid) / half`` (well conditioned), then
    re-expressed as a power series in ``x``. Points further than ``nsigma`` robust sigmas
    (1.4826 * MAD of the residuals) from the fit are left out, for at most ``iterations``
    refits. ``basis`` is :func:`scaled_basis` of ``x`` when the caller already has it.

    Returns
    -------
    coeffs : ndarray, shape (degree + 1,)
        Power-series coefficients, constant first (``x`` in the units given).
    used : ndarray of bool, shape x.shape
    """
    finite = np.isfinite(y)
    used = finite.copy()
    mid, half, vander = basis if basis is not None else scaled_basis(x, degree)
    model = np.zeros_like(y)
    sol = np.zeros(degree + 1)
    for _ in range(iterations + 1):
        if used.sum() <= degree:
            raise ValueError(f"{used.sum()} usable columns, need more than {degree}")
        sol = np.linalg.lstsq(vander[used], y[used], rcond=None)[0]
        model = vander @ sol
        resid = y - model
        sigma = 1.4826 * np.median(np.abs(resid[used]))
        keep = finite & (np.abs(resid) <= nsigma * max(sigma, 1e-6))
        if np.array_equal(keep, used):
            break
        used = keep
    return scaled_to_power(sol, mid, half), used


def find_traces(
    stack: np.ndarray,
    mask: np.ndarray,
    *,
    degree: int = 3,
    nsigma: float = 4.0,
    iterations: int = 3,
    min_columns_fraction: float = 0.5,
    refine: int = 3,
    margin: float = 1.0,
    name: str = "",
) -> TraceSet:
    """Traces of one CCD from its lamp stack and order mask.

    Parameters
    ----------
    stack : ndarray, shape (nrows, ncols)
        The master flat's ``<CCD>_STACK`` (e-/s).
    mask : ndarray of int, shape (nrows, ncols)
        Order mask: 0 off-trace, 1..5 = SKY, SCI1, SCI2, SCI3, CAL.
    degree : int
        Degree of the centre polynomial.
    nsigma, iterations : float, int
        Clipping of outlying columns in the fit (robust sigmas, refits).
    min_columns_fraction : float
        A region spanning fewer columns than this fraction of the CCD width (an order cut
        by the CCD edge) is left out, with a log line.
    refine : int
        After the fit to the centroids across the region, this many refits to centroids in a
        window of the region's median height, centred on the previous fit (fractional edge
        weights): a centroid in a symmetric window is not pulled by where the mask's pixel
        edges fall.
    margin : float
        The refinement window reaches this many pixels beyond half the region's median
        height on each side (so the whole cross-profile, edges included, is in it).
    name : str
        CCD name for log lines.

    Returns
    -------
    TraceSet
        Bottom to top (by the fitted centre at the middle column). Columns where the region
        touches the bottom or top row of the CCD do not enter the fit; ``X1``/``X2`` are the
        region's first and last column; ``BottomEdge``/``TopEdge`` are the medians over its
        columns of ``y_c(x) - (lowest row - 0.5)`` and ``(highest row + 0.5) - y_c(x)``.
    """
    if stack.shape != mask.shape:
        raise ValueError(f"{name}: stack {stack.shape} and order mask {mask.shape} differ")
    stack = np.ascontiguousarray(stack, dtype=np.float32 if stack.dtype.itemsize <= 4 else None)
    if stack.dtype.byteorder not in ("=", "|"):
        stack = stack.astype(stack.dtype.newbyteorder("="))
    nrows, ncols = stack.shape
    xs = np.arange(ncols, dtype=np.float64)
    basis = scaled_basis(xs, degree)
    found = []
    for value in range(1, 6):
        labels, n = ndimage.label(mask == value)
        if n == 0:
            continue
        slices = ndimage.find_objects(labels)
        for lab, (rs, cs) in enumerate(slices, start=1):
            sub = labels[rs, cs] == lab
            x1, x2 = cs.start + int(sub.any(axis=0).argmax()), cs.stop - 1
            x2 -= int(sub.any(axis=0)[::-1].argmax())
            where = f"{name} {ORDERLETS[value - 1]} region at rows {rs.start}-{rs.stop - 1}"
            if x2 - x1 + 1 < min_columns_fraction * ncols:
                log.info(
                    "%s: left out, spans columns %d-%d (fewer than %.0f%% of %d)",
                    where,
                    x1,
                    x2,
                    100 * min_columns_fraction,
                    ncols,
                )
                continue
            cen = np.full(ncols, np.nan)
            lowest = np.full(ncols, -1, dtype=np.int64)
            highest = np.full(ncols, -1, dtype=np.int64)
            c, _, lo, hi = column_centroids(stack[rs, cs], sub, rs.start)
            cen[cs], lowest[cs], highest[cs] = c, lo, hi
            edge = (lowest == 0) | (highest == nrows - 1)
            cen[edge] = np.nan
            try:
                coeffs, used = fit_centre(xs, cen, degree, nsigma, iterations, basis)
                height = np.median((highest - lowest + 1)[highest >= 0])
                for _ in range(refine):
                    guess = np.polynomial.polynomial.polyval(xs, coeffs)
                    win = window_centroids(stack, guess, height / 2 + margin)
                    win[(xs < x1) | (xs > x2) | edge] = np.nan
                    coeffs, used = fit_centre(xs, win, degree, nsigma, iterations, basis)
                    cen = win
            except ValueError as exc:
                log.warning("%s: left out, no centre fit (%s)", where, exc)
                continue
            yc = np.polynomial.polynomial.polyval(xs, coeffs)
            has = highest >= 0
            bottom = float(np.median(yc[has] - (lowest[has] - 0.5)))
            top = float(np.median((highest[has] + 0.5) - yc[has]))
            rms = float(np.sqrt(np.mean((cen[used] - yc[used]) ** 2)))
            key = float(yc[ncols // 2])
            found.append((key, value - 1, coeffs, max(bottom, 0.0), max(top, 0.0), x1, x2, rms))
    found.sort(key=lambda t: t[0])
    fiber_index = np.array([t[1] for t in found], dtype=np.int64)
    return TraceSet(
        coeffs=np.array([t[2] for t in found]).reshape(len(found), degree + 1),
        bottom=[t[3] for t in found],
        top=[t[4] for t in found],
        x1=[t[5] for t in found],
        x2=[t[6] for t in found],
        fiber=[ORDERLETS[i] for i in fiber_index],
        order=assign_orders(fiber_index),
        rms=[t[7] for t in found],
    )


# --------------------------------------------------------------------------- CSV


def csv_header(degree: int) -> list[str]:
    """Column names of the trace CSV: ``''``, ``Coeff0..Coeff<degree>``, then the edges."""
    return ["", *[f"Coeff{k}" for k in range(degree + 1)], *EDGE_COLUMNS]


def csv_text(traces: TraceSet) -> str:
    """The trace CSV as text, one row per trace bottom to top (floats as ``repr``)."""
    degree = traces.coeffs.shape[1] - 1
    lines = [",".join(csv_header(degree))]
    for i in range(len(traces)):
        cells = [str(i), *[repr(float(c)) for c in traces.coeffs[i]]]
        cells += [repr(float(traces.bottom[i])), repr(float(traces.top[i]))]
        cells += [str(int(traces.x1[i])), str(int(traces.x2[i]))]
        cells += [traces.fiber[i], str(int(traces.order[i]))]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def write_traces(traces: TraceSet, path: str | Path) -> Path:
    """Write the trace CSV atomically (temporary name, then rename)."""
    from kpfmasters.io.fits import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(csv_text(traces))
    return Path(path)


def read_traces(path: str | Path, order_base: int = 0) -> TraceSet:
    """Read a trace CSV (KPF's columns, ``Fiber`` and ``Order`` required).

    ``order_base`` is the index of the bottom order in the file (1 for kpf-next's files);
    the returned ``order`` counts from 0. :class:`InputError` names the file, the row and
    the column at fault.
    """
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    if not rows:
        raise InputError(path, "is empty, expected a trace CSV with a header row")
    header = [h.strip() for h in rows[0]]
    ncoef = sum(1 for h in header if h.startswith("Coeff"))
    expected = csv_header(ncoef - 1)
    if ncoef < 1 or header != expected:
        raise InputError(path, f"header is {','.join(header)!r}, expected {','.join(expected)!r}")
    coeffs, bottom, top, x1, x2, fiber, order = [], [], [], [], [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(path, f"line {lineno} has {len(row)} cells, expected {len(header)}")
        cells = dict(zip(header, row, strict=True))
        try:
            coeffs.append([float(cells[f"Coeff{k}"]) for k in range(ncoef)])
            bottom.append(float(cells["BottomEdge"]))
            top.append(float(cells["TopEdge"]))
            x1.append(int(float(cells["X1"])))
            x2.append(int(float(cells["X2"])))
            order.append(int(cells["Order"]) - order_base)
        except ValueError as exc:
            raise InputError(path, f"line {lineno}: {exc}, expected numbers") from None
        if cells["Fiber"].strip() not in ORDERLETS:
            raise InputError(
                path, f"line {lineno}: Fiber {cells['Fiber']!r}, expected one of {ORDERLETS}"
            )
        fiber.append(cells["Fiber"].strip())
    if not fiber:
        raise InputError(path, "holds no traces")
    if min(order) < 0:
        raise InputError(path, f"Order below {order_base}, the file's first order")
    return TraceSet(np.array(coeffs), bottom, top, x1, x2, fiber, order)


# --------------------------------------------------------------------------- job


def build_traces(flat: str | Path, order_mask: str | Path, outputs: dict[str, str], settings: dict):
    """Trace CSVs of a master flat: ``outputs`` maps ``GREEN_CCD``/``RED_CCD`` to CSV paths.

    ``settings`` is the ``traces`` section of the configuration (``degree``, ``clip_nsigma``,
    ``clip_iterations``, ``min_columns_fraction``, ``refine_iterations``). Reads the flat's
    ``<CCD>_STACK`` and the order mask's ``<CCD>`` extension; :class:`InputError` names the
    file and extension that is missing. Returns CCD -> number of traces and orders.
    """
    import warnings

    from astropy.io import fits

    from kpfmasters.science.flat import load_order_mask

    flat = Path(flat)
    summary = {}
    for ccd, output in outputs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with fits.open(flat, memmap=True) as hdul:
                    if f"{ccd}_STACK" not in hdul:
                        raise InputError(
                            flat,
                            f"has no {ccd}_STACK extension, expected the master flat's lamp stack",
                        )
                    stack = np.array(hdul[f"{ccd}_STACK"].data, dtype=np.float32)
        except OSError as exc:
            raise InputError(flat, f"is not a readable FITS file ({exc})") from None
        mask = load_order_mask(order_mask, ccd, stack.shape)
        if mask is None:
            raise InputError(order_mask, f"has no {ccd} extension, expected the order mask")
        traces = find_traces(
            stack,
            mask,
            degree=int(settings["degree"]),
            nsigma=float(settings["clip_nsigma"]),
            iterations=int(settings["clip_iterations"]),
            min_columns_fraction=float(settings["min_columns_fraction"]),
            refine=int(settings["refine_iterations"]),
            name=ccd,
        )
        if not len(traces):
            raise InputError(order_mask, f"extension {ccd} gives no trace on {flat.name}")
        write_traces(traces, output)
        log.info("%s: %d traces in %d orders -> %s", ccd, len(traces), traces.n_orders, output)
        summary[ccd] = {"traces": len(traces), "orders": traces.n_orders}
    return summary
