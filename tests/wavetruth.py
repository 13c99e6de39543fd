"""Simulated lamp nights for the WLS tests: the simulator's true lambda(x) per trace
(KPF-like: 870 m/s per pixel, lambda falling with x, GREEN orders from 137 and RED from 102
down) and ThAr / LFC spectra rendered from it (kpfmasters.sim.lamps), written as L1 files by
the product's own L1 writer.
"""

from __future__ import annotations

import numpy as np

C_MS = 299_792_458.0
ORDERLETS = ("SKY", "SCI1", "SCI2", "SCI3", "CAL")


def wave_truth(n_orders, ncol, first_order=137, seed=1):
    """True lambda(x) of every trace, rows order-major (order 0 SKY..CAL, order 1 ...): the
    simulator's spectrograph wavelengths (:func:`kpfmasters.sim.spectrograph.wavelengths`).

    Returns
    -------
    wave : ndarray, shape (5 * n_orders, ncol)
    order : ndarray of int, shape (5 * n_orders,)
        Order index (0 = bottom, the bluest).
    orderlet : list of str
    """
    from kpfmasters.sim.spectrograph import wavelengths

    order = np.repeat(np.arange(n_orders), 5)
    orderlet = list(ORDERLETS) * n_orders
    wave = wavelengths(first_order - order, orderlet, ncol, np.random.default_rng(seed))
    return wave, order, orderlet


# ---------------------------------------------------------------------------- lamp nights

FIRST_ORDER = {"GREEN": 137, "RED": 102}
THROUGHPUT = np.array([0.6, 0.95, 1.0, 0.9, 0.75])  # SKY, SCI1, SCI2, SCI3, CAL
BACKGROUND = 20.0  # electrons per extracted pixel
READ_NOISE = 10.0  # electrons per extracted pixel (the aperture's rows together)


class LampChip:
    """One CHIP of a simulated lamp night: truth, ThAr and LFC spectra (rows order-major)."""

    def __init__(
        self,
        chip,
        n_orders,
        ncol,
        seed,
        linelist,
        catalogue_error_ms=1.0,
        thar_flux=(1e3, 3e5),
        lfc_dark_below=None,
        f0=5.22e9,
        frep=2.0e10,
    ):
        from kpfmasters.sim import lamps

        self.chip = chip
        self.wave, self.order, self.orderlet = wave_truth(
            n_orders, ncol, FIRST_ORDER[chip], seed=seed
        )
        rng = np.random.default_rng(seed + 100)
        self.sigma = lamps.line_sigma(*self.wave.shape, rng)
        self.throughput = THROUGHPUT[np.arange(len(self.wave)) % 5]
        self.thar = lamps.thar_lines(
            linelist, self.wave, rng, catalogue_error_ms=catalogue_error_ms, flux_range=thar_flux
        )
        self.thar_placed = lamps.place_lines(self.wave, self.thar, self.sigma, self.throughput)
        self.thar_expected = lamps.render(self.wave.shape, self.thar_placed, BACKGROUND)
        self.thar_flux, self.thar_var = lamps.observe(self.thar_expected, READ_NOISE, rng)
        if lfc_dark_below is None:  # the bluest order of GREEN gets no comb light
            lfc_dark_below = float(self.wave[:5].max()) + 20.0 if chip == "GREEN" else 0.0
        self.lfc = lamps.lfc_lines(self.wave, rng, f0, frep, dark_below=lfc_dark_below)
        self.lfc_placed = lamps.place_lines(self.wave, self.lfc, self.sigma, self.throughput)
        self.lfc_expected = lamps.render(self.wave.shape, self.lfc_placed, BACKGROUND)
        self.lfc_flux, self.lfc_var = lamps.observe(self.lfc_expected, READ_NOISE, rng)


def to_orderlet_major(rows, n_orders):
    """(5 * n_orders, ncol) order-major rows -> orderlet-major (SKY orders, SCI1 orders...)."""
    return np.vstack([rows[k::5] for k in range(5)])


def l1_hdul(chips, kind, wave_offset_ms=0.0, wave=None):
    """The L1 HDUList of a lamp (kind 'thar' or 'lfc') written by kpfmasters.science.l1.

    WAVE holds the truth times (1 + wave_offset_ms / c), or ``wave`` (chip -> rows in the
    solvers' orderlet-major order, e.g. a solution's ``wave``).
    """
    from astropy.io import fits

    from kpfmasters.science.l1 import ChipSpectra, l1_hdulist
    from kpfmasters.science.traces import TraceSet

    primary = fits.Header()
    primary["OBJECT"] = "autocal-thar-all-morn" if kind == "thar" else "cal-LFC-morn"
    primary["IMTYPE"] = "Arclamp"
    spectra, traces = {}, {}
    for chip_name in ("GREEN", "RED"):
        c = chips[chip_name]
        n = int(c.order.max()) + 1
        flux = c.thar_flux if kind == "thar" else c.lfc_flux
        var = c.thar_var if kind == "thar" else c.lfc_var
        w = c.wave * (1 + wave_offset_ms / C_MS)
        if wave is not None:
            w = np.empty_like(c.wave)
            for k in range(5):
                w[k::5] = wave[chip_name][k * n : (k + 1) * n]
        spectra[chip_name] = ChipSpectra(
            {o: flux[k::5] for k, o in enumerate(ORDERLETS)},
            {o: var[k::5] for k, o in enumerate(ORDERLETS)},
            {o: w[k::5] for k, o in enumerate(ORDERLETS)},
            unit="electrons",
        )
        ntr = len(c.order)
        ncol = c.wave.shape[1]
        traces[chip_name] = TraceSet(
            np.c_[20.0 * np.arange(ntr), np.zeros((ntr, 3))], np.full(ntr, 3.0),
            np.full(ntr, 3.0), np.zeros(ntr), np.full(ntr, ncol - 1), c.orderlet, c.order,
        )  # fmt: skip
    inputs = [("2d", "kpf_20230606_master_arclamp.fits", "0" * 32)]
    return l1_hdulist(primary, spectra, traces, inputs, {"WLSFILE": ("reference.fits", "")})


# ------------------------------------------------------------------- a night's WLS against truth


def night_wls_errors(sim, masters_dir, date, tag, catalogue_error_ms=0.0):
    """Each fitted row of a night's WLS file against the simulator's truth.

    For every row (order of an orderlet) with STATUS ``fit``: ``actual``, the rms over the
    trace's columns of c (lambda_fit - lambda_true) / lambda_true (m/s); ``zero_point``,
    its mean; ``sem``, the row's SEM_MS; ``limit``, the rms the noise allows, from the
    used lines at their columns and the row's degree: each line's Cramer-Rao centre error
    from its true flux and width (the truth's noise-free spectrum fitted at the line), the
    arclamp master's frames (NFRAMES x EXPTIME), the read noise of the aperture's rows,
    the background under the lines, and the photon noise of the master flat's frames
    that the arc is divided by; with ``catalogue_error_ms`` (ThAr) the list's errors join
    each line's in quadrature. Returns a list of dicts.
    """
    from astropy.io import fits

    from kpfmasters.science import wls
    from kpfmasters.science.extract import aperture_weights
    from kpfmasters.science.l1 import ext_name
    from kpfmasters.science.linefit import LineFitSettings, fit_lines
    from kpfmasters.science.traces import evaluate
    from kpfmasters.sim import lamps

    half = 5
    arc = fits.getheader(masters_dir / f"kpf_{date}_master_arclamp_{tag}.fits")
    flat = fits.getheader(masters_dir / f"kpf_{date}_master_flat.fits")
    electrons = arc["NFRAMES"] * arc["EXPTIME"]  # e-/s -> electrons of the stacked frames
    flat_seconds = flat["NFRAMES"] * flat["EXPTIME"]
    out = []
    with fits.open(masters_dir / f"kpf_{date}_master_WLS_{tag}_L1.fits") as hdul:
        orders, lines = hdul["WLS_ORDERS"].data, hdul["WLS_LINES"].data
        trace = hdul["TRACE"].data
        for row in orders[orders["STATUS"] == "fit"]:
            chip, orderlet, o = row["CHIP"].strip(), row["ORDERLET"].strip(), int(row["ORDER"])
            truth = sim.ccds[f"{chip}_CCD"]
            spec = truth.spectrograph
            pairs = zip(spec.fiber, spec.order, strict=True)
            i = next(k for k, (f, n) in enumerate(pairs) if f == orderlet and n == o)
            true_row = np.asarray(spec.wave[i], dtype=float)
            ncol = len(true_row)
            cols = np.arange(int(spec.x1[i]), int(spec.x2[i]) + 1)
            fitted = hdul[ext_name(chip, orderlet, "WAVE")].data[o]
            v = C_MS * (fitted[cols] - true_row[cols]) / true_row[cols]
            sel = (
                (np.char.strip(lines["CHIP"]) == chip)
                & (np.char.strip(lines["ORDERLET"]) == orderlet)
                & (lines["ORDER"] == o)
                & lines["USED"]
            )
            x = lines["X"][sel].astype(float)
            # true flux and width of each line: the noise-free spectrum fitted there
            light = np.asarray(spec.arcs[arc["OBJECT"]][i], dtype=float)[None, :]
            true = fit_lines(
                light, np.ones_like(light), np.zeros(len(x), int), x, half, 2.0,
                LineFitSettings(min_snr=0.0, max_chi2red=np.inf),
            )  # fmt: skip
            t = trace[
                (np.char.strip(trace["CHIP"]) == chip)
                & (np.char.strip(trace["Fiber"]) == orderlet)
                & (trace["Order"] == o)
            ][0]
            coeffs = np.array([[t["Coeff0"], t["Coeff1"], t["Coeff2"], t["Coeff3"]]])
            centre = evaluate(coeffs, np.arange(ncol, dtype=float))
            edges = np.array([t["BottomEdge"]]), np.array([t["TopEdge"]])
            rows, w = aperture_weights(centre, *edges)
            rows, w = np.clip(rows[0], 0, truth.shape[0] - 1), w[0]
            lamp = (truth.lamp * truth.prnu).astype(float)[rows, np.arange(ncol)[None, :]]
            rel2 = np.sum(w * w * lamp, axis=0) / (flat_seconds * np.sum(w * lamp, axis=0) ** 2)
            flux1 = hdul[ext_name(chip, orderlet, "FLUX")].data[o]
            background = max(float(np.nanpercentile(flux1, 5)), 0.0) * electrons
            npix = float(t["BottomEdge"] + t["TopEdge"])
            read = float(np.mean(truth.read_noise)) * np.sqrt(npix * arc["NFRAMES"])
            err_x = lamps.centre_error_limit(
                true.amp * electrons, true.sigma, x, background, read, half,
                relative=np.sqrt(np.interp(x, np.arange(ncol), rel2)),
            )  # fmt: skip
            lam = np.interp(x, np.arange(ncol), true_row)
            err_lam = np.hypot(err_x * wls.dispersion(true_row, x), catalogue_error_ms * lam / C_MS)
            ok = np.isfinite(err_lam)
            limit = lamps.solution_error_limit(
                x[ok], err_lam[ok], ncol, int(row["DEGREE"]), true_row, columns=cols
            )
            out.append(
                {
                    "row": f"{chip} {orderlet} order {o}",
                    "actual": float(np.sqrt(np.mean(v * v))),
                    "zero_point": float(np.mean(v)),
                    "sem": float(row["SEM_MS"]),
                    "limit": limit,
                    "nlines": int(sel.sum()),
                    "degree": int(row["DEGREE"]),
                }
            )
    return out
