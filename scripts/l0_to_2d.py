"""Snakemake script of rule ``l0_to_2d``: one L0 file -> its 2D file (docs/reference.md §2).

A frame the conversion refuses is recorded as a reject (left out from the next run on);
a failure of the system (permission denied, I/O error) only fails the job.
"""

from kpfmasters.core.errors import InputError
from kpfmasters.core.logs import script_logging
from kpfmasters.plan.rejects import is_transient, record_rejection
from kpfmasters.science.l0to2d import AmpGeometry, convert_l0, describe
from kpfmasters.workflow.jobs import check_planned_header

with script_logging(snakemake.log[0], "kpfmasters.l0_to_2d") as log:
    geometry = AmpGeometry(**snakemake.params.geometry)
    threads = int(getattr(snakemake, "threads", 1) or 1)
    log.info(
        "converting %s with %s, adc_scale %s, %d thread(s)",
        snakemake.params.l0,
        geometry,
        snakemake.params.adc_scale,
        threads,
    )
    check_planned_header(snakemake.params.l0, snakemake.params.planned)
    try:
        report = convert_l0(
            snakemake.params.l0, snakemake.output[0], geometry, snakemake.params.adc_scale, threads
        )
    except InputError as exc:
        if is_transient(exc):
            log.error("%s: not recorded as a reject (a failure of the system)", exc)
        else:
            record_rejection(snakemake.params.rejects_dir, snakemake.params.l0, exc.problem)
        raise
    log.info("%s", describe(report))
