"""``kpfmasters rejects --date D [--clear]``: the frames L0 -> 2D refused, and clearing them."""

from __future__ import annotations

from kpfmasters.core.config import add_config_arguments, config_from_args
from kpfmasters.plan.rejects import clear_rejections, night_rejections, rejects_dir

HELP = "list the frames of a night that L0 -> 2D refused (left out of its masters); --clear"


def add_arguments(parser) -> None:
    parser.add_argument("--date", required=True, help="night YYYYMMDD")
    parser.add_argument(
        "--clear",
        action="store_true",
        help="forget the night's rejects, so the next run tries those frames again",
    )
    add_config_arguments(parser)
    parser.add_argument("--l0-root", help="override l0_root")
    parser.add_argument("--work-root", help="override work_root (the rejects are under it)")


def run(args) -> int:
    overrides = {"date": args.date, "dates": ""}
    if args.l0_root:
        overrides["l0_root"] = args.l0_root
    if args.work_root:
        overrides["work_root"] = args.work_root
    cfg = config_from_args(args, overrides)
    date = cfg["nights"][0]
    rows = night_rejections(cfg["work_root"], cfg["l0_root"], date)
    folder = rejects_dir(cfg["work_root"], date)
    if not rows:
        print(f"night {date}: no rejects (in {folder})")
        return 0
    print(f"night {date}: {len(rows)} reject(s) in {folder}")
    for row in rows:
        state = "left out" if row["current"] else "stale, tried again next run"
        version = f", kpfmasters {row['version']}" if row.get("version") else ""
        print(f"  {row['name']}: {row['problem']} ({state}{version})")
    if args.clear:
        names = clear_rejections(cfg["work_root"], date)
        print(f"cleared {len(names)} reject(s): the next run tries them again")
    return 0
