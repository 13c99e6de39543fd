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


def header_differences(path, planned: dict) -> list[str]:
    """How the PRIMARY header of L0 file ``path`` differs from what the plan read
    (``planned``: IMTYPE, EXPTIME, MJD-OBS as JSON values); empty when it agrees.

    A file replaced between planning and its job would otherwise be converted as found but
    stacked under the plan's header (its INPUTS row, its exposure-time normalisation).
    """
    from astropy.io import fits

    from kpfmasters.plan.night import _jsonable

    header = fits.getheader(path, 0)
    out = []
    for key, want in planned.items():
        have = _jsonable(header[key]) if key in header else None
        if have != want:
            out.append(f"{key} is {have!r}, the plan read {want!r}")
    return out


def check_planned_header(path, planned: dict) -> None:
    """Raise :class:`~kpfmasters.core.errors.InputError` when ``path`` no longer has the header
    the night was planned with (see :func:`header_differences`)."""
    from kpfmasters.core.errors import InputError

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
    import shutil
    import time
    from pathlib import Path

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
