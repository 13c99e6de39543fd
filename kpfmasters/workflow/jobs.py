"""Glue between Snakemake's ``snakemake`` object and the plain functions (used by scripts/)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from astropy.io import fits

from kpfmasters.core.errors import InputError
from kpfmasters.core.logs import script_logging
from kpfmasters.core.naming import TRACE_CCDS
from kpfmasters.core.products import used_as_predecessor
from kpfmasters.plan.night import jsonable
from kpfmasters.science.master import MasterJob, build_master

# The trace, L1 and wavelength modules (and numba's thread setting) are imported inside
# their job functions: a job loads only the science it runs.


def master_job_from_snakemake(smk, mtype: str) -> MasterJob:
    """A :class:`MasterJob` from a rule's input/output/params (see rules/<mtype>.smk)."""
    params = smk.params.master
    predecessors = {k: str(smk.input[k]) for k in used_as_predecessor() if k in smk.input.keys()}
    return MasterJob(
        mtype=mtype,
        date=smk.wildcards.date,
        output=str(smk.output[0]),
        frames=[str(p) for p in smk.input.frames],
        rows=params["rows"],
        settings=params["settings"],
        obj=params["obj"],
        predecessors=predecessors,
        order_mask=str(smk.input.order_mask) if "order_mask" in smk.input.keys() else None,
        previous=str(smk.input.previous[0]) if smk.input.get("previous") else None,
        stack={"memory_mb": smk.resources.band_mb, "band_rows": smk.resources.band_rows},
        threads=int(smk.threads),
        flag_fraction=float(params["flag_fraction"]),
        cfghash=params["cfghash"],
    )


def run_master(smk, mtype: str) -> dict:
    """Build one master inside a Snakemake job, logging to the rule's log file."""
    with script_logging(smk.log[0]) as log:
        job = master_job_from_snakemake(smk, mtype)
        used = sum(1 for r in job.rows if r["USED"])
        log.info(
            "master %s for %s: %d frame(s) picked, %d used; predecessors: %s",
            job.obj or mtype,
            job.date,
            len(job.rows),
            used,
            ", ".join(f"{k}={v}" for k, v in job.predecessors.items()) or "none",
        )
        for row in job.rows:
            if not row["USED"]:
                log.warning("  %s not used: %s", row["L0FILE"], row["REASON"])
        return build_master(job)


def header_differences(path, planned: dict) -> list[str]:
    """How the PRIMARY header of L0 file ``path`` differs from what the plan read
    (``planned``: IMTYPE, EXPTIME, MJD-OBS as JSON values); empty when it agrees.

    A file replaced between planning and its job would otherwise be converted as found but
    stacked under the plan's header (its INPUTS row, its exposure-time normalisation).
    """
    header = fits.getheader(path, 0)
    out = []
    for key, want in planned.items():
        have = jsonable(header[key]) if key in header else None
        if have != want:
            out.append(f"{key} is {have!r}, the plan read {want!r}")
    return out


def check_planned_header(path, planned: dict) -> None:
    """Raise :class:`~kpfmasters.core.errors.InputError` when ``path`` no longer has the header
    the night was planned with (see :func:`header_differences`)."""
    differences = header_differences(path, planned)
    if differences:
        raise InputError(
            path,
            "PRIMARY header changed after planning: "
            + "; ".join(differences)
            + " (the file was replaced; the next run plans it again)",
        )


def retire(paths: list[str], folder) -> list[dict]:
    """Move each master of ``paths`` aside into ``folder`` (``<name>.<UTC time>``).

    Returns one record per file (``from``, ``to``, ``size``); a path already gone is
    recorded with ``to`` null.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = []
    for path in map(Path, paths):
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            out.append({"from": str(path), "to": None, "size": None})
            continue
        dest = folder / f"{path.name}.{stamp}"
        shutil.move(str(path), str(dest))
        out.append({"from": str(path), "to": str(dest), "size": size})
    return out


def run_traces(smk) -> dict:
    """Trace files of a master flat inside a Snakemake job (rule order_traces)."""
    from kpfmasters.science.traces import build_traces

    with script_logging(smk.log[0]) as log:
        outputs = {"GREEN_CCD": str(smk.output.green), "RED_CCD": str(smk.output.red)}
        log.info("order traces of %s with mask %s", smk.input.flat, smk.input.order_mask)
        summary = build_traces(smk.input.flat, smk.input.order_mask, outputs, smk.params.traces)
        for ccd, info in summary.items():
            log.info("%s: %d traces, %d orders", ccd, info["traces"], info["orders"])
        return summary


def run_l1(smk) -> dict:
    """The L1 file of one master inside a Snakemake job (rule l1_master)."""
    from kpfmasters.science.l1 import L1Job, build_l1

    with script_logging(smk.log[0]) as log:
        traces = {}
        for path in smk.input.traces:
            for ccd in TRACE_CCDS:
                if Path(path).name.endswith(f"_{ccd}.csv"):
                    traces[ccd] = str(path)
        params = smk.params.l1
        wls = str(smk.input.wls[0]) if len(smk.input.wls) else ""
        job = L1Job(
            master=str(smk.input.master),
            output=str(smk.output[0]),
            traces=traces,
            wls=wls,
            method=params["method"],
            cfghash=params["cfghash"],
        )
        log.info(
            "L1 of %s: traces %s, reference wavelengths %s",
            job.master,
            ", ".join(Path(p).name for p in traces.values()),
            wls or "none",
        )
        summary = build_l1(job)
        log.info("orders per CHIP: %s", summary["orders"])
        return summary


def run_wls(smk) -> dict:
    """The wavelength solution of one arclamp inside a Snakemake job (rule wls_master)."""
    from kpfmasters.science.wlsproducts import WlsJob, build_wls

    with script_logging(smk.log[0]) as log:
        import numba

        numba.set_num_threads(max(1, min(int(smk.threads), numba.config.NUMBA_NUM_THREADS)))
        params = smk.params.wls
        job = WlsJob(
            l1=str(smk.input.l1),
            output=str(smk.output[0]),
            kind=params["kind"],
            settings=params["settings"],
            prior=str(smk.input.prior[0]) if len(smk.input.prior) else "",
            linelist=str(smk.input.linelist[0]) if len(smk.input.linelist) else "",
        )
        log.info(
            "%s solution of %s (OBJECT %r), prior %s",
            job.kind,
            job.l1,
            params["object"],
            job.prior or "the L1's own WAVE (the reference solution)",
        )
        summary = build_wls(job)
        for chip, info in summary.items():
            log.info(
                "%s: %d of %d orders x orderlets fitted, %d lines, median RMS %.2f m/s",
                chip,
                info["fitted"],
                info["rows"],
                info["lines"],
                info["median_rms_ms"],
            )
        return summary


def run_l2(smk) -> dict:
    """The drift table (L2) of one arclamp inside a Snakemake job (rule l2_arclamp)."""
    from kpfmasters.science.wlsproducts import L2Job, build_l2

    with script_logging(smk.log[0]) as log:
        job = L2Job(l1=str(smk.input.l1), wls=str(smk.input.wls), output=str(smk.output[0]))
        summary = build_l2(job)
        log.info(
            "drift against the reference: GREEN %s +- %s m/s, RED %s +- %s m/s",
            summary["DRIFTG"],
            summary["DRIFTGE"],
            summary["DRIFTR"],
            summary["DRIFTRE"],
        )
        return summary
