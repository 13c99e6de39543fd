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
