"""Simulated calibration-lamp spectra with known truth: ThAr and the laser frequency comb.

Spectra are rendered per trace (one row per orderlet trace, shape (ntraces, ncol)) from a
true wavelength solution lambda(x) of each trace (vacuum Angstrom, decreasing with x as in
KPF), in electrons per extracted pixel:

- ThAr: lines at the wavelengths of a line list (KPF's density at full size: about 1.2 lines
  per Angstrom below 6000 A, 0.4 above); where a trace would get fewer than
  ``min_lines_per_trace`` lines (small simulated CCDs, whose orders span a few
  Angstrom) extra lines, evenly spread in ln(lambda), are added. Strengths are log-uniform
  over three decades; a fraction of lines get a companion closer than a pixel (a blend, both in
  the catalogue). The catalogue handed to the pipeline carries wavelength errors (Gaussian,
  ``catalogue_error_ms``) and a few spurious entries absent from the lamp.
- LFC: every mode f0 + n * f_rep inside each trace, with a smooth envelope that is dark
  below ``dark_below`` Angstrom (the bluest orders get no comb light, as in KPF) and a
  per-mode amplitude scatter.

Lines are Gaussians of sigma 1.1-1.5 pixels (varying slowly along each trace) integrated over
the pixels. Noise is Poisson photon noise plus Gaussian read noise of the extracted pixel;
the variance handed on is the expected one (as from a master's uncertainty image).

The module also gives the photon-noise limits the tests compare against: the Cramer-Rao
bound of a line centre and its propagation through a weighted Legendre fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

C_MS = 299_792_458.0
C_AS = C_MS * 1e10  # Angstrom/s
V_PX = 870.0  # m/s per pixel, KPF's dispersion
RENDER_HALF = 10  # pixels either side of a line centre rendered


@dataclass
class LampLines:
    """Lines of a simulated lamp: what is really in the lamp, and what the pipeline gets.

    ``wave`` (Angstrom, vacuum) and ``flux`` (electrons per line in a trace of throughput 1)
    are the lamp's lines; ``mode`` the comb mode number of each (-1 for ThAr);
    ``catalogue`` the line list handed to the pipeline (with errors and spurious entries;
    ascending); ``blend`` marks lines with a companion closer than a pixel.
    """

    wave: np.ndarray
    flux: np.ndarray
    mode: np.ndarray
    catalogue: np.ndarray
    blend: np.ndarray


@dataclass
class RenderedLines:
    """Where each lamp line falls in each trace: one entry per (trace, line) pair."""

    row: np.ndarray
    wave: np.ndarray
    x: np.ndarray
    flux: np.ndarray
    sigma: np.ndarray
    mode: np.ndarray


def _pixel_gaussian(x, amp, mu, sigma):
    return amp * (ndtr((x + 0.5 - mu) / sigma) - ndtr((x - 0.5 - mu) / sigma))


def true_columns(wave_row: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Column where each wavelength falls in a trace of known lambda(x) (NaN: off the trace).

    Parameters
    ----------
    wave_row : ndarray, shape (ncol,)
        True lambda at each column (Angstrom), monotonic.
    lines : ndarray
        Wavelengths (Angstrom).
    """
    cols = np.arange(len(wave_row), dtype=float)
    w, c = (wave_row[::-1], cols[::-1]) if wave_row[-1] < wave_row[0] else (wave_row, cols)
    # Invert the smooth solution with a local quadratic step after linear interpolation.
    x = np.interp(lines, w, c, left=np.nan, right=np.nan)
    ok = np.isfinite(x)
    i = np.clip(np.floor(x[ok]).astype(int), 0, len(wave_row) - 2)
    for _ in range(3):
        xi = x[ok]
        i = np.clip(np.floor(xi).astype(int), 1, len(wave_row) - 2)
        f = xi - i
        w0, wm, wp = wave_row[i], wave_row[i - 1], wave_row[i + 1]
        lam = w0 + f * (wp - wm) / 2 + f * f * (wp - 2 * w0 + wm) / 2
        slope = (wp - wm) / 2 + f * (wp - 2 * w0 + wm)
        x[ok] = xi - (lam - lines[ok]) / slope
    return x


def line_sigma(nrows: int, ncol: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sigma of the lines (pixels) at every column of every trace: 1.1-1.5 px,
    varying slowly along each trace. Shape (nrows, ncol)."""
    x = np.arange(ncol) / max(ncol - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, (nrows, 1))
    freq = rng.uniform(0.4, 1.0, (nrows, 1))
    return 1.3 + 0.2 * np.sin(2 * np.pi * freq * x[None, :] + phase)


def thar_lines(
    linelist: np.ndarray,
    wave_truth: np.ndarray,
    rng: np.random.Generator,
    min_lines_per_trace: int = 16,
    catalogue_error_ms: float = 3.0,
    spurious_fraction: float = 0.03,
    blend_fraction: float = 0.05,
    flux_range: tuple[float, float] = (2e3, 2e6),
) -> LampLines:
    """ThAr lamp lines at a line list's wavelengths, and the catalogue the pipeline gets.

    Parameters
    ----------
    linelist : ndarray
        Vacuum wavelengths (Angstrom) of a ThAr line list.
    wave_truth : ndarray, shape (ntraces, ncol)
        True lambda(x) of every trace (Angstrom).
    rng : numpy.random.Generator
    min_lines_per_trace : int
        Where a trace would hold fewer lines of the list, extra lines (evenly spread in
        ln lambda, jittered by a quarter spacing) are added until it holds this many.
        KPF's list gives 25 (order 71) to 100 (order 137) lines per full-size trace, so
        full-size traces keep the list's density; small simulated CCDs (orders a few
        Angstrom long) get raised density.
    catalogue_error_ms : float
        rms error (m/s) of the catalogue wavelengths against the lamp's.
    spurious_fraction : float
        Catalogue entries added that the lamp does not have (fraction of its lines).
    blend_fraction : float
        Fraction of lines given a companion 0.3-0.9 px away (in the catalogue too).
    flux_range : tuple of float
        Line fluxes (electrons, throughput 1) are log-uniform in this range.

    Returns
    -------
    LampLines
    """
    ok = np.isfinite(wave_truth)
    lo, hi = float(np.min(wave_truth[ok])), float(np.max(wave_truth[ok]))
    waves = list(linelist[(linelist >= lo) & (linelist <= hi)])
    waves = np.array(waves, dtype=float)
    for row in wave_truth:
        if not np.isfinite(row).all():
            continue
        rlo, rhi = float(row.min()), float(row.max())
        have = int(np.sum((waves >= rlo) & (waves <= rhi)))
        need = min_lines_per_trace - have
        if need > 0:
            # evenly spread in ln lambda with a jitter of a quarter spacing: no extra line
            # lands within half a spacing of another (on a small CCD the list's own lines
            # are few, and random ones would make blends the pipeline must leave out)
            step = (np.log(rhi) - np.log(rlo)) / need
            grid = np.log(rlo) + step * (np.arange(need) + 0.5)
            extra = np.exp(grid + rng.uniform(-0.25, 0.25, need) * step)
            waves = np.concatenate([waves, extra])
    waves = np.sort(waves)
    nblend = int(round(blend_fraction * len(waves)))
    base = rng.choice(len(waves), size=nblend, replace=False) if nblend else np.zeros(0, int)
    sep_px = rng.uniform(0.3, 0.9, nblend) * rng.choice([-1.0, 1.0], nblend)
    companions = waves[base] * (1.0 + sep_px * V_PX / C_MS)
    blend = np.zeros(len(waves) + nblend, dtype=bool)
    blend[base] = True
    blend[len(waves) :] = True
    waves = np.concatenate([waves, companions])
    order = np.argsort(waves)
    waves, blend = waves[order], blend[order]
    flux = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), len(waves)))
    cat = waves * (1.0 + rng.normal(0.0, catalogue_error_ms, len(waves)) / C_MS)
    nspur = int(round(spurious_fraction * len(waves)))
    spurious = np.exp(rng.uniform(np.log(lo), np.log(hi), nspur))
    catalogue = np.sort(np.concatenate([cat, spurious]))
    return LampLines(waves, flux, np.full(len(waves), -1), catalogue, blend)


def lfc_envelope(wave: np.ndarray, dark_below: float, ramp: float = 150.0) -> np.ndarray:
    """Relative comb brightness: 0 below ``dark_below`` (Angstrom), rising smoothly over
    ``ramp`` Angstrom to a broad plateau that falls to 0.6 at 9000 A."""
    t = np.clip((np.asarray(wave) - dark_below) / ramp, 0.0, 1.0)
    rise = t * t * (3 - 2 * t)
    return rise * (1.0 - 0.4 * np.clip((np.asarray(wave) - 5500.0) / 3500.0, 0, 1) ** 2)


def lfc_lines(
    wave_truth: np.ndarray,
    rng: np.random.Generator,
    f0_hz: float = 5.22e9,
    frep_hz: float = 2.0e10,
    dark_below: float = 4900.0,
    peak_flux: float = 2e5,
    scatter: float = 0.1,
) -> LampLines:
    """Every comb mode f0 + n * f_rep inside the traces, with a smooth envelope.

    Parameters
    ----------
    wave_truth : ndarray, shape (ntraces, ncol)
        True lambda(x) (Angstrom).
    rng : numpy.random.Generator
    f0_hz, frep_hz : float
        Offset and repetition frequencies (Hz).
    dark_below : float
        No comb light below this wavelength (Angstrom).
    peak_flux : float
        Flux of a mode at the envelope's peak (electrons, throughput 1).
    scatter : float
        Relative rms scatter of the mode fluxes.

    Returns
    -------
    LampLines
        ``catalogue`` holds the mode wavelengths (exact); ``mode`` the mode numbers.
    """
    ok = np.isfinite(wave_truth)
    lo, hi = float(np.min(wave_truth[ok])), float(np.max(wave_truth[ok]))
    n = np.arange(int(np.ceil((C_AS / hi - f0_hz) / frep_hz)), int((C_AS / lo - f0_hz) / frep_hz))
    wave = C_AS / (f0_hz + n * frep_hz)
    order = np.argsort(wave)
    wave, n = wave[order], n[order]
    flux = peak_flux * lfc_envelope(wave, dark_below)
    flux = flux * np.clip(1.0 + scatter * rng.normal(size=len(wave)), 0.2, None)
    return LampLines(wave, flux, n, wave.copy(), np.zeros(len(wave), dtype=bool))


def place_lines(
    wave_truth: np.ndarray, lines: LampLines, sigma: np.ndarray, throughput: np.ndarray
) -> RenderedLines:
    """Column, flux and width of every lamp line in every trace.

    Parameters
    ----------
    wave_truth : ndarray, shape (ntraces, ncol)
    lines : LampLines
    sigma : ndarray, shape (ntraces, ncol)
        Line sigma (pixels) along each trace.
    throughput : ndarray, shape (ntraces,)
        Relative throughput of each trace (multiplies the line fluxes).
    """
    rows, waves, xs, fl, sg, md = [], [], [], [], [], []
    cols = np.arange(wave_truth.shape[1], dtype=float)
    for r, row in enumerate(wave_truth):
        if not np.isfinite(row).all():
            continue
        sel = (lines.wave >= row.min()) & (lines.wave <= row.max())
        x = true_columns(row, lines.wave[sel])
        good = np.isfinite(x)
        rows.append(np.full(int(good.sum()), r))
        waves.append(lines.wave[sel][good])
        xs.append(x[good])
        fl.append(lines.flux[sel][good] * throughput[r])
        sg.append(np.interp(x[good], cols, sigma[r]))
        md.append(lines.mode[sel][good])
    cat = [np.concatenate(a) if a else np.zeros(0) for a in (rows, waves, xs, fl, sg, md)]
    return RenderedLines(
        cat[0].astype(np.int64), cat[1], cat[2], cat[3], cat[4], cat[5].astype(np.int64)
    )


def render(shape: tuple[int, int], placed: RenderedLines, background: float = 0.0) -> np.ndarray:
    """Expected spectrum (electrons per pixel) of the placed lines on a flat background.

    Returns
    -------
    ndarray, shape ``shape``
    """
    nrows, ncol = shape
    reach = np.arange(-RENDER_HALF, RENDER_HALF + 1)
    cols = np.rint(placed.x).astype(np.int64)[:, None] + reach[None, :]
    inside = (cols >= 0) & (cols < ncol)
    prof = _pixel_gaussian(cols, placed.flux[:, None], placed.x[:, None], placed.sigma[:, None])
    flat = placed.row[:, None] * ncol + np.clip(cols, 0, ncol - 1)
    out = np.bincount(flat[inside], weights=prof[inside], minlength=nrows * ncol)
    return out.reshape(nrows, ncol) + background


def observe(
    expected: np.ndarray,
    read_noise: float,
    rng: np.random.Generator,
    saturation: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy spectrum and its variance.

    Parameters
    ----------
    expected : ndarray
        Expected electrons per pixel.
    read_noise : float
        Read noise of an extracted pixel (electrons rms; the aperture's pixels together).
    rng : numpy.random.Generator
    saturation : float, optional
        Pixels are clipped at this level (electrons), as a saturated line would be.

    Returns
    -------
    flux, var : ndarray
        Poisson photon noise plus Gaussian read noise; var = expected + read_noise^2.
    """
    flux = rng.poisson(np.clip(expected, 0, None)).astype(float)
    flux += rng.normal(0.0, read_noise, expected.shape)
    if saturation is not None:
        flux = np.minimum(flux, saturation)
    return flux, expected + read_noise**2


# --------------------------------------------------------------------------- noise limits


def centre_error_limit(
    flux: np.ndarray,
    sigma: np.ndarray,
    x: np.ndarray,
    background: float,
    read_noise: float,
    half: int,
    relative: np.ndarray | None = None,
) -> np.ndarray:
    """Cramer-Rao bound of a line centre (pixels) for the photon and read noise.

    The model is a pixel-integrated Gaussian plus a linear background fitted over
    ``round(x) +- half`` pixels, all five parameters free; the Fisher matrix uses the
    expected variance ``model + read_noise^2`` (derivatives by central differences).

    Parameters
    ----------
    flux, sigma, x : ndarray, shape (n,)
        Line flux (electrons), sigma (pixels) and centre (column).
    background : float
        Background per pixel (electrons).
    read_noise : float
        Read noise per pixel (electrons).
    half : int
        Window half width (pixels).
    relative : ndarray, shape (n,), optional
        A noise proportional to the signal (relative rms per pixel): the photon noise of a
        flat the spectrum was divided by. Its variance (relative * model)^2 joins.

    Returns
    -------
    ndarray, shape (n,)
        Smallest achievable standard deviation of the fitted centre (pixels).
    """
    cols = np.rint(x)[:, None] + np.arange(-half, half + 1)[None, :]
    dx = cols - np.rint(x)[:, None]
    p = np.stack([flux, x, sigma, np.full_like(x, background), np.zeros_like(x)], axis=1)

    def model(q):
        return _pixel_gaussian(cols, q[:, 0:1], q[:, 1:2], q[:, 2:3]) + q[:, 3:4] + q[:, 4:5] * dx

    one = np.ones_like(x)
    steps = np.stack([flux * 1e-4, one * 1e-4, sigma * 1e-4, one * 1e-3, one * 1e-4], axis=1)
    jac = np.empty(cols.shape + (5,))
    for k in range(5):
        up, dn = p.copy(), p.copy()
        up[:, k] += steps[:, k]
        dn[:, k] -= steps[:, k]
        jac[..., k] = (model(up) - model(dn)) / (2 * steps[:, k : k + 1])
    m = model(p)
    var = m + read_noise**2
    if relative is not None:
        var = var + (np.asarray(relative, dtype=float)[:, None] * m) ** 2
    fisher = np.einsum("nwi,nwj->nij", jac / var[..., None], jac)
    with np.errstate(invalid="ignore"):  # a line too faint to constrain: NaN
        return np.sqrt(np.linalg.inv(fisher)[:, 1, 1])


def solution_error_limit(
    x: np.ndarray,
    sigma_lambda: np.ndarray,
    ncol: int,
    degree: int,
    wave_row: np.ndarray,
    columns: np.ndarray | None = None,
) -> float:
    """rms over the columns of the velocity error of a weighted Legendre fit.

    For lines at columns ``x`` with independent wavelength errors ``sigma_lambda``
    (Angstrom), the fit's covariance is (A^T W A)^-1 with the Legendre design matrix A and
    W = 1 / sigma_lambda^2; its variance at every column (or at ``columns``: a trace's
    extent) is propagated and returned as sqrt(mean over them of
    (c * sigma_fit(x) / lambda(x))^2) in m/s.
    """
    from numpy.polynomial import legendre

    cols = np.arange(ncol) if columns is None else np.asarray(columns)
    t = 2.0 * x / (ncol - 1) - 1.0
    a = legendre.legvander(t, degree)
    cov = np.linalg.inv((a / sigma_lambda[:, None] ** 2).T @ a)
    ac = legendre.legvander(2.0 * cols / (ncol - 1) - 1.0, degree)
    var = np.einsum("ci,ij,cj->c", ac, cov, ac)
    return float(np.sqrt(np.mean(var * (C_MS / wave_row[cols]) ** 2)))


# --------------------------------------------------------------------------- simulated nights

GREEN_RED_SPLIT = 5500.0  # Angstrom: GREEN's traces lie bluer, RED's redder
THAR_RELATIVE_FLUX = (1.0, 300.0)  # ThAr line strengths, log-uniform (2.5 decades)
NIGHT_CATALOGUE_ERROR_MS = 3.0  # catalogue errors of a simulated night's ThAr list


def lamp_kind(obj: str) -> str | None:
    """``thar`` or ``lfc`` when an arc lamp's OBJECT names one (``...thar...``,
    ``...lfc...``, case ignored), else None (a lamp of random lines)."""
    low = obj.lower()
    if "thar" in low:
        return "thar"
    if "lfc" in low:
        return "lfc"
    return None


def shipped_linelist() -> np.ndarray:
    """The ThAr line list shipped with kpf-masters (vacuum Angstrom, ascending)."""
    from importlib import resources

    path = resources.files("kpfmasters") / "data" / "thar_vacuum_lines.txt"
    rows = [r.split("#", 1)[0].split() for r in path.read_text().splitlines()]
    return np.sort(np.array([float(r[0]) for r in rows if r]))


def lamp_light(
    obj: str,
    wave: np.ndarray,
    order: np.ndarray,
    rng: np.random.Generator,
    dark_fraction: float = 12 / 35,
) -> tuple[np.ndarray, LampLines] | None:
    """Per-trace light of a ThAr or comb lamp (relative units), or None for other lamps.

    Parameters
    ----------
    obj : str
        The lamp's OBJECT.
    wave : ndarray, shape (ntraces, ncol)
        True lambda(x) of each trace (Angstrom).
    order : ndarray of int, shape (ntraces,)
        Order index of each trace (0 = the bluest).
    rng : numpy.random.Generator
    dark_fraction : float
        Comb: this fraction of the bluest orders of GREEN (at least one) gets no light, as
        KPF's 12 of 35; a CCD whose orders all lie redward of ``dark_below`` is lit
        throughout. Applied only when the bluest order is bluer than ``GREEN_RED_SPLIT``
        (GREEN: KPF's RED CCD starts near 5950 A, so its bluest traces dip below 6000 A,
        and the comb lights RED throughout).

    Returns
    -------
    light : ndarray, shape (ntraces, ncol)
        Relative flux per column (the brightest pixel is 1).
    lines : LampLines
        The lamp's lines; ``catalogue`` is what the pipeline is handed (ThAr: the shipped
        list's lines and the extra ones, with ``NIGHT_CATALOGUE_ERROR_MS`` errors and a few
        spurious entries; comb: the exact modes).
    """
    kind = lamp_kind(obj)
    if kind is None:
        return None
    nrows, ncol = wave.shape
    sigma = line_sigma(nrows, ncol, rng)
    if kind == "thar":
        lines = thar_lines(
            shipped_linelist(), wave, rng, catalogue_error_ms=NIGHT_CATALOGUE_ERROR_MS,
            flux_range=THAR_RELATIVE_FLUX,
        )  # fmt: skip
    else:
        dark_below = 0.0
        if np.nanmin(wave) < GREEN_RED_SPLIT:
            n_orders = int(order.max()) + 1
            k = max(1, int(round(dark_fraction * n_orders)))
            dark_below = float(np.nanmax(wave[order < k]))
        lines = lfc_lines(wave, rng, dark_below=dark_below, peak_flux=1.0)
    placed = place_lines(wave, lines, sigma, np.ones(nrows))
    light = render((nrows, ncol), placed)
    return light / max(float(light.max()), 1e-30), lines
