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
