"""Wavelength solutions: lambda(x) per order and orderlet from located lines.

A solution is fitted to each row of a stack of 1D spectra (one row = one order of one
orderlet, shape (rows, columns)) independently: lambda(x) = prior(x) + a Legendre series in
the column x over the domain [0, ncol - 1], weighted by 1 / X_ERR^2 expressed in wavelength
(sigma_lambda = X_ERR * |d lambda / dx|), with iterative clipping of outliers. The series
corrects the prior (the reference solution, or the night's ThAr solution for the comb), so
the prior's shape carries the solution where no line constrains it; its degree follows the
line count and is lowered while the fit's formal error beyond the outermost lines grows more
than ``max_error_growth`` times its largest value between them (no high-degree series is
extrapolated over an end of an order without lines). A row with too few usable lines keeps
its prior solution and says so (``STATUS`` = ``prior``).

The ThAr solution is made here: each line of a vacuum line list is predicted at a column
through the prior solution, located in the spectrum (``linefit``), and identified with its
catalogue wavelength. Comb (LFC) solutions reuse :func:`solve_rows` from ``lfc``.

Units: wavelengths in vacuum Angstrom, columns in pixels (0-based), velocities in m/s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre

from kpfmasters.core.errors import InputError
from kpfmasters.science.linefit import FLAG_BLEND, LineFits, LineFitSettings, fit_lines

log = logging.getLogger(__name__)

C_MS = 299_792_458.0  # speed of light, m/s
C_AS = C_MS * 1e10  # speed of light, Angstrom/s

STATUS_FIT = "fit"
STATUS_PRIOR = "prior"


@dataclass
class SolveSettings:
    """How lambda(x) is fitted in a row.

    Attributes
    ----------
    max_degree : int
        Highest Legendre degree.
    lines_per_degree : int
        The degree is min(max_degree, n_lines // lines_per_degree), at least 1.
    min_lines : int
        A row with fewer usable lines (after clipping) keeps the prior.
    clip_nsigma : float
        Lines whose normalised residual exceeds this many robust standard deviations
        (1.4826 MAD) of all normalised residuals are left out.
    clip_iterations : int
        Largest number of fit-and-clip rounds.
    min_coverage : float
        The used lines must span at least this fraction of the row's columns (beyond them
        the series would be extrapolated); otherwise the prior is kept.
    wave_error_ms : float
        Uncertainty of the lines' listed wavelengths (m/s), added in quadrature to each
        line's own error in the weights (ThAr: the line list's accuracy; 0 for the comb).
    max_error_growth : float
        The degree is lowered until the formal error of the fitted series at every column
        of the row is at most this many times its largest value between the outermost
        used lines.
    """

    max_degree: int = 5
    lines_per_degree: int = 4
    min_lines: int = 8
    clip_nsigma: float = 4.0
    clip_iterations: int = 5
    min_coverage: float = 0.6
    max_error_growth: float = 2.0
    wave_error_ms: float = 0.0


@dataclass
class RowSolution:
    """The solution of one row (order of one orderlet).

    ``wave`` is lambda at every column (Angstrom, shape (ncol,)); ``coeffs`` the Legendre
    coefficients of the correction to the prior over the domain [0, ncol - 1] (empty for
    the prior); ``used`` marks the
    lines kept (shape of the row's lines); ``resid_ms`` c * (lambda_fit(X) - WAVE) / WAVE of
    every line (NaN where the line has no fit); ``rms_ms`` the weighted rms of the used
    lines' residuals and ``sem_ms`` the standard error of the row's zero point; ``status``
    ``fit`` or ``prior``; ``note`` why the prior was kept.
    """

    wave: np.ndarray
    coeffs: np.ndarray
    degree: int
    used: np.ndarray
    resid_ms: np.ndarray
    rms_ms: float
    sem_ms: float
    status: str
    note: str = ""


@dataclass
class Solution:
    """Solutions of every row of a stack of spectra, and the lines behind them.

    Row arrays (length ``nrows``): ``wave`` (nrows, ncol), ``status``, ``nlines`` (lines
    with a good fit), ``nused``, ``degree``, ``rms_ms``, ``sem_ms``, ``notes``.
    Line arrays (length ``nlines_total``): ``line_row``, ``line_wave`` (catalogue or mode
    wavelength, Angstrom), ``line_x``, ``line_xerr`` (pixels), ``line_used``,
    ``line_resid_ms``, ``line_mode`` (comb mode number; -1 for ThAr), ``fits`` (the
    :class:`~kpfmasters.science.linefit.LineFits` of every line, good or not).
    """

    wave: np.ndarray
    status: list[str]
    nlines: np.ndarray
    nused: np.ndarray
    degree: np.ndarray
    rms_ms: np.ndarray
    sem_ms: np.ndarray
    notes: list[str]
    line_row: np.ndarray
    line_wave: np.ndarray
    line_x: np.ndarray
    line_xerr: np.ndarray
    line_used: np.ndarray
    line_resid_ms: np.ndarray
    line_mode: np.ndarray
    fits: LineFits | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- line lists


def read_linelist(path: str | Path) -> np.ndarray:
    """Read a line list: one line per row, the vacuum wavelength (Angstrom) first.

    Further columns and ``#`` comments are ignored; blank rows skipped.

    Returns
    -------
    ndarray
        Wavelengths in Angstrom, ascending, float64.

    Raises
    ------
    InputError
        The file cannot be read, a row does not start with a positive number, or it holds
        no line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(path, f"cannot read the line list ({exc.strerror})") from exc
    waves = []
    for number, raw in enumerate(text.splitlines(), start=1):
        row = raw.split("#", 1)[0].split()
        if not row:
            continue
        try:
            value = float(row[0].rstrip(","))
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise InputError(
                path, f"line {number}: {row[0]!r} is not a wavelength (positive Angstrom)"
            )
        waves.append(value)
    if not waves:
        raise InputError(path, "holds no line (expected one vacuum wavelength per row)")
    return np.sort(np.array(waves, dtype=float))


# --------------------------------------------------------------------------- helpers


def predict_columns(wave_row: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Columns where a solution puts given wavelengths.

    Parameters
    ----------
    wave_row : ndarray, shape (ncol,)
        lambda at each column (Angstrom), monotonic (either direction); NaN columns are
        ignored.
    lines : ndarray, shape (n,)
        Wavelengths (Angstrom).

    Returns
    -------
    ndarray, shape (n,)
        Column of each wavelength by linear interpolation; NaN outside the row's range.
    """
    cols = np.arange(len(wave_row), dtype=float)
    ok = np.isfinite(wave_row)
    if ok.sum() < 2:
        return np.full(len(lines), np.nan)
    w, c = wave_row[ok], cols[ok]
    if w[-1] < w[0]:
        w, c = w[::-1], c[::-1]
    x = np.interp(lines, w, c, left=np.nan, right=np.nan)
    return x


def dispersion(wave_row: np.ndarray, x: np.ndarray) -> np.ndarray:
    """|d lambda / dx| (Angstrom per pixel) of a solution at columns ``x``."""
    grad = np.abs(np.gradient(wave_row))
    cols = np.arange(len(wave_row), dtype=float)
    ok = np.isfinite(grad)
    return np.interp(x, cols[ok], grad[ok])


def choose_degree(n: int, settings: SolveSettings) -> int:
    """Legendre degree for ``n`` lines: min(max_degree, n // lines_per_degree), at least 1."""
    return int(max(1, min(settings.max_degree, n // max(1, settings.lines_per_degree))))


def guarded_degree(
    t: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    t_cols: np.ndarray,
    degree: int,
    growth: float,
    adequacy: float = 2.0,
) -> int:
    """Degree <= ``degree`` of the series fitted to ``y``: lowered while its formal error
    beyond the outermost lines grows more than ``growth`` times its largest value between
    them, but never to a degree that cannot describe the lines (reduced chi-square more
    than ``adequacy`` times that of ``degree``: the extrapolation of an inadequate series
    is worse than that of an uncertain one).

    Parameters
    ----------
    t : ndarray, shape (n,)
        Lines in the series' scaled variable (-1..1).
    y : ndarray, shape (n,)
        The values fitted (the lines' wavelengths less the prior's, Angstrom).
    weight : ndarray, shape (n,)
        Their fit weights (1 / sigma).
    t_cols : ndarray, shape (m,)
        The row's columns with a solution, in the scaled variable.
    degree : int
        Degree the line count allows.
    growth : float
        Largest accepted ratio of the two formal errors.
    adequacy : float
        Largest accepted ratio of reduced chi-squares of a lower degree and ``degree``.
    """
    inside = (t_cols >= t.min()) & (t_cols <= t.max())
    if inside.all() or not inside.any():
        return degree

    def chi2red(d):
        c = legendre.legfit(t, y, d, w=weight)
        r = (y - legendre.legval(t, c)) * weight
        return float(np.sum(r * r)) / max(len(t) - d - 1, 1)

    reference = chi2red(degree)
    for d in range(degree, 0, -1):
        if d < degree and chi2red(d) > adequacy * max(reference, 1e-30):
            return d + 1
        cov = fit_covariance(t, weight, d)
        if cov is None:
            continue
        ac = legendre.legvander(t_cols, d)
        var = np.einsum("ci,ij,cj->c", ac, cov, ac)
        if np.sqrt(var[~inside].max()) <= growth * np.sqrt(var[inside].max()):
            return d
    return min(degree, 1)


def monotonic(wave: np.ndarray) -> bool:
    """True when lambda is strictly monotonic in x in every row with data.

    Parameters
    ----------
    wave : ndarray, shape (nrows, ncol)
        lambda(order, column); NaN rows (no trace) and NaN columns are skipped.
    """
    for row in np.atleast_2d(wave):
        v = row[np.isfinite(row)]
        if len(v) < 2:
            continue
        d = np.diff(v)
        if not (np.all(d < 0) or np.all(d > 0)):
            return False
    return True


def weighted_rms(resid_ms: np.ndarray, err_ms: np.ndarray) -> float:
    """Weighted rms sqrt(sum(w r^2) / sum(w)) of residuals (m/s), w = 1 / err^2; NaN for
    none.

    Parameters
    ----------
    resid_ms, err_ms : ndarray, shape (n,)
        Residuals and their 1-sigma errors (m/s).
    """
    w = 1.0 / np.asarray(err_ms, dtype=float) ** 2
    r = np.asarray(resid_ms, dtype=float)
    if len(r) == 0:
        return float("nan")
    return float(np.sqrt(np.sum(w * r * r) / np.sum(w)))


def fit_covariance(t: np.ndarray, weight: np.ndarray, degree: int) -> np.ndarray | None:
    """Covariance (A^T W A)^-1 of a weighted Legendre fit of ``degree`` to points at ``t``
    (scaled variable) with weights ``weight`` (1 / sigma); None when singular.

    Returns
    -------
    ndarray, shape (degree + 1, degree + 1), or None
    """
    a = legendre.legvander(t, degree) * weight[:, None]
    try:
        return np.linalg.inv(a.T @ a)
    except np.linalg.LinAlgError:
        return None


def zero_point_error(
    t: np.ndarray, resid_ms: np.ndarray, err_ms: np.ndarray, t_cols: np.ndarray, degree: int
) -> float:
    """Standard error (m/s) of a row's zero point: the solution's mean over its columns.

    The covariance of the weighted Legendre fit (weights 1 / err^2, in velocity) is scaled
    by the reduced chi-square sum(w r^2) / (n - degree - 1), so the errors are those of the
    scatter actually seen; the zero point's variance is g^T Cov g with g the mean of the
    basis over the row's columns. For equal weights, many lines and lines spread evenly over
    the row this is RMS / sqrt(n); lines bunched in part of the row give the larger error of the
    solution where they are not.

    Parameters
    ----------
    t : ndarray, shape (n,)
        Used lines in the series' scaled variable.
    resid_ms, err_ms : ndarray, shape (n,)
        Their residuals and errors (m/s).
    t_cols : ndarray, shape (m,)
        The row's columns, scaled.
    degree : int
        Degree of the fitted series.
    """
    w = 1.0 / np.asarray(err_ms, dtype=float) ** 2
    r = np.asarray(resid_ms, dtype=float)
    n = len(r)
    cov = fit_covariance(t, np.sqrt(w), degree) if n > degree + 1 else None
    if cov is None:
        return float("nan")
    g = legendre.legvander(t_cols, degree).mean(axis=0)
    return float(np.sqrt(max(g @ cov @ g, 0.0) * np.sum(w * r * r) / (n - degree - 1)))


# --------------------------------------------------------------------------- the fit


def leverage_factor(vander: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Variance of each line's residual in units of its own, for the fit to the ``used``
    lines: 1 - h for a used line, 1 + h for one left out (h its leverage, the diagonal of
    the weighted fit's hat matrix).

    Dividing a residual by the square root studentises it: a line at the end of a row,
    which a high-degree series bends to follow (h near 1, a small residual), is judged by
    how far it lies from the fit of the others. ``vander`` is the weighted design matrix,
    shape (n, degree + 1).
    """
    try:
        r = np.linalg.qr(vander[used], mode="r")
        g = np.linalg.solve(r.T, vander.T).T  # rows: a_i R^-1
    except np.linalg.LinAlgError:
        return np.ones(len(vander))
    h = np.sum(g * g, axis=1)
    return np.where(used, np.clip(1.0 - h, 1e-6, None), 1.0 + h)


LOW_DEGREE = 2  # degree of the first outlier search of fit_legendre_clipped


def _clip_rounds(t, lam, lam_err, w, degree, used, settings: SolveSettings) -> np.ndarray:
    """Fit-and-clip rounds at one degree, from the lines ``used``; returns those kept."""
    vander = legendre.legvander(t, degree) * w[:, None]
    for _ in range(settings.clip_iterations):
        coeffs = legendre.legfit(t[used], lam[used], degree, w=w[used])
        z = (lam - legendre.legval(t, coeffs)) / lam_err
        z /= np.sqrt(leverage_factor(vander, used))
        mad = np.median(np.abs(z[used] - np.median(z[used])))
        scale = 1.4826 * mad if mad > 0 else np.std(z[used])
        limit = settings.clip_nsigma * max(scale, 1e-12)
        # A round leaves out the worst line beyond the limit and any beyond twice it (an
        # outlier distorts the fit and the scatter: the others are judged again without
        # it), and takes back left-out lines now within the limit.
        new = np.abs(z) <= limit
        if (~new & used).any():
            worst = int(np.argmax(np.where(used, np.abs(z), -np.inf)))
            new = (used & (np.abs(z) <= 2 * limit)) | (~used & new)
            new[worst] = False
        if new.sum() < degree + 2 or np.array_equal(new, used):
            break
        used = new
    return used


def fit_legendre_clipped(
    x: np.ndarray,
    lam: np.ndarray,
    lam_err: np.ndarray,
    ncol: int,
    degree: int,
    settings: SolveSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted Legendre fit of y(x) with iterative clipping (y: the lines' wavelengths
    less the prior's there, the correction :func:`solve_row` fits). Residuals are
    studentised (:func:`leverage_factor`) before the robust clip.

    Parameters
    ----------
    x : ndarray, shape (n,)
        Line columns (pixels).
    lam, lam_err : ndarray, shape (n,)
        The values fitted and their errors (Angstrom); weights 1 / lam_err^2.
    ncol : int
        Columns of the row: the series' domain is [0, ncol - 1].
    degree : int
        Legendre degree.
    settings : SolveSettings
        Clipping threshold and rounds.

    Returns
    -------
    coeffs : ndarray, shape (degree + 1,)
        Legendre coefficients in the scaled variable t = 2 x / (ncol - 1) - 1.
    used : ndarray of bool, shape (n,)
        Lines kept by the last round.
    """
    t = 2.0 * x / (ncol - 1) - 1.0
    w = 1.0 / lam_err
    used = np.ones(len(x), dtype=bool)
    # Outliers are sought first with a low degree (the correction to a good prior is
    # smooth), where one bad line cannot bend the series to itself, then at ``degree``,
    # where lines left out may come back.
    for d in sorted({min(degree, LOW_DEGREE), degree}):
        used = _clip_rounds(t, lam, lam_err, w, d, used, settings)
    coeffs = legendre.legfit(t[used], lam[used], degree, w=w[used])
    return coeffs, used


def solve_row(
    x: np.ndarray,
    x_err: np.ndarray,
    lam: np.ndarray,
    prior_row: np.ndarray,
    settings: SolveSettings,
    valid: np.ndarray | None = None,
) -> RowSolution:
    """Fit lambda(x) of one row from its located lines, or keep the prior.

    Parameters
    ----------
    x, x_err : ndarray, shape (n,)
        Fitted line centres and their errors (pixels), only lines with a good fit.
    lam : ndarray, shape (n,)
        Their wavelengths (Angstrom, vacuum).
    prior_row : ndarray, shape (ncol,)
        The prior solution (Angstrom); also gives d lambda / dx for the weights.
    settings : SolveSettings
        Degree, minimum line count and clipping.
    valid : ndarray of bool, shape (ncol,), optional
        The row's columns with data (its trace's extent, finite FLUX): the columns whose
        formal error :func:`guarded_degree` watches. All columns of the prior when None.

    Returns
    -------
    RowSolution
    """
    ncol = len(prior_row)
    n = len(x)
    nanres = np.full(n, np.nan)
    if not np.isfinite(prior_row).any():
        return RowSolution(
            prior_row.copy(), np.zeros(0), 0, np.zeros(n, bool), nanres, np.nan, np.nan,
            STATUS_PRIOR, "no prior solution in this row",
        )  # fmt: skip
    if n < settings.min_lines:
        return RowSolution(
            prior_row.copy(), np.zeros(0), 0, np.zeros(n, bool), nanres, np.nan, np.nan,
            STATUS_PRIOR, f"{n} lines located, fewer than {settings.min_lines}: prior kept",
        )  # fmt: skip
    cols = np.arange(ncol, dtype=float)
    have = np.isfinite(prior_row)
    watch = have if valid is None else have & np.asarray(valid, dtype=bool)
    if not watch.any():
        watch = have
    t_all = 2.0 * cols / (ncol - 1) - 1.0
    t = 2.0 * x / (ncol - 1) - 1.0
    base = np.interp(x, cols[have], prior_row[have])  # the prior at the lines
    # the line list's own uncertainty joins each line's (a comb's modes are exact)
    lam_err = np.hypot(x_err * dispersion(prior_row, x), settings.wave_error_ms * lam / C_MS)
    y = lam - base  # what the series fits: the correction to the prior
    degree = choose_degree(n, settings)
    coeffs, used = fit_legendre_clipped(x, y, lam_err, ncol, degree, settings)
    if used.sum() > degree + 1:  # the guard looks at the lines the clipping kept
        guarded = guarded_degree(
            t[used], y[used], 1.0 / lam_err[used], t_all[watch], degree,
            settings.max_error_growth,
        )  # fmt: skip
        if guarded < degree:
            degree = guarded
            coeffs, used = fit_legendre_clipped(x, y, lam_err, ncol, degree, settings)
    resid = C_MS * (base + legendre.legval(t, coeffs) - lam) / lam
    if used.sum() < settings.min_lines:
        return RowSolution(
            prior_row.copy(), np.zeros(0), 0, np.zeros(n, bool), resid, np.nan, np.nan,
            STATUS_PRIOR,
            f"{int(used.sum())} lines left after clipping, fewer than {settings.min_lines}: "
            "prior kept",
        )  # fmt: skip
    extent = max(float(cols[watch].max() - cols[watch].min()), 1.0)  # the row's own columns
    span = (x[used].max() - x[used].min()) / extent
    if span < settings.min_coverage:
        return RowSolution(
            prior_row.copy(), np.zeros(0), 0, np.zeros(n, bool), resid, np.nan, np.nan,
            STATUS_PRIOR,
            f"lines span {span:.0%} of the row's columns, less than "
            f"{settings.min_coverage:.0%}: prior kept",
        )  # fmt: skip
    err_ms = C_MS * lam_err / lam
    rms = weighted_rms(resid[used], err_ms[used])
    wave = prior_row + legendre.legval(t_all, coeffs)
    sem = zero_point_error(t[used], resid[used], err_ms[used], t_all[watch], degree)
    return RowSolution(wave, coeffs, degree, used, resid, rms, sem, STATUS_FIT)


def solve_rows(
    nrows: int,
    ncol: int,
    line_row: np.ndarray,
    line_wave: np.ndarray,
    fits: LineFits,
    prior: np.ndarray,
    settings: SolveSettings,
    labels: list[str] | None = None,
    line_mode: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> Solution:
    """Solve every row from its lines with a good fit; rows without enough keep the prior.

    Parameters
    ----------
    nrows, ncol : int
        Shape of the spectra.
    line_row : ndarray of int, shape (n,)
        Row of each line.
    line_wave : ndarray, shape (n,)
        Wavelength of each line (Angstrom).
    fits : LineFits
        The line fits (``mu``, ``mu_err``, ``flags``), one per line.
    prior : ndarray, shape (nrows, ncol)
        Prior solutions (Angstrom).
    settings : SolveSettings
    labels : list of str, optional
        A name per row for the log (e.g. "GREEN SCI2 order 4").
    line_mode : ndarray of int, optional
        Comb mode numbers (-1 for catalogue lines).
    valid : ndarray of bool, shape (nrows, ncol), optional
        Columns with data in each row (finite FLUX), see :func:`solve_row`.

    Returns
    -------
    Solution
    """
    wave = np.array(prior, dtype=float, copy=True)
    status, notes = [], []
    nlines = np.zeros(nrows, dtype=np.int32)
    nused = np.zeros(nrows, dtype=np.int32)
    degree = np.zeros(nrows, dtype=np.int32)
    rms = np.full(nrows, np.nan)
    sem = np.full(nrows, np.nan)
    used_all = np.zeros(len(line_row), dtype=bool)
    resid_all = np.full(len(line_row), np.nan)
    good = fits.flags == 0
    order = np.argsort(line_row, kind="stable")
    bounds = np.searchsorted(line_row[order], np.arange(nrows + 1))
    for r in range(nrows):
        idx = order[bounds[r] : bounds[r + 1]]
        idx = idx[good[idx]]
        sol = solve_row(
            fits.mu[idx], fits.mu_err[idx], line_wave[idx], prior[r], settings,
            None if valid is None else valid[r],
        )  # fmt: skip
        wave[r] = sol.wave
        status.append(sol.status)
        notes.append(sol.note)
        nlines[r] = len(idx)
        nused[r] = int(sol.used.sum())
        degree[r] = sol.degree
        rms[r], sem[r] = sol.rms_ms, sol.sem_ms
        used_all[idx] = sol.used
        resid_all[idx] = sol.resid_ms
        if sol.status == STATUS_PRIOR and np.isfinite(prior[r]).any():
            name = labels[r] if labels else f"row {r}"
            log.warning("%s: %s", name, sol.note)
    return Solution(
        wave=wave,
        status=status,
        nlines=nlines,
        nused=nused,
        degree=degree,
        rms_ms=rms,
        sem_ms=sem,
        notes=notes,
        line_row=np.asarray(line_row),
        line_wave=np.asarray(line_wave, dtype=float),
        line_x=fits.mu,
        line_xerr=fits.mu_err,
        line_used=used_all,
        line_resid_ms=resid_all,
        line_mode=(np.full(len(line_row), -1) if line_mode is None else np.asarray(line_mode)),
        fits=fits,
    )


# --------------------------------------------------------------------------- ThAr


@dataclass
class TharSettings:
    """ThAr line location: window half width and position tolerance (pixels), the
    distance (pixels, through the prior) within which two catalogue lines count as a blend,
    and the line-fit limits and solution settings."""

    half_window: int = 5
    max_offset: float = 2.0
    blend_px: float = 4.0
    line: LineFitSettings = field(default_factory=LineFitSettings)
    solve: SolveSettings = field(default_factory=SolveSettings)


def thar_lines(prior: np.ndarray, catalogue: np.ndarray, blend_px: float, margin: float = 0.0):
    """Catalogue lines predicted inside each row through the prior.

    Parameters
    ----------
    prior : ndarray, shape (nrows, ncol)
        Prior solutions (Angstrom).
    catalogue : ndarray, shape (m,)
        Vacuum wavelengths (Angstrom), ascending.
    blend_px : float
        Lines with another catalogue line closer than this (pixels) are blends.
    margin : float
        Keep only lines predicted at least this far (pixels) inside the row.

    Returns
    -------
    rows : ndarray of int
    wave : ndarray
        Catalogue wavelength of each line.
    x_pred : ndarray
        Predicted column.
    blend : ndarray of bool
    """
    rows, waves, xs, blends = [], [], [], []
    ncol = prior.shape[1]
    for r, row in enumerate(prior):
        ok = np.isfinite(row)
        if ok.sum() < 2:
            continue
        lo, hi = np.nanmin(row), np.nanmax(row)
        i0, i1 = np.searchsorted(catalogue, [lo, hi])
        lam = catalogue[i0:i1]
        x = predict_columns(row, lam)
        keep = np.isfinite(x) & (x >= margin) & (x <= ncol - 1 - margin)
        if not keep.any():
            continue
        gap = np.abs(np.diff(x)) < blend_px if len(x) > 1 else np.zeros(0, bool)
        blend = np.zeros(len(x), dtype=bool)
        blend[:-1] |= gap
        blend[1:] |= gap
        rows.append(np.full(int(keep.sum()), r))
        waves.append(lam[keep])
        xs.append(x[keep])
        blends.append(blend[keep])
    if not rows:
        e = np.zeros(0)
        return np.zeros(0, dtype=np.int64), e, e, np.zeros(0, dtype=bool)
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(waves),
        np.concatenate(xs),
        np.concatenate(blends),
    )


def thar_solution(
    flux: np.ndarray,
    var: np.ndarray,
    prior: np.ndarray,
    catalogue: np.ndarray,
    settings: TharSettings | None = None,
    labels: list[str] | None = None,
) -> Solution:
    """ThAr wavelength solution of a stack of spectra.

    Parameters
    ----------
    flux, var : ndarray, shape (nrows, ncol)
        ThAr spectra (any unit) and variances; NaN where there is no data.
    prior : ndarray, shape (nrows, ncol)
        Prior lambda(x) of each row (vacuum Angstrom); NaN rows have no prior.
    catalogue : ndarray
        Vacuum line wavelengths (Angstrom), ascending.
    settings : TharSettings, optional
    labels : list of str, optional
        A name per row for the log.

    Returns
    -------
    Solution
        ``line_mode`` is -1 throughout.
    """
    s = settings or TharSettings()
    flux = np.asarray(flux, dtype=float)
    var = np.asarray(var, dtype=float)
    prior = np.asarray(prior, dtype=float)
    if flux.shape != prior.shape or var.shape != flux.shape:
        raise ValueError(
            f"flux {flux.shape}, var {var.shape} and prior {prior.shape} must have one shape"
        )
    rows, wave, x_pred, blend = thar_lines(prior, catalogue, s.blend_px)
    fits = fit_lines(flux, var, rows, x_pred, s.half_window, s.max_offset, s.line, blend=blend)
    sol = solve_rows(
        flux.shape[0], flux.shape[1], rows, wave, fits, prior, s.solve, labels,
        valid=np.isfinite(flux),
    )  # fmt: skip
    sol.extra["blends"] = int(np.sum((fits.flags & FLAG_BLEND) != 0))
    return sol
