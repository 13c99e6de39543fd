"""Snakemake script of rule master_qa: previews and statistics/provenance page of one master.

Input ``master`` (and ``order_mask`` for the flat); output: the master's QA directory with
``<CCD>-preview.png``, ``<CCD>-histograms.png`` and ``master-provenance.html``. Params:
``qa`` (the qa section), ``settings`` (the master type's section), ``flag_fraction``.
"""

from pathlib import Path

from kpfmasters.core.logs import script_logging
from kpfmasters.io.fits import atomic_output
from kpfmasters.qa.figures import master_page, master_previews
from kpfmasters.qa.records import assessed_record

with script_logging(snakemake.log[0], "kpfmasters.master_qa") as log:
    qa = snakemake.params.qa
    settings = snakemake.params.settings
    master = str(snakemake.input.master)
    masks = (
        [str(p) for p in snakemake.input.order_mask]
        if "order_mask" in snakemake.input.keys()
        else []
    )
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    try:  # QA never fails the night: a master that cannot be shown is logged
        made = master_previews(
            master,
            out,
            max_pixels=int(qa["preview_max_pixels"]),
            flag_min_count=int(settings["flag_min_count"]),
            order_mask=masks[0] if masks else None,
        )
    except Exception as exc:
        log.error("no previews of %s (%s: %s)", master, type(exc).__name__, exc)
        made = {}
    record = assessed_record(master, qa, float(snakemake.params.flag_fraction), settings)
    with atomic_output(out / "master-provenance.html") as tmp:
        tmp.write_text(master_page(record))
    log.info("previews of %s: %s", Path(master).name, ", ".join(sorted(made)) or "none")
