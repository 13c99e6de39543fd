"""``kpfmasters demo``: simulate a small night, run the pipeline on it, register it.

Everything goes under one directory (default ``demo/``): the simulated L0 files and order
mask (``sim/``), the 2D files and logs (``work/``), the masters (``masters/``) and, while
the demo runs, a throw-away PostgreSQL server. The simulator's reference wavelength solution
(``sim/wls_reference.fits``) is configured as ``wls.reference`` and its ThAr catalogue
(``sim/thar_linelist.txt``) as ``wls.thar_linelist``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import yaml

from kpfmasters.core.config import add_config_arguments, config_from_args, snakemake_config
from kpfmasters.core.errors import KPFMastersError
from kpfmasters.qa.summary import format_table, master_row, night_masters
from kpfmasters.workflow.pipeline import PipelineError, run_snakemake, snakemake_argv

HELP = "simulate a small night, run the pipeline on it and register it (a tour)"

# What KPF takes in a day: about 22 biases, 5 darks, a long flat sequence (about 100) and
# up to 10 frames of each lamp, so the demo's masters look like the instrument's. (A lamp
# of exactly flag_min_count frames would flag every pixel that lost one sample to clipping.)
DEMO_COUNTS = {
    "bias": 22,
    "dark": 5,
    "flat": 100,
    "arclamp": {"autocal-thar-all-morn": 10, "autocal-une-all-morn": 10},  # KPF OBJECTs
}


def add_arguments(parser) -> None:
    parser.add_argument("--dir", default="demo", help="where everything goes (default: demo)")
    parser.add_argument("--date", default="20230606", help="night to simulate (YYYYMMDD)")
    parser.add_argument("--size", default="256", help="CCD size: small, medium, full or N")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--flats",
        type=int,
        default=DEMO_COUNTS["flat"],
        help=f"flat frames to simulate (default {DEMO_COUNTS['flat']}, a KPF day's sequence)",
    )
    add_config_arguments(parser)


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
    # the simulator's reference wavelength solution becomes every L1's WAVE, and its ThAr
    # catalogue (the lamp's lines, those added on a small CCD too) the line list
    wls = {
        "wls": {
            "reference": str(sim / "wls_reference.fits"),
            "thar_linelist": str(sim / "thar_linelist.txt"),
        }
    }
    cfg = config_from_args(args, {"date": args.date, **paths, **wls})
    t0 = time.monotonic()
    if not (sim / "L0" / args.date).is_dir():
        print(f"Simulating night {args.date} ({size} x {size} pixels per CCD) in {sim} ...")
        counts = {**DEMO_COUNTS, "flat": args.flats}
        night = simulate_night(sim, args.date, seed=args.seed, size=size, counts=counts)
        print(f"  {len(night.frames)} L0 files, order mask {night.order_mask_path}")
    else:
        print(f"Using the simulated night already in {sim}")
    cfg_file = base / "work" / "demo.config.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(yaml.safe_dump(snakemake_config(cfg), sort_keys=False))
    argv = snakemake_argv(
        {},
        workdir=cfg["work_root"],
        cores=args.cores,
        configfiles=[cfg_file],
        extra=["--quiet", "rules"],
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
