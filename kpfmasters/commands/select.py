"""``kpfmasters select``: show which frames of a night each master would use, and why."""

from __future__ import annotations

from kpfmasters.core.config import load_config
from kpfmasters.plan.plans import Plans

HELP = "show the frames each master of a night selects (and why others are not)"


def add_arguments(parser) -> None:
    parser.add_argument("--date", required=True, help="night YYYYMMDD")
    parser.add_argument("--config", help="configuration file (default: the checkout's)")
    parser.add_argument("--l0-root", help="override l0_root")
    parser.add_argument("--work-root", help="override work_root (the night index goes there)")


def run(args) -> int:
    overrides = {"date": args.date}
    if args.l0_root:
        overrides["l0_root"] = args.l0_root
    if args.work_root:
        overrides["work_root"] = args.work_root
    cfg = load_config(args.config, overrides)
    plan = Plans(cfg).plan(cfg["nights"][0])
    print("\n".join(plan.log_lines()))
    return 0
