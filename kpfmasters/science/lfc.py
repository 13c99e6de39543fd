"""Laser frequency comb (LFC) wavelength solutions.

The comb's modes sit at frequencies f0 + n * f_rep; in vacuum their wavelengths are
lambda_n = c / (f0 + n * f_rep). Each mode inside a row is predicted at a column through the
prior solution (the night's ThAr solution), located, and given the mode number n of the
prediction. A prior wrong by whole mode spacings in one row puts every fitted line on its
neighbour's label; so before the final fit each row is tested explicitly for whole-row
shifts dn = -2..+2 of its mode numbers: the row is fitted with each relabelling and the one
whose solution lies closest to an independent reference is kept. The reference is a smooth
model of the prior across orders (1 / lambda at a fixed column is close to linear in the
order number, as the grating equation says), fitted robustly, so a row whose own prior is
off stands out against its neighbours; with fewer than ``MIN_ORDERS_MODEL`` orders the row's
own prior is the reference. Rows without comb light keep the prior (``STATUS`` = prior),
and say so.

Units: Hz, vacuum Angstrom, pixels, m/s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre

from kpfmasters.science.linefit import LineFitSettings, fit_lines
from kpfmasters.science.wls import C_AS, C_MS, Solution, SolveSettings, predict_columns, solve_rows

log = logging.getLogger(__name__)

MIN_ORDERS_MODEL = 5  # orders an orderlet needs for the cross-order reference
MODEL_COLUMNS = 17  # columns at which the cross-order model is fitted


@dataclass
class LfcSettings:
    """Comb solution settings.

    ``half_window`` and ``max_offset`` are fractions of the local mode spacing (pixels);
    ``max_shift`` the largest whole-row shift of mode numbers tested (modes);
    ``shift_degree`` the Legendre degree of the test fits.
    """

    half_window: float = 0.45
    max_offset: float = 0.25
    max_shift: int = 2
    shift_degree: int = 3
    line: LineFitSettings = field(default_factory=LineFitSettings)
    solve: SolveSettings = field(
        default_factory=lambda: SolveSettings(
            max_degree=9, lines_per_degree=10, min_lines=20, min_coverage=0.9
        )
    )


def comb_parameters(header, f0_default: float, frep_default: float) -> tuple[float, float, str]:
    """f0 and f_rep (Hz) from ``LFCCEOFR``/``LFCFRREF`` of a header, else the defaults.

    The keywords are in Hz. A repetition rate below 1 MHz cannot be a comb's in Hz: such a
    pair is taken as written in GHz (and the source says so) rather than asking for
    billions of modes.

    Returns
    -------
    f0, frep : float
        Hz.
    source : str
        ``header``, ``header (GHz)`` or ``configuration``.
    """
    try:
        f0 = float(header["LFCCEOFR"])
        frep = float(header["LFCFRREF"])
    except (KeyError, TypeError, ValueError):
        return float(f0_default), float(frep_default), "configuration"
    if not (np.isfinite(f0) and np.isfinite(frep) and frep > 0):
        return float(f0_default), float(frep_default), "configuration"
    if frep < 1e6:
        return f0 * 1e9, frep * 1e9, "header (GHz)"
    return f0, frep, "header"


def mode_wavelengths(f0: float, frep: float, wmin: float, wmax: float):
    """Comb modes with wavelengths in [wmin, wmax] (Angstrom, vacuum).

    Returns
    -------
    n : ndarray of int
        Mode numbers, ascending wavelength (descending n).
    wave : ndarray
        lambda_n = c / (f0 + n * frep) in Angstrom.
    """
    n_lo = int(np.ceil((C_AS / wmax - f0) / frep))
    n_hi = int(np.floor((C_AS / wmin - f0) / frep))
    n = np.arange(n_hi, n_lo - 1, -1, dtype=np.int64)
    return n, C_AS / (f0 + n * frep)


def mode_number(wave, f0: float, frep: float) -> np.ndarray:
    """Nearest mode number of wavelengths (Angstrom)."""
    return np.rint((C_AS / np.asarray(wave, dtype=float) - f0) / frep).astype(np.int64)


def repeated_median_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Siegel's repeated-median straight line (robust to almost half the points being wrong).

    Returns
    -------
    slope, intercept : float
    """
    dx = x[None, :] - x[:, None]
    dy = y[None, :] - y[:, None]
    with np.errstate(all="ignore"):
        slopes = np.where(dx != 0, dy / np.where(dx != 0, dx, 1.0), np.nan)
    slope = float(np.nanmedian(np.nanmedian(slopes, axis=1)))
    return slope, float(np.median(y - slope * x))


def cross_order_reference(prior: np.ndarray, order: np.ndarray, orderlet) -> np.ndarray:
    """A smooth model of the prior across orders, per orderlet.

    At each of ``MODEL_COLUMNS`` columns, 1 / lambda of the orderlet's rows is close to a
    straight line in the order index (grating equation: m * lambda is nearly the same in
    every order at a given column). A repeated-median line finds the orders that follow it;
    orders off by more than max(5 x 1.4826 MAD, 1 km/s) are left out, and the rest are
    fitted by least squares (a quadratic when at least 8 orders remain). lambda(x) of each
    row is then its prior times a smooth (cubic Legendre) correction through the model's
    values at those columns.

    Parameters
    ----------
    prior : ndarray, shape (nrows, ncol)
        Prior solutions (Angstrom).
    order : ndarray of int, shape (nrows,)
        Order index of each row.
    orderlet : sequence of str, length nrows
        Orderlet of each row.

    Returns
    -------
    ndarray, shape (nrows, ncol)
        The reference; rows of an orderlet with fewer than ``MIN_ORDERS_MODEL`` orders (or
        no prior) are the prior itself.
    """
    nrows, ncol = prior.shape
    ref = np.array(prior, dtype=float, copy=True)
    cols = np.linspace(0, ncol - 1, MODEL_COLUMNS).round().astype(int)
    orderlet = np.asarray(orderlet)
    order = np.asarray(order)
    t = 2.0 * cols / (ncol - 1) - 1.0
    tall = 2.0 * np.arange(ncol) / (ncol - 1) - 1.0
    for name in np.unique(orderlet):
        rows = np.nonzero((orderlet == name) & np.isfinite(prior[:, cols]).all(axis=1))[0]
        if len(rows) < MIN_ORDERS_MODEL:
            continue
        o = order[rows].astype(float)
        inv = 1.0 / prior[rows][:, cols]  # (k, MODEL_COLUMNS)
        scale = np.median(inv, axis=0)
        model = np.empty_like(inv)
        for j in range(len(cols)):
            y = inv[:, j] / scale[j]
            slope, icpt = repeated_median_line(o, y)
            v = C_MS * ((slope * o + icpt) / y - 1.0)
            mad = 1.4826 * np.median(np.abs(v - np.median(v)))
            keep = np.abs(v - np.median(v)) <= max(5 * mad, 1000.0)
            deg = 2 if keep.sum() >= 8 else 1
            model[:, j] = np.polyval(np.polyfit(o[keep], y[keep], deg), o) * scale[j]
        factor = inv / model  # lambda_model / lambda_prior
        for i, r in enumerate(rows):
            c = legendre.legfit(t, factor[i], 3)
            ref[r] = prior[r] * legendre.legval(tall, c)
    return ref


def comb_lines(prior: np.ndarray, f0: float, frep: float):
    """Every comb mode predicted inside each row through the prior.

    Returns
    -------
    rows : ndarray of int
    mode : ndarray of int
    wave : ndarray
        Mode wavelengths (Angstrom).
    x_pred : ndarray
        Predicted columns.
    spacing : ndarray
        Local mode spacing (pixels) at each mode.
    """
    out = {k: [] for k in ("rows", "mode", "wave", "x", "spacing")}
    ncol = prior.shape[1]
    for r, row in enumerate(prior):
        if np.isfinite(row).sum() < 2:
            continue
        n, lam = mode_wavelengths(f0, frep, np.nanmin(row), np.nanmax(row))
        if len(n) < 2:
            continue
        x = predict_columns(row, lam)
        sp = np.abs(np.gradient(x))
        keep = np.isfinite(x) & np.isfinite(sp) & (x >= 0) & (x <= ncol - 1)
        out["rows"].append(np.full(int(keep.sum()), r))
        out["mode"].append(n[keep])
        out["wave"].append(lam[keep])
        out["x"].append(x[keep])
        out["spacing"].append(sp[keep])
    if not out["rows"]:
        e = np.zeros(0)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), e, e, e
    return tuple(np.concatenate(out[k]) for k in ("rows", "mode", "wave", "x", "spacing"))


def best_shift(
    x: np.ndarray,
    x_err: np.ndarray,
    mode: np.ndarray,
    reference_row: np.ndarray,
    f0: float,
    frep: float,
    max_shift: int,
    degree: int,
) -> tuple[int, np.ndarray]:
    """Test whole-row shifts of the mode numbers against a reference solution.

    For each dn in -max_shift..max_shift the lines are given the wavelengths of modes
    ``mode + dn``, lambda(x) is fitted (Legendre, weights 1 / x_err^2) and its mean velocity
    offset from the reference over the lines' columns is measured.

    Returns
    -------
    dn : int
        The shift whose solution lies closest to the reference.
    offsets : ndarray, shape (2 * max_shift + 1,)
        Mean offset (m/s) of each tested shift, dn = -max_shift first.
    """
    ncol = len(reference_row)
    t = 2.0 * x / (ncol - 1) - 1.0
    w = 1.0 / np.maximum(x_err, 1e-6)
    cols = np.arange(ncol, dtype=float)
    lam_ref = np.interp(x, cols, reference_row)
    shifts = np.arange(-max_shift, max_shift + 1)
    offsets = np.empty(len(shifts))
    deg = int(min(degree, max(1, len(x) // 4)))
    for i, dn in enumerate(shifts):
        lam = C_AS / (f0 + (mode + dn) * frep)
        c = legendre.legfit(t, lam, deg, w=w)
        offsets[i] = np.median(C_MS * (legendre.legval(t, c) - lam_ref) / lam_ref)
    return int(shifts[np.argmin(np.abs(offsets))]), offsets


def lfc_solution(
    flux: np.ndarray,
    var: np.ndarray,
    prior: np.ndarray,
    order: np.ndarray,
    orderlet,
    f0: float,
    frep: float,
    settings: LfcSettings | None = None,
    labels: list[str] | None = None,
) -> Solution:
    """Comb wavelength solution of a stack of spectra.

    Parameters
    ----------
    flux, var : ndarray, shape (nrows, ncol)
        LFC spectra and variances (NaN: no data).
    prior : ndarray, shape (nrows, ncol)
        Prior lambda(x) (Angstrom, vacuum): the night's ThAr solution.
    order : ndarray of int, shape (nrows,)
        Order index of each row.
    orderlet : sequence of str
        Orderlet of each row.
    f0, frep : float
        Comb offset and repetition frequencies (Hz).
    settings : LfcSettings, optional
    labels : list of str, optional
        A name per row for the log.

    Returns
    -------
    Solution
        ``line_mode`` holds each line's mode number (after any shift correction);
        ``extra["shift"]`` the whole-row correction applied to each row (modes) and
        ``extra["shift_offsets"]`` the tested offsets (m/s).
    """
    s = settings or LfcSettings()
    flux = np.asarray(flux, dtype=float)
    var = np.asarray(var, dtype=float)
    prior = np.asarray(prior, dtype=float)
    nrows, ncol = flux.shape
    rows, mode, wave, x_pred, spacing = comb_lines(prior, f0, frep)
    half = np.maximum(3, np.floor(s.half_window * spacing)).astype(np.int64)
    fits = fit_lines(flux, var, rows, x_pred, half, s.max_offset * spacing, s.line)
    reference = cross_order_reference(prior, order, orderlet)
    shift = np.zeros(nrows, dtype=np.int64)
    offsets = np.full((nrows, 2 * s.max_shift + 1), np.nan)
    good = fits.flags == 0
    for r in range(nrows):
        sel = (rows == r) & good
        if sel.sum() < s.solve.min_lines:
            continue
        dn, off = best_shift(
            fits.mu[sel], fits.mu_err[sel], mode[sel], reference[r], f0, frep,
            s.max_shift, s.shift_degree,
        )  # fmt: skip
        shift[r], offsets[r] = dn, off
        if dn:
            name = labels[r] if labels else f"row {r}"
            log.warning(
                "%s: the prior's mode numbers are off by %+d: corrected (offsets of the tested "
                "shifts from the reference: %s m/s)", name, dn,
                ", ".join(f"{v:.0f}" for v in off),
            )  # fmt: skip
    mode = mode + shift[rows]
    wave = C_AS / (f0 + mode * frep)
    sol = solve_rows(
        nrows, ncol, rows, wave, fits, prior, s.solve, labels, line_mode=mode,
        valid=np.isfinite(flux),
    )  # fmt: skip
    for r in range(nrows):
        if sol.status[r] != "fit" and np.isfinite(prior[r]).any():
            sol.notes[r] = "no usable comb light: " + sol.notes[r]
    sol.extra["shift"] = shift
    sol.extra["shift_offsets"] = offsets
    return sol
