"""Time Snakemake's DAG build (a dry run) for many simulated small nights in one DAG.

    .venv/bin/python bench/dag_nights.py --nights 100 --workdir /tmp/kpf-dag

Simulates N tiny nights (once; reused on later calls), then times
``snakemake --dry-run --config dates=FIRST..LAST`` twice: cold (no night index yet: every
L0 header is read) and warm (the per-night index files are reused).
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from kpfmasters.sim.simulate import simulate_night
from kpfmasters.workflow.pipeline import snakemake_argv

REPO = Path(__file__).resolve().parents[1]

COUNTS = {
    "bias": 3,
    "dark": 2,
    "flat": 3,
    "arclamp": {"autocal-une-sky": 2, "autocal-thar-all-eve": 2},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=100)
    parser.add_argument("--first", default="20230101")
    parser.add_argument("--workdir", default="/tmp/kpf-dag")
    args = parser.parse_args()
    work = Path(args.workdir)
    start = dt.datetime.strptime(args.first, "%Y%m%d")
    dates = [(start + dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(args.nights)]
    sim = work / "sim"
    t0 = time.monotonic()
    (sim / "L0").mkdir(parents=True, exist_ok=True)
    for i, date in enumerate(dates):
        if (sim / "L0" / date).is_dir():
            continue
        night = simulate_night(work / "tmp", date, seed=i, size=48, counts=COUNTS, extras=False)
        night.l0_dir.rename(sim / "L0" / date)
        if not (sim / "order_mask.fits").exists():
            night.order_mask_path.rename(sim / "order_mask.fits")
    nfiles = sum(1 for _ in (sim / "L0").glob("*/*.fits"))
    print(f"{len(dates)} nights, {nfiles} L0 files (simulated in {time.monotonic() - t0:.0f} s)")
    config = {
        "dates": f"{dates[0]}..{dates[-1]}",
        "l0_root": sim / "L0",
        "work_root": work / "work",
        "masters_root": work / "masters",
        "order_mask": sim / "order_mask.fits",
    }
    argv = snakemake_argv(config, workdir=work, cores=2, extra=["--dry-run", "--quiet", "rules"])
    for index in (work / "work" / "index").glob("*.json"):
        index.unlink()
    for label in ("cold (headers read)", "warm (index reused)"):
        t = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.monotonic() - t
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        total = next(
            (ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("total")), "?"
        )
        print(f"dry run, {label}: {elapsed:.1f} s for {total} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
