"""A small true wavelength solution lambda(x) per trace, KPF-like, for the WLS tests.

lambda(x) = (K / m) * exp(-(v_px / c) * (x - x_c - d_k) + a2 u^2 + a3 u^3) with
K = 6.140e5 A, v_px = 870 m/s per pixel (KPF's dispersion; lambda falls with x), m the
echelle order (GREEN from 137 down), d_k a per-orderlet shift (pixels), u = (x - x_c) / x_c
and a2, a3 small per-order distortions (at most ``distortion_px`` pixels).
"""

from __future__ import annotations

import numpy as np

K_A = 6.140e5
V_PX = 870.0
C_MS = 299_792_458.0
ORDERLETS = ("SKY", "SCI1", "SCI2", "SCI3", "CAL")


def wave_truth(n_orders, ncol, first_order=137, seed=1, distortion_px=2.0, shift_px=0.7):
    """True lambda(x) of every trace, rows order-major (order 0 SKY..CAL, order 1 ...).

    Returns
    -------
    wave : ndarray, shape (5 * n_orders, ncol)
    order : ndarray of int, shape (5 * n_orders,)
        Order index (0 = bottom, the bluest).
    orderlet : list of str
    """
    rng = np.random.default_rng(seed)
    x = np.arange(ncol, dtype=float)
    xc = (ncol - 1) / 2.0
    u = (x - xc) / xc
    k = V_PX / C_MS
    shifts = rng.uniform(-shift_px, shift_px, 5)
    rows, order, orderlet = [], [], []
    for o in range(n_orders):
        m = first_order - o
        a2, a3 = rng.uniform(-1, 1, 2) * distortion_px * k
        for j, name in enumerate(ORDERLETS):
            rows.append((K_A / m) * np.exp(-k * (x - xc - shifts[j]) + a2 * u**2 + a3 * u**3))
            order.append(o)
            orderlet.append(name)
    return np.array(rows), np.array(order), orderlet


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
    """A KPF-layout L1 HDUList of a lamp (kind 'thar' or 'lfc') from LampChip objects.

    WAVE holds the truth times (1 + wave_offset_ms / c), or ``wave`` (chip -> rows in the
    solvers' orderlet-major order, e.g. a solution's ``wave``).
    """
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()]
    hdus[0].header["OBJECT"] = "autocal-thar-all-morn" if kind == "thar" else "cal-LFC-morn"
    hdus[0].header["IMTYPE"] = "Arclamp"
    slots = {
        "SCI1": "SCI_{}1",
        "SCI2": "SCI_{}2",
        "SCI3": "SCI_{}3",
        "SKY": "SKY_{}",
        "CAL": "CAL_{}",
    }
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
        for what, arr in (("FLUX", flux), ("VAR", var), ("WAVE", w)):
            for k, name in enumerate(ORDERLETS):
                hdus.append(
                    fits.ImageHDU(
                        arr[k::5].astype(np.float64),
                        name=f"{chip_name}_" + slots[name].format(what),
                    )
                )
    hdus.append(
        fits.BinTableHDU.from_columns(
            [fits.Column("CHIP", "5A", array=np.array(["GREEN"]))], name="TRACE"
        )
    )
    hdus.append(
        fits.BinTableHDU.from_columns(
            [
                fits.Column("ROLE", "8A", array=np.array(["2d"])),
                fits.Column(
                    "FILENAME", "40A", array=np.array(["kpf_20230606_master_arclamp.fits"])
                ),
                fits.Column("MD5", "32A", array=np.array(["0" * 32])),
            ],
            name="INPUTS",
        )
    )
    return fits.HDUList(hdus)
