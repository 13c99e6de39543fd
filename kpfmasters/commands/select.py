"""``kpfmasters select``: show which frames of a night each master would use, and why.

It only shows: nothing is written (no night index, no verdict cache).
"""

from __future__ import annotations

from kpfmasters.core.config import add_config_arguments, config_from_args
from kpfmasters.plan.plans import Plans

HELP = "show the frames each master of a night selects (and why others are not)"


def add_arguments(parser) -> None:
    parser.add_argument("--date", required=True, help="night YYYYMMDD")
    add_config_arguments(parser)
    parser.add_argument("--l0-root", help="override l0_root")
    parser.add_argument("--work-root", help="override work_root (a night index there is read)")


def run(args) -> int:
    overrides = {"date": args.date}
    if args.l0_root:
        overrides["l0_root"] = args.l0_root
    if args.work_root:
        overrides["work_root"] = args.work_root
    cfg = config_from_args(args, overrides)
    plan = Plans(cfg, readonly=True).plan(cfg["nights"][0])
    for line in plan.log_lines():
        print(line)
    return 0
