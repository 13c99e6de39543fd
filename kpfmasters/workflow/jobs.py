"""Glue between Snakemake's ``snakemake`` object and the plain functions (used by scripts/)."""

from __future__ import annotations

from kpfmasters.core.logs import script_logging
from kpfmasters.core.products import used_as_predecessor
from kpfmasters.science.master import MasterJob, build_master


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
