"""Snakemake script of rule night_qa: the night's QA document (JSON) and statistics page.

Inputs ``masters`` (the night's masters), ``previews`` (their QA directories) and ``wls``
(the QA directories of the night's wavelength solutions, each with ``WLS-summary.json``); outputs
``json`` (``<masters_root>/<date>/kpf_<date>_masters_qa.json``) and ``table`` (HTML). Params:
``qa``, ``flag_fraction``, ``settings`` (the ``masters`` section). Warnings are logged; they
never fail the job.
"""

import json
from pathlib import Path

from kpfmasters.core.logs import script_logging
from kpfmasters.io.fits import atomic_output
from kpfmasters.qa.figures import night_page
from kpfmasters.qa.records import night_report

with script_logging(snakemake.log[0], "kpfmasters.night_qa") as log:
    date = str(snakemake.wildcards.date)
    previews = {}
    for folder in snakemake.input.previews:
        figures = previews.setdefault(Path(folder).name, {})
        for png in sorted(Path(folder).glob("*-*.png")):
            ext, figure = png.stem.rsplit("-", 1)
            figures.setdefault(ext, {})[figure] = str(png)
    summaries = [Path(folder) / "WLS-summary.json" for folder in snakemake.input.wls]
    wavelength = [json.loads(path.read_text()) for path in summaries]
    doc = night_report(
        date,
        [str(p) for p in snakemake.input.masters],
        snakemake.params.qa,
        float(snakemake.params.flag_fraction),
        settings=snakemake.params.settings,
        previews=previews,
        rejects=snakemake.params.rejects,
        wavelength=wavelength,
    )
    for warning in doc["warnings"]:
        log.warning("QA: %s", warning)
    for note in doc["notes"]:
        log.info("QA note: %s", note)
    log.info(
        "QA of night %s: %d master(s), %d wavelength solution(s), %d warning(s), %d note(s)",
        date,
        len(doc["masters"]),
        len(doc["wavelength_solutions"]),
        len(doc["warnings"]),
        len(doc["notes"]),
    )
    with atomic_output(snakemake.output.json) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    with atomic_output(snakemake.output.table) as tmp:
        Path(tmp).write_text(night_page(doc))
