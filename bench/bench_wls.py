"""Benchmark: a night's wavelength solutions at full size, against a per-line curve_fit loop.

A full-size simulated night is rendered as 1D spectra (``kpfmasters.sim.lamps``, the true
lambda(x) of ``tests/wavetruth.py``): GREEN 35 orders (echelle 137-103) and RED 32 orders
(102-71), five orderlets each, 4080 columns; a ThAr lamp with the shipped line list's lines
and an LFC with every mode (the bluest GREEN orders dark). Then, timed in this process:

- ``kpf``: the ThAr solution of both CCDs (every catalogue line predicted through a prior
  offset by 250 m/s, fitted, lambda(x) per order and orderlet), then the LFC solution of both
  CCDs with the ThAr solution as prior (every mode fitted, mode numbers with the whole-order
  shift test, lambda(x)): all line fits and solutions of the night, wall time.
- ``curve_fit``: KPF's approach, one ``scipy.optimize.curve_fit`` call per line (pixel-
  integrated Gaussian + constant, weights from the variance, ``absolute_sigma``) over the same
  windows; run on a random subsample of ``--loop-sample`` lines and extrapolated to the
  night's line count (said so in the table). Line fits only: no solutions.

The accuracy of both on the sample (rms of (x_fit - x_true) / formal error) is printed too.
``--quick`` uses 8 + 6 orders. The table is printed and appended to ``bench/RESULTS.md``
(``--no-record`` to skip).

    python bench/bench_wls.py                 # full size, 3000-line curve_fit sample
    python bench/bench_wls.py --quick --no-record
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 GREEN + 6 RED orders")
    parser.add_argument("--loop-sample", type=int, default=3000, help="lines fitted by curve_fit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="kpf runs (median)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    from scipy.optimize import curve_fit
    from scipy.special import ndtr

    from kpfmasters.science import lfc, wls
    from tests.wavetruth import LampChip

    catalogue = wls.read_linelist(REPO / "kpfmasters" / "data" / "thar_vacuum_lines.txt")
    orders = {"GREEN": 8, "RED": 6} if args.quick else {"GREEN": 35, "RED": 32}
    t0 = time.perf_counter()
    chips = {
        name: LampChip(name, n, 4080, seed=20 + i, linelist=catalogue, thar_flux=(1e3, 3e5),
                       lfc_dark_below=(6.140e5 / 125 if name == "GREEN" else 0.0))
        for i, (name, n) in enumerate(orders.items())
    }  # fmt: skip
    t_sim = time.perf_counter() - t0

    def reorder(rows, n):
        return np.vstack([rows[k::5] for k in range(5)])

    def night():
        out = {}
        for name, c in chips.items():
            n = int(c.order.max()) + 1
            flux, var = reorder(c.thar_flux, n), reorder(c.thar_var, n)
            prior = reorder(c.wave, n) * (1 + 250.0 / wls.C_MS)
            cat = c.thar.catalogue
            out[name, "thar"] = wls.thar_solution(flux, var, prior, cat)
        for name, c in chips.items():
            n = int(c.order.max()) + 1
            order = np.tile(np.arange(n), 5)
            orderlet = [o for o in ("SKY", "SCI1", "SCI2", "SCI3", "CAL") for _ in range(n)]
            out[name, "lfc"] = lfc.lfc_solution(
                reorder(c.lfc_flux, n), reorder(c.lfc_var, n), out[name, "thar"].wave,
                order, orderlet, 5.22e9, 2.0e10,
            )  # fmt: skip
        return out

    import logging

    logging.getLogger("kpfmasters").setLevel(logging.ERROR)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        sols = night()
        times.append(time.perf_counter() - t)
    t_kpf = float(np.median(times))
    n_thar = sum(len(sols[c, "thar"].line_row) for c in chips)
    n_lfc = sum(len(sols[c, "lfc"].line_row) for c in chips)
    good_thar = sum(int(np.sum(sols[c, "thar"].fits.flags == 0)) for c in chips)
    good_lfc = sum(int(np.sum(sols[c, "lfc"].fits.flags == 0)) for c in chips)
    fitted = {
        k: sum(sum(s == "fit" for s in sols[c, k].status) for c in chips) for k in ("thar", "lfc")
    }
    rows = sum(len(sols[c, "thar"].status) for c in chips)
    rms = {
        (c, k): float(np.median(sols[c, k].rms_ms[np.array(sols[c, k].status) == "fit"]))
        for c in chips
        for k in ("thar", "lfc")
    }

    # ---- the per-line curve_fit loop on a sample of the same windows
    rng = np.random.default_rng(7)
    windows = []
    for c in chips.values():
        for kind, flux, var, placed in (
            ("thar", c.thar_flux, c.thar_var, c.thar_placed),
            ("lfc", c.lfc_flux, c.lfc_var, c.lfc_placed),
        ):
            half = 5 if kind == "thar" else 4
            lit = placed.flux > 2e3
            for k in np.nonzero(lit)[0]:
                windows.append((flux, var, placed.row[k], placed.x[k], half))
    pick = rng.choice(len(windows), size=min(args.loop_sample, len(windows)), replace=False)

    def model(x, amp, mu, sig, const):
        return amp * (ndtr((x + 0.5 - mu) / sig) - ndtr((x - 0.5 - mu) / sig)) + const

    pulls_loop = []
    t = time.perf_counter()
    n_fail = 0
    for k in pick:
        flux, var, row, xt, half = windows[k]
        x0 = xt + rng.normal(0, 0.3)
        cols = np.arange(int(round(x0)) - half, int(round(x0)) + half + 1)
        cols = cols[(cols >= 0) & (cols < flux.shape[1])]
        y, s = flux[row, cols], np.sqrt(var[row, cols])
        p0 = [max(y.sum() - y.min() * len(y), 1.0), x0, 1.3, y.min()]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popt, pcov = curve_fit(model, cols, y, p0=p0, sigma=s, absolute_sigma=True)
            pulls_loop.append((popt[1] - xt) / np.sqrt(pcov[1, 1]))
        except (RuntimeError, ValueError):
            n_fail += 1
    t_loop_sample = time.perf_counter() - t
    per_line = t_loop_sample / len(pick)
    n_total = n_thar + n_lfc
    t_loop = per_line * n_total
    pulls_loop = np.array(pulls_loop)
    pulls_loop = pulls_loop[np.isfinite(pulls_loop) & (np.abs(pulls_loop) < 50)]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    load = os.getloadavg()
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        commit = "?"
    size = "8 + 6 orders (quick)" if args.quick else "full size: 35 + 32 orders"
    lines = [
        f"## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: a night's wavelength "
        f"solutions, {size} x 5 orderlets x 4080 columns",
        "",
        f"`python bench/bench_wls.py{' --quick' if args.quick else ''}`; kpf: median of "
        f"{args.repeat} runs in one process, {args.threads} threads allowed; curve_fit: "
        f"{len(pick)} lines sampled and extrapolated to the night's {n_total} lines. "
        f"Simulation (untimed) {t_sim:.1f} s; peak RSS of the process {rss:.0f} MiB; "
        f"kpf-masters at {commit}; load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; "
        f"Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        "| peer | lines | wall s | us per line | x kpf time | notes |",
        "|---|---:|---:|---:|---:|---|",
        f"| kpf | {n_total} ({n_thar} ThAr, {n_lfc} LFC) | {t_kpf:.2f} | "
        f"{1e6 * t_kpf / n_total:.0f} | 1.0 | fits and solutions; good fits {good_thar} ThAr, "
        f"{good_lfc} LFC; orders x orderlets fitted {fitted['thar']} ThAr, {fitted['lfc']} "
        f"LFC of {rows}; median RMS_MS ThAr {rms['GREEN', 'thar']:.1f}/"
        f"{rms['RED', 'thar']:.1f}, LFC "
        f"{rms['GREEN', 'lfc']:.1f}/{rms['RED', 'lfc']:.1f} m/s (GREEN/RED); runs "
        f"{', '.join(f'{v:.2f}' for v in times)} |",
        f"| curve_fit loop | {n_total} (extrapolated from {len(pick)}) | {t_loop:.1f} | "
        f"{1e6 * per_line:.0f} | {t_loop / t_kpf:.1f} | line fits only; sample took "
        f"{t_loop_sample:.1f} s, {n_fail} failed; centre pull rms "
        f"{np.std(pulls_loop):.2f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with open(args.results, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
