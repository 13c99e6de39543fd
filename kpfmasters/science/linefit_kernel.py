"""The numba kernel of the batched line fits: one damped Gauss-Newton fit per line, lines
spread over the numba threads.

Model of a window of pixels (columns ``x0 + k``, pixel ``k`` covering [x - 0.5, x + 0.5])::

    amp * (Phi((x + 0.5 - mu) / sigma) - Phi((x - 0.5 - mu) / sigma)) + b0 + b1 * (x - xref)

Phi and the Gaussian density are evaluated once per pixel edge (``w + 1`` edges for ``w``
pixels) and shared by the two pixels meeting there. Each step solves the 5 x 5 normal
equations scaled to a unit diagonal with Levenberg-Marquardt damping ``lam`` (x 10 after a
rejected step, / 10 after an accepted one); a line stops when its centre and width steps are
below 1e-5 pixel. Numba compiles it once and caches the machine code on disk (importing
``kpfmasters.stack_kernel`` first settles where).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

# stack_kernel settles numba's cache directory (re-reading numba's configuration if needed).
from kpfmasters.science.stack_kernel import _jit

NPAR = 5
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


@_jit()
def _evaluate(x0, w, y, ivar, xref, p, want_jac, jac, model):
    """Model (and Jacobian when ``want_jac``) of one window; returns chi-square."""
    amp, mu, sig = p[0], p[1], p[2]
    inv_s = 1.0 / sig
    # edge 0
    u_prev = (x0 - 0.5 - mu) * inv_s
    phi_prev = 0.5 * math.erfc(-u_prev * _INV_SQRT2)
    e_prev = math.exp(-0.5 * u_prev * u_prev) * _INV_SQRT2PI
    chi2 = 0.0
    for k in range(w):
        x = x0 + k
        u = (x + 0.5 - mu) * inv_s
        phi = 0.5 * math.erfc(-u * _INV_SQRT2)
        e = math.exp(-0.5 * u * u) * _INV_SQRT2PI
        g = phi - phi_prev
        dx = x - xref
        m = amp * g + p[3] + p[4] * dx
        model[k] = m
        r = y[k] - m
        chi2 += ivar[k] * r * r
        if want_jac:
            jac[k, 0] = g
            jac[k, 1] = -amp * (e - e_prev) * inv_s
            jac[k, 2] = -amp * (u * e - u_prev * e_prev) * inv_s
            jac[k, 3] = 1.0
            jac[k, 4] = dx
        u_prev, phi_prev, e_prev = u, phi, e
    return chi2


@_jit()
def _solve5(a, b, out):
    """Solve a x = b for a 5 x 5 matrix (Gaussian elimination, partial pivoting; a, b are
    overwritten). Returns False when singular."""
    n = NPAR
    for c in range(n):
        piv = c
        big = abs(a[c, c])
        for r in range(c + 1, n):
            if abs(a[r, c]) > big:
                big = abs(a[r, c])
                piv = r
        if not big > 0.0:
            return False
        if piv != c:
            for k in range(n):
                t = a[c, k]
                a[c, k] = a[piv, k]
                a[piv, k] = t
            t = b[c]
            b[c] = b[piv]
            b[piv] = t
        for r in range(c + 1, n):
            f = a[r, c] / a[c, c]
            if f != 0.0:
                for k in range(c, n):
                    a[r, k] -= f * a[c, k]
                b[r] -= f * b[c]
    for c in range(n - 1, -1, -1):
        s = b[c]
        for k in range(c + 1, n):
            s -= a[c, k] * out[k]
        out[c] = s / a[c, c]
    return True


@_jit(parallel=True)
def fit_kernel(x0, width, y, ivar, xref, p, iterations, cov, chi2_out, steps):
    """Fit every line in place.

    Parameters
    ----------
    x0 : int64 (n,)
        First column of each window.
    width : int64 (n,)
        Pixels of each window (at most ``y.shape[1]``).
    y, ivar : float64 (n, wmax)
        Window fluxes and inverse variances (0: pixel not used).
    xref : float64 (n,)
        Background reference column of each line.
    p : float64 (n, 5)
        Starting amp, mu, sigma, b0, b1; overwritten with the fit.
    iterations : int
        Largest number of steps.
    cov : float64 (n, 5, 5)
        Out: formal covariance (NaN when singular).
    chi2_out : float64 (n,)
        Out: chi-square at the fit.
    steps : float64 (n,)
        Out: size of the last accepted centre step (pixels); inf when none was accepted.
    """
    n = len(x0)
    wmax = y.shape[1]
    for i in prange(n):
        w = width[i]
        jac = np.empty((wmax, NPAR))
        model = np.empty(wmax)
        tmodel = np.empty(wmax)
        h = np.empty((NPAR, NPAR))
        a = np.empty((NPAR, NPAR))
        g = np.empty(NPAR)
        b = np.empty(NPAR)
        d = np.empty(NPAR)
        dp = np.empty(NPAR)
        pi = p[i].copy()
        trial = np.empty(NPAR)
        lam = 1e-3
        last_step = np.inf
        chi2 = _evaluate(x0[i], w, y[i], ivar[i], xref[i], pi, True, jac, model)
        fresh = True
        for _ in range(iterations):
            if fresh:
                for r in range(NPAR):
                    gr = 0.0
                    for k in range(w):
                        gr += jac[k, r] * ivar[i, k] * (y[i, k] - model[k])
                    g[r] = gr
                    for c in range(r, NPAR):
                        s = 0.0
                        for k in range(w):
                            s += jac[k, r] * ivar[i, k] * jac[k, c]
                        h[r, c] = s
                        h[c, r] = s
                ok = True
                for r in range(NPAR):
                    if not (h[r, r] > 0.0) or not math.isfinite(h[r, r]):
                        ok = False
                    d[r] = math.sqrt(abs(h[r, r])) if h[r, r] > 0.0 else 1.0
                if not ok:
                    break
                fresh = False
            for r in range(NPAR):
                for c in range(NPAR):
                    a[r, c] = h[r, c] / (d[r] * d[c])
                a[r, r] += lam + 1e-12
                b[r] = g[r] / d[r]
            if not _solve5(a, b, dp):
                break
            for r in range(NPAR):
                dp[r] /= d[r]
                trial[r] = pi[r] + dp[r]
            trial[2] = min(max(trial[2], 0.2), 10.0)
            tchi2 = _evaluate(x0[i], w, y[i], ivar[i], xref[i], trial, False, jac, tmodel)
            if tchi2 <= chi2:
                for r in range(NPAR):
                    pi[r] = trial[r]
                chi2 = _evaluate(x0[i], w, y[i], ivar[i], xref[i], pi, True, jac, model)
                fresh = True
                lam = max(lam / 10.0, 1e-7)
                last_step = abs(dp[1])
                if abs(dp[1]) < 1e-5 and abs(dp[2]) < 1e-5:
                    break
            else:
                lam *= 10.0
                if lam > 1e7:
                    break
        for r in range(NPAR):
            p[i, r] = pi[r]
        chi2_out[i] = chi2
        steps[i] = last_step
        # covariance: inverse of J^T W J at the fit, scaled to a unit diagonal
        for r in range(NPAR):
            for c in range(r, NPAR):
                s = 0.0
                for k in range(w):
                    s += jac[k, r] * ivar[i, k] * jac[k, c]
                h[r, c] = s
                h[c, r] = s
        good = True
        for r in range(NPAR):
            if not (h[r, r] > 0.0) or not math.isfinite(h[r, r]):
                good = False
                d[r] = 1.0
            else:
                d[r] = math.sqrt(h[r, r])
        if good:
            for col in range(NPAR):
                for r in range(NPAR):
                    for c in range(NPAR):
                        a[r, c] = h[r, c] / (d[r] * d[c])
                    a[r, r] += 1e-13
                    b[r] = 1.0 if r == col else 0.0
                if not _solve5(a, b, dp):
                    good = False
                    break
                for r in range(NPAR):
                    cov[i, r, col] = dp[r] / (d[r] * d[col])
                    if not (abs(dp[r]) < 1e12):
                        good = False
        if not good:
            for r in range(NPAR):
                for c in range(NPAR):
                    cov[i, r, c] = np.nan
