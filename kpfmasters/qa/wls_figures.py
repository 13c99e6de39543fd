"""QA of the wavelength solutions and arclamp drift tables: figures, the per-order table and
the warnings an operator reads.

- ``WLS-residuals.png``: the residual of every used line, c * (lambda_fit(X) - WAVE) / WAVE
  in m/s, against its column, one panel per CHIP, one colour per order;
- ``WLS-orders.html``: the ``WLS_ORDERS`` table (lines, degree, RMS_MS, SEM_MS, status);
- ``WLS-drift.png``: the L2's RV_MS of every order and orderlet with its error, per CHIP,
  and the CCD means DRIFTG / DRIFTR;
- ``WLS-summary.json``: median RMS per CHIP, orders left at the prior, drift, warnings.

Warnings: an order of a lit orderlet that fell back to the prior; a CHIP's median RMS more
than ``max_rms_ratio`` times the previous night's solution of the same lamp.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from kpfmasters.io.fits import atomic_output  # noqa: E402
from kpfmasters.qa.figures import save_png  # noqa: E402

CHIPS = ("GREEN", "RED")
ORDERLET_MARKERS = {"SKY": "v", "SCI1": "o", "SCI2": "s", "SCI3": "D", "CAL": "^"}


def _text(values) -> np.ndarray:
    return np.char.strip(np.asarray(values).astype(str))


def residuals_figure(wls_path: str | Path, out: str | Path) -> None:
    """Residuals of the used lines (m/s) against column, per CHIP, coloured by order."""
    wls_path = Path(wls_path)
    with fits.open(wls_path) as hdul:
        lines = hdul["WLS_LINES"].data
        kind = hdul[0].header.get("WLSTYPE", "")
        chip_col, used = _text(lines["CHIP"]), np.asarray(lines["USED"], dtype=bool)
        fig, axes = plt.subplots(2, 1, figsize=(9, 7), layout="constrained", squeeze=False)
        for ax, chip in zip(axes[:, 0], CHIPS, strict=True):
            sel = used & (chip_col == chip)
            if sel.any():
                order = np.asarray(lines["ORDER"])[sel]
                points = ax.scatter(
                    lines["X"][sel], lines["RESID_MS"][sel], c=order, s=3, cmap="viridis"
                )
                fig.colorbar(points, ax=ax, label="order")
                lim = 5 * np.nanpercentile(np.abs(lines["RESID_MS"][sel]), 68) + 1
                ax.set_ylim(-lim, lim)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(f"{chip}: {int(sel.sum())} lines used", fontsize=9)
            ax.set_xlabel("column")
            ax.set_ylabel("residual (m/s)")
        fig.suptitle(f"{wls_path.name}: {kind} line residuals", fontsize=10)
        save_png(fig, out)


def drift_figure(l2_path: str | Path, out: str | Path) -> None:
    """RV_MS +- RV_ERR_MS of every order and orderlet, per CHIP, with DRIFTG / DRIFTR."""
    l2_path = Path(l2_path)
    with fits.open(l2_path) as hdul:
        rv = hdul["RV"].data
        hdr = hdul[0].header
        chip_col, orderlet_col = _text(rv["CHIP"]), _text(rv["ORDERLET"])
        fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), layout="constrained", squeeze=False)
        for ax, chip in zip(axes[:, 0], CHIPS, strict=True):
            for name, marker in ORDERLET_MARKERS.items():
                sel = (chip_col == chip) & (orderlet_col == name) & (rv["NLINES"] > 0)
                if sel.any():
                    ax.errorbar(
                        rv["ORDER"][sel], rv["RV_MS"][sel], yerr=rv["RV_ERR_MS"][sel],
                        fmt=marker, ms=3, lw=0.6, label=name,
                    )  # fmt: skip
            key = "DRIFTG" if chip == "GREEN" else "DRIFTR"
            mean, err = hdr.get(key), hdr.get(key + "E")
            if isinstance(mean, float):
                ax.axhline(mean, color="k", lw=0.8)
                ax.set_title(f"{chip}: {key} = {mean:.2f} +- {err:.2f} m/s", fontsize=9)
            else:
                ax.set_title(f"{chip}: no lines", fontsize=9)
            ax.set_xlabel("order (0 = bottom of the CCD)")
            ax.set_ylabel("drift (m/s)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, ncol=5)
        fig.suptitle(f"{l2_path.name}: lines against the reference solution", fontsize=10)
        save_png(fig, out)


def orders_html(wls_path: str | Path, out: str | Path) -> None:
    """The ``WLS_ORDERS`` table as an HTML page."""
    wls_path = Path(wls_path)
    with fits.open(wls_path) as hdul:
        table = hdul["WLS_ORDERS"].data
        names = table.columns.names
        rows = []
        for rec in table:
            cells = []
            for name in names:
                value = rec[name]
                text = f"{value:.2f}" if isinstance(value, float | np.floating) else str(value)
                cells.append(f"<td>{html.escape(text.strip())}</td>")
            style = ' style="background:#fdd"' if str(rec["STATUS"]).strip() != "fit" else ""
            rows.append(f"<tr{style}>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    page = (
        f"<html><head><meta charset='utf-8'><title>{html.escape(wls_path.name)}</title></head>"
        f"<body><h3>{html.escape(wls_path.name)}: per order and orderlet</h3>"
        f"<table border='1' cellspacing='0'><tr>{head}</tr>{''.join(rows)}</table></body></html>"
    )
    with atomic_output(out) as tmp:
        Path(tmp).write_text(page)


def summary(wls_path: str | Path, l2_path: str | Path | None) -> dict:
    """Median RMS per CHIP, orders left at the prior (lit orderlets only), drift."""
    with fits.open(wls_path) as hdul:
        hdr = hdul[0].header
        orders = hdul["WLS_ORDERS"].data
        prior = [
            f"{str(r['CHIP']).strip()} {str(r['ORDERLET']).strip()} order {int(r['ORDER'])}"
            for r in orders
            if str(r["STATUS"]).strip() != "fit"
        ]
        out = {
            "file": Path(wls_path).name,
            "type": hdr.get("WLSTYPE"),
            "prior": hdr.get("WLSPRIOR"),
            "median_rms_ms": {c: hdr.get(f"WLSRMS{c[0]}") for c in CHIPS},
            "monotonic": hdr.get("MONOTWLS") == 1,
            "orders_at_prior": prior,
        }
    if l2_path:
        with fits.open(l2_path) as l2:
            h = l2[0].header
            out["drift_ms"] = {c: [h.get(f"DRIFT{c[0]}"), h.get(f"DRIFT{c[0]}E")] for c in CHIPS}
    return out


def wls_warnings(record: dict, previous: dict | None, max_rms_ratio: float | None) -> list[str]:
    """Warnings of one solution's :func:`summary` against the previous night's."""
    out = []
    if record["orders_at_prior"]:
        listed = ", ".join(record["orders_at_prior"][:12])
        more = len(record["orders_at_prior"]) - 12
        out.append(
            f"{record['file']}: {len(record['orders_at_prior'])} orders x orderlets kept the "
            f"prior ({listed}{f' and {more} more' if more > 0 else ''})"
        )
    if not record["monotonic"]:
        out.append(f"{record['file']}: MONOTWLS = 0, lambda is not monotonic in some order")
    if previous and max_rms_ratio:
        for chip in CHIPS:
            now, then = record["median_rms_ms"].get(chip), previous["median_rms_ms"].get(chip)
            if isinstance(now, float) and isinstance(then, float) and then > 0:
                if now > max_rms_ratio * then:
                    out.append(
                        f"{record['file']}: {chip} median RMS {now:.2f} m/s is "
                        f"{now / then:.1f} x the previous solution's ({previous['file']}: "
                        f"{then:.2f} m/s)"
                    )
    return out


def wls_qa(
    wls_path: str | Path,
    l2_path: str | Path | None,
    previous: str | Path | None,
    out_dir: str | Path,
    max_rms_ratio: float | None,
) -> dict:
    """Every figure, the table and the summary (with warnings) of one solution in
    ``out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    residuals_figure(wls_path, out_dir / "WLS-residuals.png")
    orders_html(wls_path, out_dir / "WLS-orders.html")
    if l2_path:
        drift_figure(l2_path, out_dir / "WLS-drift.png")
    record = summary(wls_path, l2_path)
    before = summary(previous, None) if previous else None
    record["previous"] = before["file"] if before else None
    record["warnings"] = wls_warnings(record, before, max_rms_ratio)
    with atomic_output(out_dir / "WLS-summary.json") as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record
