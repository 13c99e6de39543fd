"""Drift of the spectrograph against a reference wavelength solution, from one lamp's lines.

For each located line of known wavelength lambda_line at column X (error X_ERR), the
reference solution lambda_ref(x) gives the velocity

    v = c * (lambda_ref(X) - lambda_line) / lambda_line          (m/s)

positive when the reference gives longer wavelengths than the lamp shows (as a
cross-correlation RV of the lamp against the reference would read). Per order and orderlet
the drift is the inverse-variance weighted mean of v over the lines, with
sigma_v = c * X_ERR * |d lambda_ref / dx| / lambda_line; its error is 1 / sqrt(sum w),
scaled by sqrt(chi2_red) of the lines about the mean when that exceeds 1. Per CCD the drift is
the weighted mean of the rows' drifts, with the same treatment of the scatter between rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpfmasters.science.wls import C_MS, dispersion


@dataclass
class DriftRows:
    """Drift per row: ``rv_ms``, ``rv_err_ms`` (m/s) and ``nlines``, shape (nrows,);
    rows without lines hold NaN and 0."""

    rv_ms: np.ndarray
    rv_err_ms: np.ndarray
    nlines: np.ndarray


def weighted_mean(values: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Inverse-variance weighted mean and its error, scaled by sqrt(chi2_red) when > 1.

    Parameters
    ----------
    values, errors : ndarray, shape (n,)
        Values and 1-sigma errors (same unit).

    Returns
    -------
    mean, error : float
        NaN, NaN for no values.
    """
    v = np.asarray(values, dtype=float)
    e = np.asarray(errors, dtype=float)
    ok = np.isfinite(v) & np.isfinite(e) & (e > 0)
    v, e = v[ok], e[ok]
    if len(v) == 0:
        return float("nan"), float("nan")
    w = 1.0 / e**2
    mean = float(np.sum(w * v) / np.sum(w))
    err = float(1.0 / np.sqrt(np.sum(w)))
    if len(v) > 1:
        chi2red = float(np.sum(w * (v - mean) ** 2) / (len(v) - 1))
        err *= np.sqrt(max(chi2red, 1.0))
    return mean, err


def line_velocities(
    x: np.ndarray, x_err: np.ndarray, wave: np.ndarray, reference_row: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Velocity of each line against a reference solution, and its error.

    Parameters
    ----------
    x, x_err : ndarray, shape (n,)
        Line columns and errors (pixels).
    wave : ndarray, shape (n,)
        Line wavelengths (Angstrom).
    reference_row : ndarray, shape (ncol,)
        lambda_ref at each column (Angstrom).

    Returns
    -------
    v, v_err : ndarray, shape (n,)
        m/s.
    """
    cols = np.arange(len(reference_row), dtype=float)
    lam_ref = np.interp(x, cols, reference_row)
    v = C_MS * (lam_ref - wave) / wave
    v_err = C_MS * x_err * dispersion(reference_row, x) / wave
    return v, v_err


def drift_rows(
    nrows: int,
    line_row: np.ndarray,
    x: np.ndarray,
    x_err: np.ndarray,
    wave: np.ndarray,
    use: np.ndarray,
    reference: np.ndarray,
) -> DriftRows:
    """Drift of every row against the reference from its lines.

    Parameters
    ----------
    nrows : int
    line_row : ndarray of int, shape (n,)
    x, x_err, wave : ndarray, shape (n,)
        Line columns, errors (pixels) and wavelengths (Angstrom).
    use : ndarray of bool, shape (n,)
        Lines to use (e.g. those kept by the wavelength solution).
    reference : ndarray, shape (nrows, ncol)
        Reference solutions (Angstrom).

    Returns
    -------
    DriftRows
    """
    rv = np.full(nrows, np.nan)
    err = np.full(nrows, np.nan)
    count = np.zeros(nrows, dtype=np.int32)
    for r in range(nrows):
        sel = (line_row == r) & use
        if not sel.any() or np.isfinite(reference[r]).sum() < 2:
            continue
        v, ve = line_velocities(x[sel], x_err[sel], wave[sel], reference[r])
        rv[r], err[r] = weighted_mean(v, ve)
        count[r] = int(sel.sum())
    return DriftRows(rv, err, count)
