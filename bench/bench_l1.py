"""Benchmark: order traces and one master's L1 at full size (4080 x 4080, KPF's traces).

    python bench/bench_l1.py            # full size, 5 rounds in-process, 3 processes
    python bench/bench_l1.py --rounds 2 --processes 1

Input, generated once and cached under ``bench/out/l1_v<version>/``: a master flat of both
CCDs (``<CCD>`` float64, ``<CCD>_UNC`` float32, ``<CCD>_STACK`` float32) whose lamp is the
simulator's spectrograph in the ``kpf`` geometry (KPF's measured traces: 175 GREEN and 159
RED traces; :mod:`kpfmasters.sim.spectrograph`) with shot noise, and its order mask.

Measured:

- In-process, median of ``--rounds`` (data in memory, traces already found):
  ``box_extract`` (:mod:`kpfmasters.science.extract`: FLUX and VAR of every trace of a CCD)
  against a straightforward per-trace NumPy loop of the same extraction (for each trace,
  each aperture row in turn over all columns) -- the results are checked equal;
  ``find_traces`` of one CCD.
- Whole jobs, as the rules run them (``build_traces``: both CCDs; ``build_l1`` of the flat:
  both CCDs, FLUX, VAR, WAVE, BLAZE, write with checksums), each in a fresh process, median
  of ``--processes``; peak RSS from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from kpfmasters.science.extract import box_extract  # noqa: E402
from kpfmasters.science.traces import evaluate, find_traces  # noqa: E402

GEN_VERSION = 1
SIZE = 4080
CCDS = ("GREEN_CCD", "RED_CCD")
MiB = 2**20
SETTINGS = {
    "degree": 3,
    "clip_nsigma": 4.0,
    "clip_iterations": 3,
    "min_columns_fraction": 0.5,
    "refine_iterations": 3,
    "refine_margin": 1.0,
}


def generate(out: Path) -> Path:
    """The cached master flat and order mask (written once)."""
    from astropy.io import fits

    from kpfmasters.io.fits import write_fits
    from kpfmasters.sim.truth import make_ccd_truth

    flat = out / "kpf_20230606_master_flat.fits"
    if flat.is_file() and (out / "order_mask.fits").is_file():
        return flat
    out.mkdir(parents=True, exist_ok=True)
    primary = fits.PrimaryHDU()
    for key, value in {
        "IMTYPE": "Flat",
        "OBJECT": "autocal-flat-all",
        "NFRAMES": 100,
        "MINMJD": 60101.1,
        "MAXMJD": 60101.2,
        "INFOBITS": 0,
    }.items():
        primary.header[key] = value
    hdus, masks = [primary], [fits.PrimaryHDU()]
    rng = np.random.default_rng(1)
    for ccd in CCDS:
        truth = make_ccd_truth(ccd, SIZE, 2, [], 0, geometry="kpf")
        light = np.asarray(truth.prnu) * np.asarray(truth.lamp)
        n, t = 100, 30.0
        noise = np.sqrt(light * t * n + n * 16.0) / (t * n)
        stack = (light + rng.standard_normal(light.shape, dtype=np.float32) * noise).astype(
            np.float32
        )
        hdus.append(fits.ImageHDU((stack / np.median(stack)).astype(np.float64), name=ccd))
        hdus[-1].header["BUNIT"] = "dimensionless"
        masks.append(fits.ImageHDU(truth.order_mask, name=ccd))
        hdus.append(fits.ImageHDU(noise.astype(np.float32), name=f"{ccd}_UNC"))
        hdus.append(fits.ImageHDU(stack, name=f"{ccd}_STACK"))
    write_fits(fits.HDUList(masks), out / "order_mask.fits")
    write_fits(fits.HDUList(hdus), flat)
    return flat


def loop_extract(traces, image, unc):
    """The same box extraction, one trace at a time and one aperture row at a time."""
    nrows, ncols = image.shape
    x = np.arange(ncols, dtype=np.float64)
    flux = np.full((len(traces), ncols), np.nan)
    var = np.full((len(traces), ncols), np.nan)
    for i in range(len(traces)):
        yc = evaluate(traces.coeffs[i : i + 1], x)[0]
        lo, hi = yc - traces.bottom[i], yc + traces.top[i]
        f = np.zeros(ncols)
        v = np.zeros(ncols)
        lost = np.zeros(ncols)
        first = int(np.floor(lo.min() + 0.5))
        last = int(np.floor(hi.max() + 0.5))
        for r in range(first, last + 1):
            w = np.clip(np.minimum(hi, r + 0.5) - np.maximum(lo, r - 0.5), 0.0, 1.0)
            if not 0 <= r < nrows:
                lost += w
                continue
            d = image[r].astype(np.float64)
            u = unc[r].astype(np.float64)
            good = np.isfinite(d) & np.isfinite(u)
            lost += np.where(good, 0.0, w)
            f += np.where(good, w * d, 0.0)
            v += np.where(good, w * w * u * u, 0.0)
        ok = (lost <= 0.5 * (hi - lo)) & (x >= traces.x1[i]) & (x <= traces.x2[i])
        flux[i] = np.where(ok, f, np.nan)
        var[i] = np.where(ok, v, np.nan)
    return flux, var


CHILD = """
import sys, time, json
sys.path.insert(0, {repo!r})
t0 = time.perf_counter()
from kpfmasters.science.traces import build_traces
from kpfmasters.science.l1 import L1Job, build_l1
what, flat, mask, out = sys.argv[1:5]
outputs = {{c: f"{{out}}/kpf_20230606_master_flat_{{c}}.csv" for c in ("GREEN_CCD", "RED_CCD")}}
t1 = time.perf_counter()
if what == "traces":
    build_traces(flat, mask, outputs, {settings!r})
else:
    build_l1(L1Job(flat, f"{{out}}/l1.fits", outputs))
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "work_s": t2 - t1}}))
"""


def run_child(what: str, flat: Path, mask: Path, out: Path) -> tuple[float, float, float]:
    """(seconds of the job's work, seconds of the whole process, peak RSS MiB)."""
    import json

    code = CHILD.format(repo=str(REPO), settings=SETTINGS)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, what, str(flat), str(mask), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    text = proc.stdout.read()
    if status != 0:
        raise SystemExit(f"{what} job failed ({status})")
    return json.loads(text)["work_s"], wall, usage.ru_maxrss / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args(argv)
    from astropy.io import fits

    from kpfmasters.science.traces import read_traces

    out = HERE / "out" / f"l1_v{GEN_VERSION}"
    flat = generate(out)
    mask = out / "order_mask.fits"
    print(f"L1 benchmark, {SIZE} x {SIZE}, KPF trace geometry; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # whole jobs first (they also write the trace files used below)
        jobs = {}
        for what in ("traces", "l1"):
            runs = [run_child(what, flat, mask, tmp) for _ in range(args.processes)]
            jobs[what] = [statistics.median(r[i] for r in runs) for i in range(3)]
        traces = {c: read_traces(tmp / f"kpf_20230606_master_flat_{c}.csv") for c in CCDS}
        with fits.open(flat) as hdul:
            data = {c: (hdul[c].data.copy(), hdul[f"{c}_UNC"].data.copy()) for c in CCDS}
            stacks = {c: hdul[f"{c}_STACK"].data.copy() for c in CCDS}
        with fits.open(mask) as hdul:
            masks = {c: hdul[c].data.copy() for c in CCDS}
    head = f"in-process (median of {args.rounds})"
    print(f"{head:<44}{'GREEN':>10}{'RED':>10}")
    rows = {"box_extract (FLUX, VAR)": [], "per-trace NumPy loop": [], "find_traces": []}
    for ccd in CCDS:
        image, unc = data[ccd]
        times = {k: [] for k in rows}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            f1, v1 = box_extract(traces[ccd], image, unc)
            t1 = time.perf_counter()
            f2, v2 = loop_extract(traces[ccd], image, unc)
            t2 = time.perf_counter()
            find_traces(stacks[ccd], masks[ccd])
            t3 = time.perf_counter()
            times["box_extract (FLUX, VAR)"].append(t1 - t0)
            times["per-trace NumPy loop"].append(t2 - t1)
            times["find_traces"].append(t3 - t2)
        np.testing.assert_allclose(f1, f2, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(v1, v2, rtol=1e-12, equal_nan=True)
        for key in rows:
            rows[key].append(statistics.median(times[key]))
        print(f"  {ccd}: {len(traces[ccd])} traces, {traces[ccd].n_orders} orders")
    for key, values in rows.items():
        print(f"  {key:<42}{values[0]:>9.3f}s{values[1]:>9.3f}s")
    ratio = [
        b / a
        for a, b in zip(rows["box_extract (FLUX, VAR)"], rows["per-trace NumPy loop"], strict=True)
    ]
    print(f"  {'loop / box_extract':<42}{ratio[0]:>9.1f}x{ratio[1]:>9.1f}x")
    print(f"whole jobs (median of {args.processes} processes)      work     process   peak RSS")
    labels = {"traces": "build_traces (both CCDs)", "l1": "build_l1 of the flat (both CCDs)"}
    for what, (work, wall, rss) in jobs.items():
        print(f"  {labels[what]:<40}{work:>7.2f}s{wall:>10.2f}s{rss:>8.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
