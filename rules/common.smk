# Input functions and helpers shared by every rule. No rule lives here.
import os
import sys
from functools import lru_cache
from pathlib import Path

# The package is importable from the checkout, installed or not (conda envs, cluster jobs).
sys.path.insert(0, workflow.basedir)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        [workflow.basedir] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
)

from snakemake.logging import logger

from kpfmasters import __version__
from kpfmasters.plan import plans as ws
from kpfmasters.core.config import normalize_config, validate_config
from kpfmasters.core.errors import KPFMastersError

# One line naming the key and what was expected (not the whole schema and configuration).
try:
    validate_config(config)
    CFG = normalize_config(config)
except KPFMastersError as exc:
    logger.error(f"kpfmasters: error: {exc}")
    sys.exit(1)

NIGHTS = CFG["nights"]
if not NIGHTS:
    raise WorkflowError(
        "no night given: run with --config date=YYYYMMDD (one night) or "
        "dates=YYYYMMDD..YYYYMMDD (a range)"
    )

L0_ROOT = CFG["l0_root"]
WORK = CFG["work_root"]
MASTERS = CFG["masters_root"]


# Snakemake's metadata (.snakemake/) lives in the work root however the workflow is run
# (a plain run or `kpfmasters daily`, which passes the same directory with -d).
workdir: WORK


PLANS = ws.Plans(
    CFG,
    main_process=workflow.is_main_process,
    log=logger,
    db_lookup=ws.database_lookup if CFG["database"]["enabled"] else None,
    trace_lookup=ws.database_traces if CFG["database"]["enabled"] else None,
)


# Only this run's nights are made: a master of another night (a predecessor or the previous
# master found on disk) is an input as it is, never rebuilt.
wildcard_constraints:
    date="|".join(NIGHTS),
    stem=r"KP\.\d{8}\.\d{5}\.\d{2}",
    tag=r"(?!.*_L[12]$)[A-Za-z0-9._+-]+",
    digest=r"[0-9a-f]{16}",


def all_targets():
    return PLANS.all_targets()


def frames_2d(mtype):
    """Input function: the 2D files a master stacks, in stacking order."""

    def inputs(wildcards):
        return PLANS.frames_2d(wildcards.date, mtype, wildcards.get("tag"))

    return inputs


def predecessor(mtype):
    """Input function: the master bias/dark/flat a later master is calibrated with."""

    def inputs(wildcards):
        return PLANS.predecessor(wildcards.date, mtype)

    return inputs


def settings_stamp(mtype):
    """Input function: the CFGHASH/SOFTVER stamp of a master (a changed setting rebuilds it,
    whichever way the master on disk was made)."""

    def inputs(wildcards):
        return PLANS.settings_stamp(wildcards.date, mtype, wildcards.get("tag"))

    return inputs


def previous_master(mtype):
    """Input function: the previous night's master of the same kind (QC comparison)."""

    def inputs(wildcards):
        return PLANS.previous_master(wildcards.date, mtype, wildcards.get("tag"))

    return inputs


def identity_stamp(wildcards):
    """Input function: the L0 file's identity stamp (a re-delivered or replaced file is
    converted again whatever its modification time)."""
    return PLANS.identity_stamp(wildcards.date, wildcards.stem)


def l0_path(wildcards):
    """Rule parameter: the L0 file a 2D job converts."""
    return f"{L0_ROOT}/{wildcards.date}/{wildcards.stem}.fits"


def planned_header(wildcards):
    """Rule parameter: IMTYPE, EXPTIME and MJD-OBS as the plan read them."""
    return PLANS.planned_header(wildcards.date, wildcards.stem)


def stale_masters(wildcards):
    return PLANS.stale_masters(wildcards.date)


def retired_receipts(wildcards):
    """The night's retirement receipt, if any stale master is to be moved aside first."""
    target = PLANS.retire_target(wildcards.date)
    return [target] if target else []


def master_params(mtype):
    """Rule parameters: what the master is made from and how (a change rebuilds it)."""

    def params(wildcards):
        return PLANS.master_params(wildcards.date, mtype, wildcards.get("tag"))

    return params


def stack_mem_mb(mtype):
    def mem(wildcards, attempt):
        return PLANS.stack_mem_mb(wildcards.date, mtype, wildcards.get("tag"), attempt)

    return mem


def l0_mem_mb(wildcards, attempt):
    return PLANS.l0_mem_mb(wildcards.date, wildcards.stem, attempt)


def stack_runtime(mtype):
    def runtime(wildcards):
        return PLANS.stack_runtime(wildcards.date, mtype, wildcards.get("tag"))

    return runtime


def selection_lines(wildcards):
    return PLANS.plan(wildcards.date).log_lines()


def night_masters(wildcards):
    return PLANS.night_targets(wildcards.date)


def night_products(wildcards):
    """Everything the night's registration records: masters, trace files and L1 files."""
    return PLANS.night_products(wildcards.date)


# -- quality assessment (rules/qa.smk) -------------------------------------------------------
# Parameters in canonical key order: another configuration file must not look like a change.
QA_CFG = ws.canonical(CFG.get("qa") or {})


def qa_kinds(date):
    """Master kinds (bias, dark, flat, arclamp_<tag>) the night makes."""
    prefix = f"kpf_{date}_master_"
    return [
        Path(p).name[len(prefix) : -len(".fits")] for p in PLANS.night_targets(date)
    ]


def qa_order_mask(wildcards):
    return [CFG["order_mask"]] if wildcards.kind == "flat" else []


def night_rejects(wildcards):
    """Parameter of night_qa: the night's rejects (a change rewrites the QA document)."""
    return PLANS.night_rejects(wildcards.date)


def qa_settings_of(wildcards):
    return ws.canonical(CFG["masters"][wildcards.kind.split("_", 1)[0]])


def qa_previews(wildcards):
    return [f"{WORK}/qa/{wildcards.date}/{kind}" for kind in qa_kinds(wildcards.date)]


def night_wls_qa(wildcards):
    """The QA folders of the night's wavelength solutions (their warnings join the night's
    QA document)."""
    return [
        f"{WORK}/qa/{wildcards.date}/WLS/{tag}"
        for tag, _, _ in PLANS.wls_sources(wildcards.date)
    ]


def qa_targets():
    """The QA document of every night that makes a master (part of the default target)."""
    return [
        f"{MASTERS}/{date}/kpf_{date}_masters_qa.json"
        for date in NIGHTS
        if PLANS.night_targets(date)
    ]


def l1_qa_flat(wildcards):
    """The flat's L1 figures draw the traces on its lamp stack: the 2D flat."""
    if wildcards.kind != "flat":
        return []
    return [f"{MASTERS}/{wildcards.date}/kpf_{wildcards.date}_master_flat.fits"]


def l1_qa_traces(wildcards):
    return l1_traces(wildcards) if wildcards.kind == "flat" else []


def l1_qa_targets():
    """The figure folder of every L1 the run makes (part of the default target)."""
    prefix = "kpf_{date}_master_"
    out = []
    for date in NIGHTS:
        for path in PLANS.l1_targets(date):
            kind = Path(path).name[len(prefix.format(date=date)) : -len("_L1.fits")]
            out.append(f"{WORK}/qa/{date}/L1/{kind}")
    return out


def qa_mem_mb(wildcards, attempt):
    return PLANS.qa_mem_mb(wildcards.date, attempt)


def rejects_dir_of(wildcards, output):
    """Where a failed L0 -> 2D conversion is recorded: <work_root>/rejects/<date>/."""
    return ws.rejects_dir_for(output[0], wildcards.date)


# -- order traces and L1 (rules/traces.smk, rules/l1.smk) -------------------------------------
def l1_traces(wildcards):
    """Input function: the trace files (GREEN, RED) a night's L1 products use."""
    return list(PLANS.trace_files(wildcards.date).values())


def l1_params(wildcards):
    return PLANS.l1_params(wildcards.date)


def trace_mem_mb(wildcards, attempt):
    return PLANS.trace_mem_mb(wildcards.date, attempt)


def l1_mem_mb(wildcards, attempt):
    return PLANS.l1_mem_mb(wildcards.date, attempt)


# -- wavelength solutions and arclamp L2 (rules/wls.smk, rules/l2.smk) -----------------------
def wls_prior(wildcards):
    """Input function: the prior of a comb solution (the night's ThAr solution), or []."""
    return PLANS.wls_prior(wildcards.date, wildcards.tag)


def wls_linelist(wildcards):
    """Input function: the ThAr line list of a ThAr solution ([] for the comb)."""
    return PLANS.wls_linelist(wildcards.date, wildcards.tag)


def wls_params(wildcards):
    return PLANS.wls_params(wildcards.date, wildcards.tag)


def wls_mem_mb(wildcards, attempt):
    return PLANS.wls_mem_mb(wildcards.date, attempt)


def wls_qa_previous(wildcards):
    """Input function: the previous night's solution of the same lamp, or []."""
    return PLANS.previous_wls(wildcards.date, wildcards.tag)


def wls_qa_targets():
    """The QA folder of every wavelength solution the run makes (part of the default target)."""
    return [
        f"{WORK}/qa/{date}/WLS/{tag}"
        for date in NIGHTS
        for tag, _, _ in PLANS.wls_sources(date)
    ]
