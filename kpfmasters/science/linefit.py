"""Batched fits of many emission lines at once: a pixel-integrated Gaussian plus a linear
background, weighted by the inverse variance, with formal errors and rejections.

A line centred at ``mu`` (column, 0-based, pixel centres at integers) with total flux
``amp`` and Gaussian width ``sigma`` (pixels) puts into pixel ``x`` (covering
``[x - 0.5, x + 0.5]``)::

    amp * (Phi((x + 0.5 - mu) / sigma) - Phi((x - 0.5 - mu) / sigma)) + b0 + b1 * (x - xref)

where ``Phi`` is the standard normal distribution function and ``xref`` the line's
predicted column (fixed, for conditioning). Every line gets its own damped Gauss-Newton
(Levenberg-Marquardt) fit in a compiled kernel (``linefit_kernel``), the lines spread over
the threads, from windows cut out of the spectra as arrays of shape (lines, window pixels).

Every line gets a bit mask of the reasons it was rejected (0: a good line), see ``FLAG_*``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

# Rejection reasons (bits of LineFits.flags).
FLAG_EDGE = 1  # the window runs off the spectrum
FLAG_MASKED = 2  # a NaN or masked pixel (or one with no valid variance) inside the window
FLAG_SATURATED = 4  # a pixel above the saturation level inside the window
FLAG_BLEND = 8  # another catalogue line or comb mode too close (set by the caller)
FLAG_NOFIT = 16  # the fit did not converge, or gave a non-positive flux
FLAG_SNR = 32  # flux / its error below the limit
FLAG_OFFSET = 64  # fitted centre too far from the predicted one
FLAG_WIDTH = 128  # fitted sigma outside the allowed range
FLAG_CHI2 = 256  # reduced chi-square above the limit (a bad profile: saturation, blend)

FLAG_NAMES = {
    FLAG_EDGE: "edge",
    FLAG_MASKED: "masked",
    FLAG_SATURATED: "saturated",
    FLAG_BLEND: "blend",
    FLAG_NOFIT: "nofit",
    FLAG_SNR: "snr",
    FLAG_OFFSET: "offset",
    FLAG_WIDTH: "width",
    FLAG_CHI2: "chi2",
}

NPAR = 5  # amp, mu, sigma, b0, b1
NEIGHBOUR_REACH = 10  # pixels either side of a line rendered when removing it from others


@dataclass
class LineFitSettings:
    """Limits of the line fits.

    Attributes
    ----------
    sigma_guess : float
        Starting Gaussian sigma (pixels).
    sigma_range : tuple of float
        Allowed fitted sigma (pixels), inclusive.
    min_snr : float
        Smallest accepted flux / flux error.
    max_chi2red : float
        Largest accepted reduced chi-square of a line's fit.
    saturation : float or None
        A pixel at or above this level (FLUX unit) makes its line rejected; None: no check.
    iterations : int
        Gauss-Newton iterations.
    passes : int
        Fit passes; from the second on, the fitted profiles of the other lines are
        subtracted from each window first (neighbouring comb modes or catalogue lines
        whose wings reach into it).
    """

    sigma_guess: float = 1.3
    sigma_range: tuple[float, float] = (0.5, 3.0)
    min_snr: float = 10.0
    max_chi2red: float = 10.0
    saturation: float | None = None
    iterations: int = 30
    passes: int = 2


@dataclass
class LineFits:
    """Results of a batch of line fits; every array has one entry per line.

    ``mu``/``mu_err`` are columns (pixels); ``amp``/``amp_err`` the total line flux in the
    spectrum's unit times pixels; ``sigma`` pixels; ``b0``/``b1`` the background at the
    predicted column and its slope per pixel; ``chi2red`` the reduced chi-square;
    ``flags`` the rejection bits (0 = good).
    """

    amp: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    b0: np.ndarray
    b1: np.ndarray
    amp_err: np.ndarray
    mu_err: np.ndarray
    chi2red: np.ndarray
    flags: np.ndarray

    @property
    def good(self) -> np.ndarray:
        return self.flags == 0


def pixel_gaussian(x, amp, mu, sigma):
    """Flux of a pixel-integrated Gaussian line in the pixels centred at ``x``.

    Parameters
    ----------
    x : array_like
        Pixel centres (columns); broadcast against the parameters.
    amp, mu, sigma : array_like
        Total flux, centre (column) and sigma (pixels).

    Returns
    -------
    ndarray
        ``amp * (Phi((x + 0.5 - mu) / sigma) - Phi((x - 0.5 - mu) / sigma))``.
    """
    x = np.asarray(x, dtype=float)
    return amp * (ndtr((x + 0.5 - mu) / sigma) - ndtr((x - 0.5 - mu) / sigma))


def gather_windows(
    flux: np.ndarray, var: np.ndarray, rows: np.ndarray, centres: np.ndarray, half: np.ndarray
):
    """Cut a window of pixels around every line.

    Parameters
    ----------
    flux, var : ndarray, shape (nrows, ncol)
        Spectra and their variances (NaN: no data).
    rows : ndarray of int, shape (n,)
        Row of each line.
    centres : ndarray, shape (n,)
        Predicted column of each line.
    half : ndarray of int, shape (n,)
        Half width of each line's window (pixels); the window is
        ``round(centre) - half .. round(centre) + half``.

    Returns
    -------
    x : ndarray of float, shape (n, 2 * max(half) + 1)
        Columns of the window pixels.
    y, ivar : ndarray, shape as ``x``
        Flux and inverse variance; ``ivar`` is 0 outside a line's own window.
    flags : ndarray of int, shape (n,)
        ``FLAG_EDGE`` and ``FLAG_MASKED`` where they apply.
    """
    nrows, ncol = flux.shape
    hmax = int(np.max(half)) if len(half) else 0
    offs = np.arange(-hmax, hmax + 1)
    mid = np.rint(centres).astype(np.int64)
    cols = mid[:, None] + offs[None, :]
    inside = np.abs(offs)[None, :] <= np.asarray(half)[:, None]
    flags = np.zeros(len(centres), dtype=np.int32)
    off_edge = ((cols < 0) | (cols >= ncol)) & inside
    flags[off_edge.any(axis=1)] |= FLAG_EDGE
    safe = np.clip(cols, 0, ncol - 1)
    y = flux[rows[:, None], safe]
    v = var[rows[:, None], safe]
    bad = inside & ~(np.isfinite(y) & np.isfinite(v) & (v > 0))
    flags[(bad & ~off_edge).any(axis=1)] |= FLAG_MASKED
    ivar = np.zeros(y.shape)
    ok = inside & ~bad & ~off_edge
    ivar[ok] = 1.0 / v[ok]
    y = np.where(ok, y, 0.0)
    return cols.astype(float), y, ivar, flags


def _initial(x, y, ivar, xref, sigma_guess):
    """Starting parameters: background from the window's ends, centre from the peak pixel."""
    w = ivar > 0
    big = np.where(w, y, np.inf)
    n = len(xref)
    ends = np.sort(big, axis=1)[:, : max(1, x.shape[1] // 4)]
    ends = np.where(np.isfinite(ends), ends, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: no data
        b0 = np.nanmedian(ends, axis=1) if ends.size else np.zeros(n)
    b0 = np.where(np.isfinite(b0), b0, 0.0)
    sig = y - b0[:, None]
    near = w & (np.abs(x - xref[:, None]) <= 2.5)
    peak_in = np.where(near, sig, -np.inf)
    k = np.argmax(peak_in, axis=1)
    idx = np.arange(n)
    kk = np.clip(k[:, None] + np.arange(-1, 2)[None, :], 0, x.shape[1] - 1)
    s3 = np.clip(sig[idx[:, None], kk], 0, None) * w[idx[:, None], kk]
    with np.errstate(all="ignore"):
        cen = np.sum(s3 * x[idx[:, None], kk], axis=1) / np.sum(s3, axis=1)
    cen = np.where(np.isfinite(cen), cen, xref)
    amp = np.sum(np.where(w, sig, 0.0), axis=1)
    amp = np.where(amp > 0, amp, np.maximum(np.max(np.where(w, sig, 0.0), axis=1), 1e-30))
    p = np.zeros((n, NPAR))
    p[:, 0] = amp
    p[:, 1] = cen
    p[:, 2] = sigma_guess
    p[:, 3] = b0
    return p


def fit_windows(
    x: np.ndarray,
    y: np.ndarray,
    ivar: np.ndarray,
    xref: np.ndarray,
    sigma_guess: float = 1.3,
    iterations: int = 12,
):
    """Fit a pixel-integrated Gaussian plus linear background to every window at once.

    Parameters
    ----------
    x, y, ivar : ndarray, shape (n, w)
        Pixel columns, fluxes and inverse variances (0: pixel not used).
    xref : ndarray, shape (n,)
        Predicted centres (columns): the background's reference column.
    sigma_guess : float
        Starting sigma (pixels).
    iterations : int
        Damped Gauss-Newton steps.

    Returns
    -------
    p : ndarray, shape (n, 5)
        amp, mu, sigma, b0, b1.
    cov : ndarray, shape (n, 5, 5)
        Formal covariance (inverse of J^T W J at the solution; NaN when singular).
    chi2 : ndarray, shape (n,)
        Weighted sum of squared residuals.
    dof : ndarray of int, shape (n,)
        Used pixels minus 5.
    converged : ndarray of bool, shape (n,)
    """
    with np.errstate(all="ignore"):
        return _fit_windows(x, y, ivar, xref, sigma_guess, iterations)


def _fit_windows(x, y, ivar, xref, sigma_guess, iterations):
    from kpfmasters.science.linefit_kernel import fit_kernel

    n = len(xref)
    p = _initial(x, y, ivar, xref, sigma_guess)
    cov = np.empty((n, NPAR, NPAR))
    chi2 = np.empty(n)
    steps = np.empty(n)
    x0 = np.ascontiguousarray(x[:, 0]).astype(np.float64) if n else np.zeros(0)
    width = np.full(n, x.shape[1], dtype=np.int64)
    fit_kernel(
        x0, width, np.ascontiguousarray(y, dtype=np.float64),
        np.ascontiguousarray(ivar, dtype=np.float64), np.asarray(xref, dtype=np.float64),
        p, int(iterations), cov, chi2, steps,
    )  # fmt: skip
    dof = np.sum(ivar > 0, axis=1) - NPAR
    converged = np.all(np.isfinite(cov), axis=(1, 2)) & (steps < 1e-3) & (dof > 0)
    return p, cov, chi2, dof, converged


def neighbour_flux(
    shape: tuple[int, int], rows: np.ndarray, x: np.ndarray, p: np.ndarray, use: np.ndarray
) -> np.ndarray:
    """Flux the *other* lines' fitted profiles put into each line's window.

    Parameters
    ----------
    shape : tuple of int
        (nrows, ncol) of the spectra.
    rows : ndarray of int, shape (n,)
        Row of each line.
    x : ndarray, shape (n, w)
        Window columns of each line.
    p : ndarray, shape (n, 5)
        Fitted amp, mu, sigma, b0, b1 (only the Gaussian is rendered).
    use : ndarray of bool, shape (n,)
        Lines whose profiles are rendered.

    Returns
    -------
    ndarray, shape (n, w)
        Sum of the rendered profiles of all used lines but the line itself.
    """
    nrows, ncol = shape
    reach = np.arange(-NEIGHBOUR_REACH, NEIGHBOUR_REACH + 1)
    k = np.nonzero(use)[0]
    total = np.zeros(nrows * ncol)
    if len(k):
        cols = np.rint(p[k, 1]).astype(np.int64)[:, None] + reach[None, :]
        inside = (cols >= 0) & (cols < ncol)
        prof = pixel_gaussian(cols, p[k, 0:1], p[k, 1:2], p[k, 2:3])
        flat = rows[k, None] * ncol + np.clip(cols, 0, ncol - 1)
        total = np.bincount(flat[inside], weights=prof[inside], minlength=nrows * ncol)
    xi = np.clip(x.astype(np.int64), 0, ncol - 1)
    others = total[rows[:, None] * ncol + xi]
    own = np.where(use[:, None], pixel_gaussian(x, p[:, 0:1], p[:, 1:2], p[:, 2:3]), 0.0)
    own = np.where(np.abs(x - np.rint(p[:, 1:2])) <= NEIGHBOUR_REACH, own, 0.0)
    return others - own


def fit_lines(
    flux: np.ndarray,
    var: np.ndarray,
    rows: np.ndarray,
    x_pred: np.ndarray,
    half: np.ndarray,
    max_offset: np.ndarray,
    settings: LineFitSettings | None = None,
    blend: np.ndarray | None = None,
) -> LineFits:
    """Locate lines near their predicted columns in a stack of 1D spectra.

    Parameters
    ----------
    flux, var : ndarray, shape (nrows, ncol)
        Spectra (any flux unit) and variances (its square); NaN marks missing pixels.
    rows : ndarray of int, shape (n,)
        Row of each line.
    x_pred : ndarray, shape (n,)
        Predicted centre of each line (column, 0-based).
    half : int or ndarray of int, shape (n,)
        Half width of each fit window (pixels).
    max_offset : float or ndarray, shape (n,)
        Largest accepted ``|mu - x_pred|`` (pixels).
    settings : LineFitSettings, optional
        Limits (defaults if None).
    blend : ndarray of bool, shape (n,), optional
        Lines to flag ``FLAG_BLEND`` (another line too close; decided by the caller).

    Returns
    -------
    LineFits
        Fitted parameters, errors and rejection flags of every line. ``mu_err`` is scaled
        by sqrt(chi2red) where that exceeds 1.
    """
    s = settings or LineFitSettings()
    n = len(x_pred)
    rows = np.asarray(rows, dtype=np.int64)
    x_pred = np.asarray(x_pred, dtype=float)
    half = np.broadcast_to(np.asarray(half, dtype=np.int64), (n,))
    max_offset = np.broadcast_to(np.asarray(max_offset, dtype=float), (n,))
    if n == 0:
        e = np.zeros(0)
        return LineFits(e, e, e, e, e, e, e, e, np.zeros(0, dtype=np.int32))
    x, y, ivar, flags = gather_windows(flux, var, rows, x_pred, half)
    if s.saturation is not None:
        sat = np.any((y >= s.saturation) & (ivar > 0), axis=1)
        flags[sat] |= FLAG_SATURATED
    if blend is not None:
        flags[np.asarray(blend, dtype=bool)] |= FLAG_BLEND
    p, cov, chi2, dof, converged = fit_windows(x, y, ivar, x_pred, s.sigma_guess, s.iterations)
    for _ in range(s.passes - 1):
        use = converged & (p[:, 0] > 0) & (np.abs(p[:, 1] - x_pred) <= half)
        y_clean = y - neighbour_flux(flux.shape, rows, x, p, use)
        p, cov, chi2, dof, converged = fit_windows(
            x, y_clean, ivar, x_pred, s.sigma_guess, s.iterations
        )
    with np.errstate(all="ignore"):
        chi2red = chi2 / np.maximum(dof, 1)
        scale = np.sqrt(np.maximum(chi2red, 1.0))
        mu_err = np.sqrt(cov[:, 1, 1]) * scale
        amp_err = np.sqrt(cov[:, 0, 0]) * scale
        snr = p[:, 0] / amp_err
    nofit = ~converged | ~(p[:, 0] > 0) | ~np.isfinite(mu_err) | ~np.isfinite(snr)
    flags[nofit] |= FLAG_NOFIT
    flags[~nofit & (snr < s.min_snr)] |= FLAG_SNR
    flags[~(np.abs(p[:, 1] - x_pred) <= max_offset)] |= FLAG_OFFSET
    lo, hi = s.sigma_range
    flags[~((p[:, 2] >= lo) & (p[:, 2] <= hi))] |= FLAG_WIDTH
    flags[~(chi2red <= s.max_chi2red)] |= FLAG_CHI2
    return LineFits(
        amp=p[:, 0],
        mu=p[:, 1],
        sigma=p[:, 2],
        b0=p[:, 3],
        b1=p[:, 4],
        amp_err=amp_err,
        mu_err=mu_err,
        chi2red=chi2red,
        flags=flags,
    )


def flag_summary(flags: np.ndarray) -> dict[str, int]:
    """Number of lines carrying each rejection reason (a line may carry several)."""
    flags = np.asarray(flags)
    out = {"good": int(np.sum(flags == 0))}
    for bit, name in FLAG_NAMES.items():
        out[name] = int(np.sum((flags & bit) != 0))
    return out
