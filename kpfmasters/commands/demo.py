"""``kpfmasters demo``: simulate a small night, run the pipeline on it, register it.

Everything goes under one directory (default ``demo/``): the simulated L0 files and order
mask (``sim/``), the 2D files and logs (``work/``), the masters (``masters/``) and, while
the demo runs, a throw-away PostgreSQL server.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from kpfmasters.core.config import load_config
from kpfmasters.core.errors import KPFMastersError
from kpfmasters.qa.summary import format_table, master_row, night_masters
from kpfmasters.workflow.pipeline import PipelineError, night_config, run_snakemake, snakemake_argv

HELP = "simulate a small night, run the pipeline on it and register it (a tour)"


def add_arguments(parser) -> None:
    parser.add_argument("--dir", default="demo", help="where everything goes (default: demo)")
    parser.add_argument("--date", default="20230606", help="night to simulate (YYYYMMDD)")
    parser.add_argument("--size", default="256", help="CCD size: small, medium, full or N")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2)


def register_in_throwaway(base: Path, masters_root: Path, date: str) -> None:
    """Register the night in a PostgreSQL started for the occasion, print the rows."""
    from kpfmasters.db import init_schema, register_night
    from kpfmasters.db.report import format_row
    from kpfmasters.workflow.throwaway_pg import PgServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"\nDatabase step skipped: {reason}.")
        print("Install Debian's 'postgresql' package (apt-get install postgresql) to see it.")
        return
    print("\nRegistering the night in a throw-away PostgreSQL ...")
    with PgServer(base) as server, contextlib.closing(server.connect()) as conn:
        conn.autocommit = False
        init_schema(conn)
        rows = register_night(conn, masters_root, date)
        print(f"calfiles on {server.env['PGHOST']}:{server.env['PGPORT']}: {len(rows)} row(s)")
        for row in rows:
            print("  " + format_row(row))
    print("(server stopped and removed)")


def run(args) -> int:
    from kpfmasters.sim.simulate import SIZES, simulate_night

    base = Path(args.dir).resolve()
    size = SIZES.get(args.size) or int(args.size)
    sim = base / "sim"
    paths = {
        "l0_root": str(sim / "L0"),
        "work_root": str(base / "work"),
        "masters_root": str(base / "masters"),
        "order_mask": str(sim / "order_mask.fits"),
    }
    cfg = load_config(overrides={"date": args.date, **paths})
    t0 = time.monotonic()
    if not (sim / "L0" / args.date).is_dir():
        print(f"Simulating night {args.date} ({size} x {size} pixels per CCD) in {sim} ...")
        night = simulate_night(sim, args.date, seed=args.seed, size=size)
        print(f"  {len(night.frames)} L0 files, order mask {night.order_mask_path}")
    else:
        print(f"Using the simulated night already in {sim}")
    argv = snakemake_argv(
        night_config(cfg, args.date), workdir=base, cores=args.cores, extra=["--quiet", "rules"]
    )
    print("Running the pipeline:\n  " + " ".join(argv[1:]))
    if run_snakemake(argv) != 0:
        raise PipelineError(f"the pipeline failed; see the logs under {base / 'work' / 'logs'}")
    masters = night_masters(cfg["masters_root"], args.date)
    if not masters:
        raise KPFMastersError(f"no master was made under {cfg['masters_root']}/{args.date}")
    print(f"\nMasters of {args.date} ({time.monotonic() - t0:.0f} s):")
    print(format_table([master_row(p) for p in masters]))
    print(f"\nSelection report: {base / 'work' / 'selection' / (args.date + '.txt')}")
    register_in_throwaway(base, Path(cfg["masters_root"]), args.date)
    return 0
