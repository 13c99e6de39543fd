"""``kpfmasters daily``: the cron job. Run one night through Snakemake, then register it.

Everything the run prints (Snakemake's log and the registration) goes to
``$KPFCRONJOB_LOGS/kpfmasters_<date>.out``; the terminal gets one line. A lock per night keeps
two runs of the same night from overlapping. Exit status 0 on success, 1 with a one-line
reason on failure.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path

import yaml

from kpfmasters.core.config import DEFAULT_CONFIG_PATH, REPO_ROOT, load_config
from kpfmasters.core.errors import KPFMastersError
from kpfmasters.plan.rejects import rejects_dir
from kpfmasters.qa.summary import format_table, master_row, night_masters
from kpfmasters.workflow.pipeline import (
    PipelineError,
    night_config,
    night_lock,
    run_snakemake,
    snakemake_argv,
    workflow_lock,
)

HELP = "run one night's masters through Snakemake and register them (the daily cron job)"
DEFAULT_PROFILE = REPO_ROOT / "profiles" / "local"


def add_arguments(parser) -> None:
    parser.add_argument("--date", help="night YYYYMMDD (default: today's UT date)")
    parser.add_argument("--configfile", help="configuration file (default: the checkout's)")
    parser.add_argument(
        "--profile",
        default=os.environ.get("KPFMASTERS_PROFILE", str(DEFAULT_PROFILE)),
        help="Snakemake profile directory (default: $KPFMASTERS_PROFILE or profiles/local)",
    )
    parser.add_argument("--cores", type=int, help="override the profile's core count")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override, e.g. masters_root=/data/kpf/masters (repeatable)",
    )
    parser.add_argument("--no-register", action="store_true", help="skip the database step")
    parser.add_argument("--log-dir", help="where the run's log goes (default: $KPFCRONJOB_LOGS)")


def parse_sets(items: list[str]) -> dict:
    """``KEY=VALUE`` overrides as a nested dict; dotted keys reach into sections
    (``masters.flat.nsigma=2.5``); values are YAML (numbers, booleans, strings)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise KPFMastersError(f"--set {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def config_layers(configfile: str | None) -> list[Path]:
    """The configuration files Snakemake gets: ``config.yaml``, then ``configfile`` (a layer
    over it, as :func:`~kpfmasters.core.config.load_config` reads it) when given."""
    layers = [DEFAULT_CONFIG_PATH]
    if configfile and Path(configfile).resolve() != DEFAULT_CONFIG_PATH.resolve():
        layers.append(Path(configfile))
    return layers


def _log_dir(args, cfg) -> Path:
    default = Path(cfg["work_root"]) / "logs"
    return Path(args.log_dir or os.environ.get("KPFCRONJOB_LOGS") or default)


def run(args) -> int:
    date = args.date or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    cfg = load_config(args.configfile, {**parse_sets(args.set), "date": date, "dates": ""})
    date = cfg["nights"][0]
    log_path = _log_dir(args, cfg) / f"kpfmasters_{date}.out"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = Path(cfg["work_root"]) / "locks" / f"kpfmasters_{date}.lock"
    start = time.monotonic()
    with night_lock(lock_path, date), open(log_path, "a", buffering=1) as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("kpfmasters").addHandler(handler)
        try:
            out.write(f"=== kpfmasters daily {date} started {time.strftime('%c')} ===\n")
            # Registration (and the missing-predecessor look-up) run inside the workflow.
            override = Path(cfg["work_root"]) / "daily" / f"{date}.override.yaml"
            override.parent.mkdir(parents=True, exist_ok=True)
            override.write_text(yaml.safe_dump({"database": {"enabled": not args.no_register}}))
            argv = snakemake_argv(
                night_config(cfg, date),
                workdir=cfg["work_root"],
                profile=args.profile,
                cores=args.cores,
                configfiles=[*config_layers(args.configfile), override],
            )
            out.write("$ " + " ".join(argv) + "\n")
            rejects = rejects_dir(cfg["work_root"], date)
            before = set(rejects.glob("*.json")) if rejects.is_dir() else set()
            with workflow_lock(cfg["work_root"], argv, out):
                rc = run_snakemake(argv, out)
            new = (set(rejects.glob("*.json")) if rejects.is_dir() else set()) - before
            if rc != 0 and new:
                # Frames that failed L0 -> 2D are now recorded; a second pass makes the
                # masters without them (USED = false in their INPUTS tables).
                names = ", ".join(sorted(p.stem for p in new))
                out.write(
                    f"=== {len(new)} frame(s) failed L0 -> 2D ({names}); running again "
                    "without them ===\n"
                )
                with workflow_lock(cfg["work_root"], argv, out):
                    rc = run_snakemake(argv, out)
            if rc != 0:
                raise PipelineError(f"night {date}: snakemake failed (exit {rc}); see {log_path}")
            masters = night_masters(cfg["masters_root"], date)
            if masters:
                out.write(format_table([master_row(p) for p in masters]) + "\n")
            registered = "no"
            receipt = Path(cfg["work_root"]) / "registered" / f"{date}.json"
            if not args.no_register and receipt.is_file():
                registered = str(len(json.loads(receipt.read_text())["rows"]))
            elapsed = time.monotonic() - start
            line = (
                f"night {date}: {len(masters)} master(s) in {cfg['masters_root']}/{date}, "
                f"{registered} row(s) registered, {elapsed:.0f} s; log {log_path}"
            )
            out.write(f"=== {line} ===\n")
            print(line)
        except KPFMastersError as exc:
            out.write(f"=== FAILED: {exc} ===\n")
            raise
        finally:
            logging.getLogger("kpfmasters").removeHandler(handler)
    return 0
