"""``kpfmasters daily``: the cron job. Run one night through Snakemake, then register it.

Everything the run prints (Snakemake's log and the registration) goes to
``$KPFCRONJOB_LOGS/kpfmasters_<date>.out``; the terminal gets one line. A lock per night keeps
two runs of the same night from overlapping; the workflow runs in its own process group and
SIGTERM, SIGHUP or SIGINT are passed on to it and waited for. The merged configuration
(``config.yaml``, ``--configfile`` files, ``--set``) reaches Snakemake whole, as a file, and
the run keeps Snakemake's metadata in the work root like a plain run.

Exit status 0 when every master the night's frames allow was made (and registered); 1 with
one line naming what was not made, the failing job and its cause otherwise (the masters that
were made are registered all the same); 128 + signal when stopped by a signal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path

import yaml

from kpfmasters.core.config import (
    REPO_ROOT,
    add_config_arguments,
    config_from_args,
    merge,
    merged_config,
    parse_sets,
    snakemake_config,
)
from kpfmasters.core.errors import KPFMastersError
from kpfmasters.io.fits import atomic_output
from kpfmasters.plan.rejects import rejects_dir
from kpfmasters.qa.summary import format_table, master_row, night_masters
from kpfmasters.workflow.pipeline import (
    PipelineError,
    night_lock,
    open_log,
    run_workflow,
    snakemake_argv,
    wait_for_nights,
    workflow_failure,
    workflow_lock,
)

HELP = "run one night's masters through Snakemake and register them (the daily cron job)"
DEFAULT_PROFILE = REPO_ROOT / "profiles" / "local"


def add_arguments(parser) -> None:
    parser.add_argument("--date", help="night YYYYMMDD (default: today's UT date)")
    add_config_arguments(parser)
    parser.add_argument(
        "--profile",
        default=os.environ.get("KPFMASTERS_PROFILE", str(DEFAULT_PROFILE)),
        help="Snakemake profile directory (default: $KPFMASTERS_PROFILE or profiles/local)",
    )
    parser.add_argument("--cores", type=int, help="override the profile's core count")
    parser.add_argument("--no-register", action="store_true", help="skip the database step")
    parser.add_argument("--log-dir", help="where the run's log goes (default: $KPFCRONJOB_LOGS)")
    parser.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long to wait for a run of an earlier night (whose masters may be this "
        "night's predecessors) before failing (default: 3600)",
    )


def _log_dir(args, cfg) -> Path:
    default = Path(cfg["work_root"]) / "logs"
    chosen = args.log_dir or os.environ.get("KPFCRONJOB_LOGS") or default
    return Path(chosen).expanduser().absolute()


class _Collect:
    """A logger-like object keeping the errors :class:`Plans` reports (masters not made)."""

    def __init__(self):
        self.errors: list[str] = []

    def info(self, msg):
        pass

    def warning(self, msg):
        pass

    def error(self, msg):
        self.errors.append(str(msg))


def night_outcome(cfg: dict, date: str, register: bool) -> tuple[list[str], list[str]]:
    """The names of the night's masters due, and what stops the others the night's frames
    allow (a missing order mask, no predecessor), as the workflow decided them."""
    from kpfmasters.plan.plans import Plans, database_lookup

    collect = _Collect()
    plans = Plans(cfg, log=collect, db_lookup=database_lookup if register else None)
    targets = plans.night_targets(date)
    return [Path(p).name for p in targets], collect.errors


def _mask_hint(args, cfg: dict, problems: list[str]) -> list[str]:
    """Name an unset ``KPFPIPE_TEST_DATA`` when the order mask comes from it."""
    raw = str(merged_config(args.configfile, parse_sets(args.set)).get("order_mask", ""))
    if "KPFPIPE_TEST_DATA" in raw and not os.environ.get("KPFPIPE_TEST_DATA"):
        return [
            p + " (KPFPIPE_TEST_DATA is not set)" if cfg["order_mask"] in p else p for p in problems
        ]
    return problems


def register_made(cfg: dict, date: str, missing: list[str]) -> tuple[int, str]:
    """Register the masters that were made (after a failed run); ``(rows, problem)``."""
    import contextlib

    from kpfmasters.db import connect, register_night
    from kpfmasters.db.report import write_receipt

    try:
        with contextlib.closing(connect()) as conn:
            rows = register_night(conn, cfg["masters_root"], date)
    except KPFMastersError as exc:
        return 0, f"registration failed: {exc}"
    receipt = Path(cfg["work_root"]) / "registered" / f"{date}.json"
    write_receipt(receipt, date, rows, missing)
    return len(rows), ""


def run(args) -> int:
    date = args.date or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    cfg = config_from_args(args, {"date": date, "dates": ""})
    date = cfg["nights"][0]
    work = Path(cfg["work_root"])
    log_path = _log_dir(args, cfg) / f"kpfmasters_{date}.out"
    lock_path = work / "locks" / f"kpfmasters_{date}.lock"
    register = not args.no_register
    start = time.monotonic()
    with night_lock(lock_path, date) as lock, open_log(log_path) as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_log = logging.getLogger("kpfmasters")
        package_log.addHandler(handler)
        propagate, package_log.propagate = package_log.propagate, False  # the terminal: 1 line
        try:
            try:
                out.write(f"=== kpfmasters daily {date} started {time.strftime('%c')} ===\n")
                out.flush()
            except OSError as exc:
                raise KPFMastersError(
                    f"{log_path}: cannot write the run's log ({exc.strerror or exc})"
                ) from None
            late = wait_for_nights(
                lock_path.parent, date, cfg["predecessors"]["max_age_days"], args.wait, out
            )
            if late:
                raise PipelineError(
                    f"night {date}: night(s) {', '.join(late)} still being processed after "
                    f"{args.wait:.0f} s (their masters may be this night's predecessors); "
                    "nothing made"
                )
            if not Path(cfg["l0_root"]).is_dir():
                raise PipelineError(
                    f"night {date}: l0_root {cfg['l0_root']} does not exist; expected the "
                    f"directory holding {date}/KP.{date}.*.fits; nothing made"
                )
            # The whole merged configuration reaches Snakemake as one file (paths intact).
            run_cfg = merge(snakemake_config(cfg), {"database": {"enabled": register}})
            cfg_file = work / "daily" / f"{date}.config.yaml"
            with atomic_output(cfg_file) as tmp:
                Path(tmp).write_text(yaml.safe_dump(run_cfg, sort_keys=False))
            argv = snakemake_argv(
                {}, workdir=work, profile=args.profile, cores=args.cores, configfiles=[cfg_file]
            )
            out.write("$ " + " ".join(argv) + "\n")
            rejects = rejects_dir(work, date)
            before = set(rejects.glob("*.json")) if rejects.is_dir() else set()
            offset = log_path.stat().st_size
            with workflow_lock(work, argv, out) as wfd:
                rc = run_workflow(argv, out, keep_fds=(lock.fd, wfd), on_start=lock.record)
            new = (set(rejects.glob("*.json")) if rejects.is_dir() else set()) - before
            if rc != 0 and new:
                # Frames that failed L0 -> 2D are now recorded; a second pass makes the
                # masters without them (USED = false in their INPUTS tables).
                names = ", ".join(sorted(p.stem for p in new))
                out.write(
                    f"=== {len(new)} frame(s) failed L0 -> 2D ({names}); running again "
                    "without them ===\n"
                )
                offset = log_path.stat().st_size
                with workflow_lock(work, argv, out) as wfd:
                    rc = run_workflow(argv, out, keep_fds=(lock.fd, wfd), on_start=lock.record)
            out.flush()
            failure = ""
            if rc != 0:
                with open(log_path, errors="replace") as handle:
                    handle.seek(offset)
                    failure = workflow_failure(handle.read(), work) or f"snakemake exit {rc}"
            due, problems = night_outcome(cfg, date, register)
            problems = _mask_hint(args, cfg, problems)
            masters = night_masters(cfg["masters_root"], date)
            if masters:
                out.write(format_table([master_row(p) for p in masters]) + "\n")
            missing = sorted(set(due) - {p.name for p in masters})
            registered, reg_problem = "no", ""
            receipt = work / "registered" / f"{date}.json"
            if register and rc != 0:
                count, reg_problem = register_made(cfg, date, missing + problems)
                registered = str(count)
            elif register and receipt.is_file():
                registered = str(len(json.loads(receipt.read_text())["rows"]))
            elapsed = time.monotonic() - start
            line = (
                f"night {date}: {len(masters)} master(s) in {cfg['masters_root']}/{date}, "
                f"{registered} row(s) registered, {elapsed:.0f} s"
            )
            trouble = []
            if failure:
                trouble.append(failure)
            if missing:
                trouble.append("not made: " + ", ".join(missing))
            trouble += problems
            if reg_problem:
                trouble.append(reg_problem)
            if trouble:
                line = f"{line}; " + "; ".join(trouble)
            line = f"{line}; log {log_path}"
            out.write(f"=== {line} ===\n")
            if trouble:
                raise PipelineError(line)
            print(line)
        except KPFMastersError as exc:
            out.write(f"=== FAILED: {exc} ===\n")
            raise
        finally:
            package_log.removeHandler(handler)
            package_log.propagate = propagate
    return 0
