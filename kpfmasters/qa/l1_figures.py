"""QA figures of the 1D products: extracted orders of an L1, the flat's blaze, and the order
traces drawn over the flat's lamp stack.

Matplotlib with the Agg backend; PNGs through :func:`kpfmasters.qa.figures.save_png`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from kpfmasters.qa.figures import block_average, display_factor, save_png, zscale_limits  # noqa: E402
from kpfmasters.science.l1 import CHIPS, L1_ORDERLETS, ext_name  # noqa: E402
from kpfmasters.science.traces import TraceSet  # noqa: E402

# Orderlets of an order often carry the same light: line widths and styles keep each visible.
STYLES = {
    "SKY": ("-", 2.4),
    "SCI1": ("-", 1.6),
    "SCI2": ("--", 1.1),
    "SCI3": (":", 1.1),
    "CAL": ("-", 0.5),
}
COLOURS = {
    "SKY": "#1f77b4",
    "SCI1": "#2ca02c",
    "SCI2": "#98df8a",
    "SCI3": "#bcbd22",
    "CAL": "#d62728",
}


def spectra_figure(l1: str | Path, out: str | Path, kind: str = "FLUX") -> bool:
    """Flux (or ``BLAZE``) against column of every order, one panel per CHIP, one colour and
    line style per orderlet; returns False (nothing written) when the file has no such
    extensions."""
    l1 = Path(l1)
    with fits.open(l1) as hdul:
        chips = [c for c in CHIPS if ext_name(c, "SCI2", kind) in hdul]
        if not chips:
            return False
        unit = hdul[ext_name(chips[0], "SCI2", kind)].header.get("BUNIT", "")
        fig, axes = plt.subplots(
            len(chips), 1, figsize=(9, 3.2 * len(chips)), layout="constrained", squeeze=False
        )
        for ax, chip in zip(axes[:, 0], chips, strict=True):
            for orderlet in L1_ORDERLETS:
                data = hdul[ext_name(chip, orderlet, kind)].data
                for row in data:
                    if np.isfinite(row).any():
                        style, width = STYLES[orderlet]
                        ax.plot(
                            row,
                            ls=style,
                            lw=width,
                            alpha=0.8,
                            color=COLOURS[orderlet],
                            label=orderlet,
                        )
            n_orders = data.shape[0]
            ax.set_title(f"{chip}: {n_orders} orders, {kind}", fontsize=9)
            ax.set_xlabel("column")
            ax.set_ylabel(unit or kind)
            handles, labels = ax.get_legend_handles_labels()
            seen = dict(zip(labels, handles, strict=True))
            ax.legend(seen.values(), seen.keys(), fontsize=7, ncol=5, loc="upper right")
        fig.suptitle(f"{l1.name}: {kind} of every order and orderlet", fontsize=10)
        save_png(fig, out)
    return True


def trace_overlay_figure(
    flat: str | Path, traces: dict[str, TraceSet], out: str | Path, max_pixels: int = 512
) -> None:
    """The flat's lamp stack of each CCD (z-scale, block-averaged to ``max_pixels``) with the
    fitted trace centres (solid) and aperture edges (dotted), one colour per orderlet."""
    flat = Path(flat)
    ccds = [c for c in traces if c]
    fig, axes = plt.subplots(
        1, len(ccds), figsize=(6.4 * len(ccds), 6.4), layout="constrained", squeeze=False
    )
    with fits.open(flat, memmap=True) as hdul:
        for ax, ccd in zip(axes[0], ccds, strict=True):
            stack = np.asarray(hdul[f"{ccd}_STACK"].data, dtype=np.float64)
            nrows, ncols = stack.shape
            factor = display_factor(stack.shape, max_pixels)
            shown = block_average(stack, factor)
            lo, hi = zscale_limits(shown)
            ax.imshow(
                shown,
                origin="lower",
                cmap="gray",
                vmin=lo,
                vmax=hi,
                extent=(-0.5, ncols - 0.5, -0.5, nrows - 0.5),
                interpolation="nearest",
            )
            ts = traces[ccd]
            x = np.arange(ncols, dtype=np.float64)
            centre = ts.centres(ncols)
            for i, fiber in enumerate(ts.fiber):
                sel = (x >= ts.x1[i]) & (x <= ts.x2[i])
                colour = COLOURS[fiber]
                ax.plot(x[sel], centre[i, sel], lw=0.5, color=colour)
                ax.plot(x[sel], centre[i, sel] - ts.bottom[i], lw=0.4, ls=":", color=colour)
                ax.plot(x[sel], centre[i, sel] + ts.top[i], lw=0.4, ls=":", color=colour)
            ax.set_xlim(-0.5, ncols - 0.5)
            ax.set_ylim(-0.5, nrows - 0.5)
            ax.set_title(f"{ccd}_STACK with {len(ts)} traces, {ts.n_orders} orders", fontsize=9)
            ax.set_xlabel("column")
            ax.set_ylabel("row")
    handles = [plt.Line2D([], [], color=c, label=f) for f, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"{flat.name}: order traces (solid: centre, dotted: aperture)", fontsize=10)
    save_png(fig, out)


def l1_figures(
    l1: str | Path,
    out_dir: str | Path,
    flat: str | None = None,
    traces=None,
    max_pixels: int = 512,
) -> list[str]:
    """Every QA figure of one L1 into ``out_dir``: ``L1-orders.png``; for the flat also
    ``L1-blaze.png`` and ``L1-traces.png`` (needs ``flat`` and ``traces``). Returns names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if spectra_figure(l1, out_dir / "L1-orders.png", "FLUX"):
        made.append("L1-orders.png")
    if spectra_figure(l1, out_dir / "L1-blaze.png", "BLAZE"):
        made.append("L1-blaze.png")
    if flat is not None and traces:
        trace_overlay_figure(flat, traces, out_dir / "L1-traces.png", max_pixels)
        made.append("L1-traces.png")
    return made
