"""PNG previews of a master: the image of each CCD and histograms of the image and of CNT.

Matplotlib with the Agg backend (no display needed). Images are shown as in the FITS file
(row 0 at the bottom, ``origin='lower'``) with a z-scale stretch
(:class:`astropy.visualization.ZScaleInterval`); images larger than ``max_pixels`` on either
axis are block-averaged for display (the factor is written under the image). The flat also
shows the outline of its order mask (contour of mask > 0). PNGs are written with a 256-colour
palette, which keeps them small.
"""

from __future__ import annotations

import html
import io
import logging
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.visualization import ZScaleInterval  # noqa: E402
from PIL import Image  # noqa: E402

from kpfmasters.core.instrument import CCD_EXTS  # noqa: E402
from kpfmasters.core.naming import master_kind  # noqa: E402
from kpfmasters.io.fits import atomic_output  # noqa: E402
from kpfmasters.qa.records import master_type  # noqa: E402

DPI = 100
log = logging.getLogger(__name__)


def display_factor(shape: tuple[int, ...], max_pixels: int) -> int:
    """Smallest block size that brings both axes of ``shape`` to at most ``max_pixels``."""
    return max(1, math.ceil(max(shape) / max(1, int(max_pixels))))


def block_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks, NaN ignored (edge blocks may be partial)."""
    image = np.asarray(image, dtype=np.float64)
    if factor <= 1:
        return image
    rows, cols = (math.ceil(n / factor) for n in image.shape)
    padded = np.full((rows * factor, cols * factor), np.nan)
    padded[: image.shape[0], : image.shape[1]] = image
    blocks = padded.reshape(rows, factor, cols, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3))


def zscale_limits(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(finite)
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
    return float(lo), float(hi)


def save_png(fig, path: str | Path) -> Path:
    """Save ``fig`` as a palette PNG (256 colours), atomically; closes the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_output(path) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    return Path(path)


def title_lines(name: str, ext: str, header: fits.Header) -> str:
    date = ""
    match = name.split("_")
    if len(match) > 1 and match[1].isdigit():
        d = match[1]
        date = f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return (
        f"{name}  {ext}\n"
        f"night {date}   NFRAMES {header.get('NFRAMES', '?')}   "
        f"INFOBITS {header.get('INFOBITS', '?')}"
    )


def render_preview(
    image: np.ndarray,
    out: str | Path,
    title: str,
    unit: str,
    max_pixels: int,
    mask: np.ndarray | None = None,
) -> dict:
    """The z-scaled image of one CCD (and the mask outline) as a PNG; returns what was shown."""
    factor = display_factor(image.shape, max_pixels)
    shown = block_average(image, factor)
    lo, hi = zscale_limits(shown)
    nrows, ncols = image.shape
    aspect = nrows / ncols
    width = 6.4
    height = min(7.2, max(2.8, 1.6 + 4.6 * aspect))
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    cmap = plt.get_cmap("gray").with_extremes(bad="red")
    extent = (-0.5, ncols - 0.5, -0.5, nrows - 0.5)
    im = ax.imshow(
        shown,
        origin="lower",
        cmap=cmap,
        vmin=lo,
        vmax=hi,
        extent=extent,
        interpolation="nearest",
        aspect="equal" if 0.33 <= aspect <= 3 else "auto",
    )
    if mask is not None and mask.shape == image.shape:
        on = block_average((mask > 0).astype(np.float64), factor)
        ys = (np.arange(on.shape[0]) + 0.5) * factor - 0.5
        xs = (np.arange(on.shape[1]) + 0.5) * factor - 0.5
        if on.min() < 0.5 < on.max():
            ax.contour(xs, ys, on, levels=[0.5], colors="#00c8ff", linewidths=0.4, alpha=0.8)
    cbar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cbar.set_label(unit or "value")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    note = f"z-scale {lo:.4g} .. {hi:.4g} {unit}; origin lower (row 0 at the bottom)"
    if factor > 1:
        note += (
            f"\nshown block-averaged {factor}x{factor}: "
            f"{nrows}x{ncols} -> {shown.shape[0]}x{shown.shape[1]} pixels"
        )
    if mask is not None:
        note += "; cyan: order-mask outline (mask > 0)"
    note += "; red: NaN"
    fig.text(0.01, 0.0, note, fontsize=7.5, va="bottom", ha="left")
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    save_png(fig, out)
    return {"factor": factor, "limits": [lo, hi], "shape": [nrows, ncols]}


def render_histograms(
    image: np.ndarray,
    cnt: np.ndarray,
    out: str | Path,
    title: str,
    unit: str,
    nframes: int,
    flag_min_count: int,
    median: float | None = None,
    noise: float | None = None,
) -> None:
    """Histogram of the image values (log counts) and of CNT, with the flag threshold."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.0, 3.4), layout="constrained")
    finite = image[np.isfinite(image)]
    if finite.size:
        lo, hi = np.percentile(finite, [0.1, 99.9])
        if median is not None and noise is not None and noise > 0:
            lo, hi = min(lo, median - 6 * noise), max(hi, median + 6 * noise)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        outside = int(np.count_nonzero((finite < lo) | (finite > hi)))
        a1.hist(finite, bins=200, range=(lo, hi), color="0.3", histtype="stepfilled", log=True)
        if median is not None:
            a1.axvline(median, color="tab:red", lw=0.8, label=f"median {median:.4g}")
            if noise is not None:
                for sign in (-1, 1):
                    a1.axvline(
                        median + sign * noise,
                        color="tab:orange",
                        lw=0.8,
                        ls="--",
                        label=f"robust noise {noise:.3g}" if sign > 0 else None,
                    )
            a1.legend(fontsize=7, loc="upper right")
        a1.set_title(
            f"image (0.1-99.9 percentiles, at least median +- 6 noise; {outside} pixels outside)",
            fontsize=8,
        )
    else:
        a1.set_title("image: no finite pixel", fontsize=8)
    a1.set_xlabel(unit or "value")
    a1.set_ylabel("pixels")
    counts = np.bincount(np.clip(cnt.ravel(), 0, None), minlength=nframes + 1)
    a2.bar(np.arange(counts.size), np.maximum(counts, 0.5), width=0.9, color="0.3", log=True)
    a2.set_ylim(0.5, max(1.0, counts.max()) * 2)
    a2.axvline(flag_min_count - 0.5, color="tab:red", lw=0.8, label=f"flag: CNT < {flag_min_count}")
    a2.legend(fontsize=7, loc="upper left")
    a2.set_xlabel("CNT (samples kept per pixel)")
    a2.set_title(f"CNT (NFRAMES {nframes})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_png(fig, out)


def master_previews(
    path: str | Path,
    outdir: str | Path,
    max_pixels: int,
    flag_min_count: int,
    order_mask: str | Path | None = None,
) -> dict[str, dict[str, str]]:
    """Write ``<CCD>-preview.png`` and ``<CCD>-histograms.png`` for each CCD of a master.

    Returns {CCD: {"preview": path, "histograms": path}}. The order-mask outline is drawn on
    the flat's GREEN_CCD and RED_CCD when ``order_mask`` has their extension.
    """
    path, outdir = Path(path), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    kind = master_kind(path) or path.stem
    made: dict[str, dict[str, str]] = {}
    with fits.open(path, memmap=True) as hdul:
        for ext in CCD_EXTS:
            if ext not in hdul:
                continue
            try:
                made[ext] = ccd_previews(
                    path, hdul, ext, outdir, kind, max_pixels, flag_min_count, order_mask
                )
            except Exception as exc:  # a preview never fails the night: logged, left out
                log.error("%s %s: no preview (%s: %s)", path.name, ext, type(exc).__name__, exc)
    return made


def ccd_previews(
    path: Path,
    hdul: fits.HDUList,
    ext: str,
    outdir: Path,
    kind: str,
    max_pixels: int,
    flag_min_count: int,
    order_mask: str | Path | None,
) -> dict[str, str]:
    """The preview and histograms PNGs of one CCD extension of an open master."""
    hdr = hdul[ext].header
    image = np.asarray(hdul[ext].data, dtype=np.float64)
    cnt = np.asarray(hdul[f"{ext}_CNT"].data)
    mask = None
    if master_type(kind) == "flat" and order_mask and ext != "CA_HK":
        with fits.open(order_mask, memmap=False) as m:
            if ext in m and m[ext].data is not None:
                mask = np.asarray(m[ext].data)
    title = title_lines(path.stem, ext, hdr)
    unit = hdr.get("BUNIT", "")
    preview = outdir / f"{ext}-preview.png"
    render_preview(image, preview, title, unit, max_pixels, mask)
    hist = outdir / f"{ext}-histograms.png"
    median, noise = hdr.get("QCMEDIAN"), hdr.get("QCNOISE")
    if master_type(kind) == "flat":  # most of the flat is 1.0: histogram its traces
        unc = np.asarray(hdul[f"{ext}_UNC"].data)
        image = np.where(unc > 0, image, np.nan)
        title += "  (normalised pixels, UNC > 0)"
    render_histograms(
        image,
        cnt,
        hist,
        title,
        unit,
        int(hdr.get("NFRAMES", 0)),
        flag_min_count,
        median,
        noise,
    )
    return {"preview": str(preview), "histograms": str(hist)}


# -- HTML pages (statistics and provenance) -------------------------------------------------
STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #bbb; padding: 2px 6px; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
.warn { background: #fff3cd; border: 1px solid #e0a800; padding: 0.5em 1em; }
.ok { background: #e8f5e9; border: 1px solid #81c784; padding: 0.5em 1em; }
code { font-size: 12px; }
"""


def _fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return html.escape(str(value))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _list(values, spec=".2f") -> str:
    return ", ".join(_fmt(v, spec) for v in values) if values else "-"


def statistics_rows(records: list[dict]) -> str:
    head = (
        "<tr><th class=l>master</th><th class=l>CCD</th><th class=l>unit</th><th>NFRAMES</th>"
        "<th>INFOBITS</th><th>median</th><th>robust noise</th><th>low CNT</th>"
        "<th>rejected</th><th>&Delta; median</th><th class=l>previous master</th>"
        "<th>overscan [e-]</th><th>read noise [e-]</th></tr>"
    )
    rows = [head]
    for rec in records:
        for ext, s in rec["ccds"].items():
            rows.append(
                "<tr>"
                f"<td class=l>{html.escape(rec['master'])}</td><td class=l>{ext}</td>"
                f"<td class=l>{html.escape(s.get('bunit') or '')}</td>"
                f"<td>{_fmt(s.get('nframes'))}</td><td>{_fmt(rec.get('infobits'))}</td>"
                f"<td>{_fmt(s.get('median'))}</td><td>{_fmt(s.get('noise'))}</td>"
                f"<td>{_pct(s.get('low_count_fraction'))}</td>"
                f"<td>{_pct(s.get('rejected_fraction'))}</td>"
                f"<td>{_fmt(s.get('median_change'), '+.4g')}</td>"
                f"<td class=l>{html.escape(s.get('previous') or '-')}</td>"
                f"<td>{_list(s.get('overscan_level'), '.1f')}</td>"
                f"<td>{_list(s.get('read_noise'))}</td>"
                "</tr>"
            )
    return "<table>" + "\n".join(rows) + "</table>"


def warnings_block(warnings_list: list[str], notes: list[str] | None = None) -> str:
    """The warnings (or "No QA warning."), then the notes: flags that are information."""
    if not warnings_list:
        out = "<div class=ok>No QA warning.</div>"
    else:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings_list)
        out = f"<div class=warn><b>{len(warnings_list)} QA warning(s)</b><ul>{items}</ul></div>"
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        out += f"<div class=ok><b>{len(notes)} note(s)</b><ul>{items}</ul></div>"
    return out


def rejects_block(rejects: list[dict]) -> str:
    """The frames L0 -> 2D refused (left out of the night's masters), one line each."""
    if not rejects:
        return "<p>No frame was refused by L0 &rarr; 2D.</p>"
    items = "".join(
        f"<li><code>{html.escape(r['name'])}</code>: {html.escape(r['problem'])}"
        f"{'' if r.get('current', True) else ' (stale: tried again next run)'}</li>"
        for r in rejects
    )
    title = f"{len(rejects)} frame(s) refused by L0 &rarr; 2D"
    return f"<div class=warn><b>{title}</b><ul>{items}</ul></div>"


def provenance_block(rec: dict) -> str:
    import json

    preds = rec.get("predecessors") or {}
    pred_html = (
        "".join(f"<li>{k}: <code>{html.escape(v)}</code></li>" for k, v in preds.items())
        or "<li>none (a bias is made from raw frames only)</li>"
    )
    rows = [
        "<tr><th>#</th><th class=l>2D file</th><th class=l>L0 file</th><th>MJD-OBS</th>"
        "<th>EXPTIME</th><th class=l>used</th></tr>"
    ]
    for i, row in enumerate(rec.get("inputs") or [], start=1):
        used = "yes" if row["used"] else f"no: {html.escape(row.get('reason') or '')}"
        rows.append(
            f"<tr><td>{i}</td><td class=l>{html.escape(row['filename'])}</td>"
            f"<td class=l>{html.escape(row['l0file'])}</td>"
            f"<td>{_fmt(row.get('mjd_obs'), '.6f')}</td><td>{_fmt(row.get('exptime'), 'g')}</td>"
            f"<td class=l>{used}</td></tr>"
        )
    config = json.dumps(rec.get("configuration"), indent=1, sort_keys=True)
    return (
        f"<h3>Provenance of {html.escape(rec['file'])}</h3>"
        f"<p>IMTYPE {html.escape(str(rec.get('imtype')))}, NFRAMES {rec.get('nframes')}, "
        f"MJD {_fmt(rec.get('minmjd'), '.6f')} .. {_fmt(rec.get('maxmjd'), '.6f')}, "
        f"clip k (NSIGMA) {rec.get('nsigma')}, INFOBITS {rec.get('infobits')}; "
        f"software kpfmasters {html.escape(str(rec.get('software_version')))}, "
        f"configuration hash (CFGHASH) <code>{html.escape(str(rec.get('cfghash')))}</code>, "
        f"written {html.escape(str(rec.get('created')))} UTC; statistics "
        f"{html.escape(rec.get('qc_source', ''))}.</p>"
        f"<p>Predecessor masters used:</p><ul>{pred_html}</ul>"
        f"<p>Inputs, in stacking order ({len(rec.get('inputs') or [])} picked):</p>"
        "<table>" + "\n".join(rows) + "</table>"
        f"<p>Configuration of this master type:</p><pre>{html.escape(config)}</pre>"
    )


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h2>{html.escape(title)}</h2>{body}</body></html>\n"
    )


def master_page(rec: dict) -> str:
    """Statistics, warnings and provenance of one master (an HTML page)."""
    body = warnings_block(rec.get("warnings") or [], rec.get("notes") or [])
    body += "<h3>Statistics (QC keywords)</h3>" + statistics_rows([rec])
    body += provenance_block(rec)
    return page(f"{rec['file']}", body)


def night_page(doc: dict) -> str:
    """The night's warnings and the statistics table of every master (an HTML page)."""
    date = doc["date"]
    body = warnings_block(doc.get("warnings") or [], doc.get("notes") or [])
    body += rejects_block(doc.get("rejects") or [])
    body += f"<h3>Statistics of the {len(doc['masters'])} master(s)</h3>"
    body += statistics_rows(doc["masters"])
    body += (
        "<p>median and robust noise (1.4826 &times; MAD) over finite pixels (the flat: its "
        "normalised pixels, UNC &gt; 0); low CNT: fraction of pixels with CNT below the "
        "master's flag threshold; rejected: 1 &minus; sum(CNT) / (NFRAMES &times; pixels); "
        "&Delta; median: against the previous master named; overscan and read noise: per "
        "amplifier, from the 2D inputs (mean level, median read noise).</p>"
    )
    for rec in doc["masters"]:
        body += provenance_block(rec)
    return page(f"KPF masters of night {date}: quality assessment", body)
