"""The simulator's spectrograph: where each orderlet trace lies, its wavelengths, its light.

Two geometries:

- ``compact`` (any size; the small and medium test nights): the simulator's own traces,
  orderlets 6 px apart with a Gaussian cross-profile of sigma 1 px
  (:func:`kpfmasters.sim.truth.trace_centres`);
- ``kpf`` (4080 x 4080, or its bottom-left corner at smaller sizes): KPF's measured traces
  (``kpfmasters/data/kpf_order_trace_<CCD>.csv``, from kpf-next): 35 GREEN orders of five
  orderlets, 32 RED
  orders whose bottom one has no SKY; flat-topped slit images (half-height from the file's
  edges, soft edges of sigma ``SLIT_SOFTNESS``).

Every trace has a true wavelength solution in vacuum Angstrom that decreases with column x:
``lambda(x) = K / m * exp(-(v_px / c) * (x - x_c - delta_k + p2 u^2 + p3 u^3))`` with
``K = M_LAMBDA`` (m * lambda at the order centre), ``v_px`` = ``VELOCITY_PER_PIXEL``, echelle
order m (GREEN 137 at the bottom down to 103, RED 102 down to 71), ``x_c`` the middle column,
``delta_k`` a fixed offset per orderlet (pixels), ``u = (x - x_c) / x_c`` and a smooth
curvature ``p2, p3`` (pixels, per trace).

Arrays are indexed by trace, bottom to top (the order of the trace CSV), in the CCD frame of
the truth images (row 0 = the bottom of the CCD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from kpfmasters.science.traces import ORDERLETS, TraceSet, csv_text, read_traces

C_KMS = 299792.458
M_LAMBDA = 6.140e5  # Angstrom: m * lambda at the centre of an order
VELOCITY_PER_PIXEL = 0.87  # km/s
FIRST_ECHELLE_ORDER = {"GREEN_CCD": 137, "RED_CCD": 102}
ORDERLET_OFFSET_PX = np.array([-0.6, 0.25, 0.0, -0.2, 0.7])  # delta_k, SKY..CAL
CURVATURE_PX = 2.0  # |p2|, |p3| at most this many pixels at full size (scaled down, >= 0.25)
REFERENCE_PERTURBATION_PX = 0.5  # reference = truth shifted by a0 + a1 u + a2 u^2, |a_i| <=
SLIT_SOFTNESS = 0.8  # sigma (px) of the edges of a flat-topped slit image
MASK_TRIM = 1.0  # the kpf-geometry order mask is the slit image less this many pixels a side
KPF_SIZE = 4080


@dataclass
class Spectrograph:
    """Truth of one CCD's traces (n traces, ``size`` columns).

    ``centres`` (n, size) true centre rows; ``half`` (n,) half-height of the light (sigma of
    the Gaussian profile in ``compact``, slit half-height in ``kpf``), ``mask_half`` (n,)
    half-height of the order mask about the centre; ``x1``/``x2`` the columns the order mask
    covers; ``fiber`` orderlet names; ``order`` 0-based order index; ``echelle`` the echelle
    order number per trace; ``wave`` (n, size) vacuum Angstrom; ``lamp`` (n, size) the flat
    lamp's light of each trace, e-/s per column before PRNU (all rows, no scattered light);
    ``arcs`` OBJECT -> (n, size) the same for each arc lamp; ``catalogues`` OBJECT -> the
    line list handed to the pipeline for a ThAr lamp (vacuum Angstrom, see
    :func:`kpfmasters.sim.lamps.lamp_light`).
    """

    name: str
    geometry: str
    centres: np.ndarray
    half: np.ndarray
    mask_half: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    fiber: list[str]
    order: np.ndarray
    echelle: np.ndarray
    wave: np.ndarray = None
    lamp: np.ndarray = None
    arcs: dict[str, np.ndarray] = field(default_factory=dict)
    catalogues: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.centres.shape[1]

    @property
    def n_orders(self) -> int:
        return int(self.order.max()) + 1

    def true_traces(self, degree: int = 3) -> TraceSet:
        """The true traces as a :class:`TraceSet` (centres fitted exactly by ``degree``)."""
        x = np.arange(self.size, dtype=np.float64)
        coeffs = np.array(
            [np.polynomial.Polynomial.fit(x, c, degree).convert().coef for c in self.centres]
        )
        edge = self.mask_half + 0.5
        return TraceSet(coeffs, edge, edge, self.x1, self.x2, self.fiber, self.order)

    def by_order(self, per_trace: np.ndarray) -> dict[str, np.ndarray]:
        """Orderlet -> (orders, size) image of ``per_trace`` (n, size); NaN rows without."""
        out = {o: np.full((self.n_orders, self.size), np.nan) for o in ORDERLETS}
        for i, (f, o) in enumerate(zip(self.fiber, self.order, strict=True)):
            out[f][o] = per_trace[i]
        return out


# --------------------------------------------------------------------------- wavelengths


def wavelengths(
    echelle: np.ndarray, fiber: list[str], size: int, rng: np.random.Generator
) -> np.ndarray:
    """True vacuum wavelengths (Angstrom) of each trace, (n, size) float64 (module docstring).

    The geometry is that of KPF at full size: the pixel is ``VELOCITY_PER_PIXEL`` km/s
    whatever ``size``, so a small CCD sees a narrow piece of each order; the curvature
    ``|p2|, |p3|`` is at most ``CURVATURE_PX * size / 4080`` pixels (at least 0.25), so the
    dispersion stays within about 1 % of 0.87 km/s per pixel at every size.
    """
    x = np.arange(size, dtype=np.float64)
    xc = (size - 1) / 2
    u = (x - xc) / xc
    k = np.array([ORDERLETS.index(f) for f in fiber])
    bend = max(0.25, CURVATURE_PX * size / KPF_SIZE)
    p2 = rng.uniform(-bend, bend, len(fiber))[:, None]
    p3 = rng.uniform(-bend, bend, len(fiber))[:, None]
    shift = (x[None, :] - xc - ORDERLET_OFFSET_PX[k][:, None]) + p2 * u**2 + p3 * u**3
    return (M_LAMBDA / echelle[:, None]) * np.exp(-(VELOCITY_PER_PIXEL / C_KMS) * shift)


def reference_wave(spec: Spectrograph, rng: np.random.Generator) -> np.ndarray:
    """A reference solution: the truth moved by a smooth known amount, (n, size) Angstrom.

    ``lambda_ref(x) = lambda(x + a0 + a1 u + a2 u^2)`` (to first order) with each ``|a_i|``
    at most ``REFERENCE_PERTURBATION_PX`` pixels, drawn per trace.
    """
    n, size = spec.centres.shape
    xc = (size - 1) / 2
    u = (np.arange(size) - xc) / xc
    a = rng.uniform(-REFERENCE_PERTURBATION_PX, REFERENCE_PERTURBATION_PX, (n, 3))
    dx = a[:, :1] + a[:, 1:2] * u + a[:, 2:3] * u**2
    return spec.wave * np.exp(-(VELOCITY_PER_PIXEL / C_KMS) * dx)


# --------------------------------------------------------------------------- compact


def compact(
    name: str, centres: np.ndarray, sigma: float, mask_half: float, rng: np.random.Generator
) -> Spectrograph:
    """Spectrograph of the compact geometry from the simulator's centres (orders, 5, size)."""
    n_orders, _, size = centres.shape
    fiber = list(ORDERLETS) * n_orders
    order = np.repeat(np.arange(n_orders), 5)
    echelle = FIRST_ECHELLE_ORDER[name] - order
    n = len(fiber)
    spec = Spectrograph(
        name=name,
        geometry="compact",
        centres=centres.reshape(n, size),
        half=np.full(n, sigma),
        mask_half=np.full(n, mask_half),
        x1=np.zeros(n, dtype=np.int64),
        x2=np.full(n, size - 1, dtype=np.int64),
        fiber=fiber,
        order=order,
        echelle=echelle,
    )
    spec.wave = wavelengths(echelle, fiber, size, rng)
    return spec


# --------------------------------------------------------------------------- kpf


def kpf_trace_file(name: str) -> Path:
    """The packaged copy of KPF's measured traces of ``name`` (``GREEN_CCD``/``RED_CCD``)."""
    return Path(str(resources.files("kpfmasters") / "data" / f"kpf_order_trace_{name}.csv"))


def kpf(name: str, rng: np.random.Generator, size: int = KPF_SIZE) -> Spectrograph:
    """Spectrograph of KPF's measured traces.

    At 4080 x 4080 the whole CCD; at a smaller ``size`` its bottom-left ``size`` x ``size``
    corner: the orders whose every trace lies inside it (with a margin of 4 px), the traces'
    own shapes, slit heights and spacing, over the first ``size`` columns (a medium test
    night with KPF's cross-profiles and order mask at a fraction of the cost).
    """
    if not 64 <= size <= KPF_SIZE:
        raise ValueError(f"the kpf trace geometry needs 64 to {KPF_SIZE} pixels, not {size}")
    ts = read_traces(kpf_trace_file(name), order_base=1)
    if size < KPF_SIZE:
        ts = _corner(ts, size)
    centres = ts.centres(size)
    half = separate((ts.bottom + ts.top) / 2 - 0.5, centres)
    spec = Spectrograph(
        name=name,
        geometry="kpf",
        centres=centres,
        half=half,
        mask_half=half - MASK_TRIM,
        x1=ts.x1,
        x2=ts.x2,
        fiber=ts.fiber,
        order=ts.order,
        echelle=FIRST_ECHELLE_ORDER[name] - ts.order,
    )
    spec.wave = wavelengths(spec.echelle, spec.fiber, size, rng)
    return spec


def _corner(ts: TraceSet, size: int, margin: float = 4.0) -> TraceSet:
    """The traces of the whole orders that lie in the bottom-left ``size`` x ``size`` corner
    over at least half its width."""
    centres = ts.centres(size)
    inside = (centres.min(axis=1) - ts.bottom >= margin) & (
        centres.max(axis=1) + ts.top <= size - 1 - margin
    )
    # and that cover at least half the width (the pipeline leaves shorter traces out)
    long = np.minimum(ts.x2, size - 1) - ts.x1 + 1 >= size / 2
    whole = inside & long
    orders = [o for o in sorted(set(ts.order)) if all(whole[np.asarray(ts.order) == o])]
    if not orders:
        raise ValueError(f"no whole KPF order fits in {size} rows")
    keep = np.isin(ts.order, orders)
    return TraceSet(
        coeffs=ts.coeffs[keep],
        bottom=ts.bottom[keep],
        top=ts.top[keep],
        x1=np.minimum(ts.x1[keep], size - 1),
        x2=np.minimum(ts.x2[keep], size - 1),
        fiber=[f for f, k in zip(ts.fiber, keep, strict=True) if k],
        order=np.asarray(ts.order)[keep] - orders[0],  # counted from the corner's bottom
    )


def separate(half: np.ndarray, centres: np.ndarray, gap: float = 3 * SLIT_SOFTNESS):
    """Slit half-heights (n,) shrunk where neighbouring traces would overlap: the images of
    traces i and i+1 keep ``gap`` pixels between their edges at their closest column (both
    shrunk in proportion). KPF's RED file has apertures that overlap by up to 3 px."""
    half = np.array(half, dtype=np.float64)
    for i in range(len(half) - 1):
        d = float(np.min(np.abs(centres[i + 1] - centres[i])))
        if half[i] + half[i + 1] + gap > d:
            f = (d - gap) / (half[i] + half[i + 1])
            half[i] *= f
            half[i + 1] *= f
    return half


def _integrated_step(z: np.ndarray) -> np.ndarray:
    """Antiderivative of the unit normal CDF: z * Phi(z) + phi(z)."""
    return z * ndtr(z) + np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)


def slit_weights(centre: np.ndarray, half: float, soft: float = SLIT_SOFTNESS):
    """Rows and pixel fractions of a flat-topped slit image of unit flux per column.

    The light per unit height is ``(Phi((dy + half)/soft) - Phi((dy - half)/soft)) / (2 half)``
    (``dy`` = row - centre), integrated over each pixel's rows. Returns ``rows`` (k, size)
    int64 and ``weight`` (k, size) float64 (sums to 1 per column when on the CCD).
    """
    reach = half + 5 * soft
    first = np.floor(centre - reach + 0.5).astype(np.int64)
    k = int(np.ceil(2 * reach)) + 2
    rows = first[None, :] + np.arange(k)[:, None]
    a = (rows - 0.5 - centre[None, :]) / soft
    b = (rows + 0.5 - centre[None, :]) / soft
    h = half / soft
    upper = _integrated_step(b + h) - _integrated_step(a + h)
    lower = _integrated_step(b - h) - _integrated_step(a - h)
    return rows, soft * (upper - lower) / (2 * half)


def render_slits(spec: Spectrograph, amplitude: np.ndarray) -> np.ndarray:
    """Image (size, size) float64 of every trace with flux ``amplitude`` (n, size) per column."""
    size = spec.size
    image = np.zeros((size, size))
    cols = np.arange(size)
    for i in range(len(spec.fiber)):
        rows, w = slit_weights(spec.centres[i], float(spec.half[i]))
        on = (rows >= 0) & (rows < size)
        c = np.broadcast_to(cols, rows.shape)
        image[rows[on], c[on]] += (w * amplitude[i][None, :])[on]
    return image


def slit_mask(spec: Spectrograph) -> np.ndarray:
    """Order mask (size, size) int16 of the kpf geometry: orderlet value 1..5 where
    ``|row - centre| <= mask_half`` in the columns ``x1..x2``, 0 elsewhere."""
    size = spec.size
    mask = np.zeros((size, size), dtype=np.int16)
    cols = np.arange(size)
    for i, fiber in enumerate(spec.fiber):
        c = spec.centres[i]
        m = float(spec.mask_half[i])
        k = int(np.ceil(2 * m)) + 3
        rows = np.floor(c - m).astype(np.int64)[None, :] + np.arange(k)[:, None]
        inside = (np.abs(rows - c[None, :]) <= m) & (rows >= 0) & (rows < size)
        inside &= (cols >= spec.x1[i]) & (cols <= spec.x2[i])
        cc = np.broadcast_to(cols, rows.shape)
        mask[rows[inside], cc[inside]] = ORDERLETS.index(fiber) + 1
    return mask


def blaze_amplitude(spec: Spectrograph, rng: np.random.Generator, throughput) -> np.ndarray:
    """Relative lamp flux per trace and column (n, size): blaze x lamp colour x throughput."""
    size = spec.size
    u = (np.arange(size) + 0.5) / size
    n_orders = spec.n_orders
    centre_u = rng.uniform(0.42, 0.58, n_orders)[:, None]
    blaze = 0.3 + 0.7 * np.exp(-0.5 * ((u[None, :] - centre_u) / 0.3) ** 2)
    colour = 0.6 + 0.4 * np.sin(np.linspace(0.3, 2.8, n_orders))[:, None]
    k = np.array([ORDERLETS.index(f) for f in spec.fiber])
    return (colour * blaze)[spec.order] * np.asarray(throughput)[k][:, None]


def kpf_light(spec: Spectrograph, objects: list[str], seed: int, rng: np.random.Generator):
    """Flat-lamp and arc-lamp rates (e-/s before PRNU, (size, size) float32) of the kpf
    geometry, as the compact geometry makes them (blaze, colour, throughput; arc lines along
    x with sigma 1.1 px; peaks ``LAMP_PEAK``/``ARC_PEAK``; smooth scattered light). Fills
    ``spec.lamp`` and ``spec.arcs`` with each trace's light per column."""
    from kpfmasters.sim import truth as st

    size = spec.size
    amplitude = blaze_amplitude(spec, rng, st.ORDERLET_THROUGHPUT)
    image = render_slits(spec, amplitude)
    peak = st.LAMP_PEAK[spec.name]
    scale = peak / image.max()
    image *= scale
    spec.lamp = (amplitude * scale).astype(np.float32)
    image += st.SCATTERED_FRACTION * peak * st.smooth_field((size, size), rng)
    lamp = image.astype(np.float32)
    arcs = {}
    ccd = st.CCD_NAMES.index(spec.name)
    k = np.array([ORDERLETS.index(f) for f in spec.fiber])
    for obj in objects:
        arng = st.rng_for(seed, 2, ccd, st.stable_id(obj))
        lamp_lines = lamp_light(obj, spec, arng)
        if lamp_lines is not None:
            amp = lamp_lines * st.orderlet_weights(obj)[k][:, None]
        else:
            lines = st.arc_lines(obj, spec.n_orders, size, arng)
            offsets = np.arange(-6, 7)
            cols = np.floor(lines[:, 1]).astype(np.int64)[:, None] + offsets[None, :]
            dx = cols - lines[:, 1][:, None]
            w = lines[:, 2][:, None] * (ndtr((dx + 0.5) / 1.1) - ndtr((dx - 0.5) / 1.1))
            ok = (cols >= 0) & (cols < size)
            order = lines[:, 0].astype(np.int64)
            flat = (order[:, None] * size + cols)[ok]
            per_order = np.bincount(flat, weights=w[ok], minlength=spec.n_orders * size)
            per_order = per_order.reshape(spec.n_orders, size)
            amp = per_order[spec.order] * st.orderlet_weights(obj)[k][:, None]
        arc = render_slits(spec, amp)
        scale = st.ARC_PEAK / arc.max()
        arc *= scale
        spec.arcs[obj] = (amp * scale).astype(np.float32)
        arc += st.ARC_SCATTERED_FRACTION * st.ARC_PEAK * st.smooth_field((size, size), arng)
        arcs[obj] = arc.astype(np.float32)
    return lamp, arcs


# --------------------------------------------------------------------------- storage


def lamp_light(obj: str, spec: Spectrograph, rng: np.random.Generator):
    """Per-trace light (n, size) of a ThAr or comb lamp at the true wavelengths, relative
    (throughput per orderlet included), or None for a lamp of random lines; a ThAr lamp's
    catalogue is kept in ``spec.catalogues``."""
    from kpfmasters.sim import lamps
    from kpfmasters.sim import truth as st

    made = lamps.lamp_light(obj, spec.wave, spec.order, rng)
    if made is None:
        return None
    light, lines = made
    if lamps.lamp_kind(obj) == "thar":
        spec.catalogues[obj] = lines.catalogue
    k = np.array([ORDERLETS.index(f) for f in spec.fiber])
    return light * st.ORDERLET_THROUGHPUT[k][:, None]


def save_spectrograph(spec: Spectrograph, directory: Path) -> dict:
    """Write the arrays as ``<CCD>.<name>.npy`` and the true traces as
    ``order_trace_<CCD>.csv`` under ``directory``; return the JSON record."""
    from kpfmasters.core.naming import object_tag

    stem = spec.name
    arrays = {"trace_centres": spec.centres, "wave": spec.wave, "lamp_spectrum": spec.lamp}
    for obj, arc in spec.arcs.items():
        arrays[f"arc.{object_tag(obj)}.spectrum"] = arc
    files = {}
    for key, array in arrays.items():
        if array is None:
            continue
        np.save(directory / f"{stem}.{key}.npy", np.asarray(array))
        files[key] = f"{stem}.{key}.npy"
    csv = directory / f"order_trace_{stem}.csv"
    csv.write_text(csv_text(spec.true_traces()))
    return {
        "geometry": spec.geometry,
        "fiber": spec.fiber,
        "order": spec.order.tolist(),
        "echelle": spec.echelle.tolist(),
        "half": spec.half.tolist(),
        "mask_half": spec.mask_half.tolist(),
        "x1": spec.x1.tolist(),
        "x2": spec.x2.tolist(),
        "arc_objects": list(spec.arcs),
        "files": files,
        "trace_csv": csv.name,
    }


def load_spectrograph(name: str, record: dict, directory: Path, mmap: bool = True):
    """Inverse of :func:`save_spectrograph`."""
    from kpfmasters.core.naming import object_tag

    mode = "r" if mmap else None
    files = record["files"]

    def get(key):
        return np.load(directory / files[key], mmap_mode=mode) if key in files else None

    return Spectrograph(
        name=name,
        geometry=record["geometry"],
        centres=get("trace_centres"),
        half=np.array(record["half"]),
        mask_half=np.array(record["mask_half"]),
        x1=np.array(record["x1"], dtype=np.int64),
        x2=np.array(record["x2"], dtype=np.int64),
        fiber=list(record["fiber"]),
        order=np.array(record["order"], dtype=np.int64),
        echelle=np.array(record["echelle"], dtype=np.int64),
        wave=get("wave"),
        lamp=get("lamp_spectrum"),
        arcs={o: get(f"arc.{object_tag(o)}.spectrum") for o in record["arc_objects"]},
    )


def reference_hdulist(specs: dict[str, Spectrograph], seed: int):
    """A KPF-style reference wavelength file: PRIMARY and ``<CHIP>_SCI_WAVE1..3``,
    ``<CHIP>_SKY_WAVE``, ``<CHIP>_CAL_WAVE`` (orders, columns) float64 vacuum Angstrom per
    CHIP: the truth perturbed as :func:`reference_wave` says (NaN rows without a trace)."""
    from astropy.io import fits

    from kpfmasters.science.l1 import L1_ORDERLETS, ext_name
    from kpfmasters.sim.truth import rng_for

    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = ("kpfmasters simulate", "simulated data")
    primary.header["COMMENT"] = "Reference wavelength solution: truth plus a smooth perturbation"
    primary.header["WLSPERT"] = (REFERENCE_PERTURBATION_PX, "max |a_i| (px) of the perturbation")
    hdus = [primary]
    for ccd, spec in specs.items():
        chip = ccd.split("_")[0]
        ref = spec.by_order(reference_wave(spec, rng_for(seed, 6, list(specs).index(ccd))))
        for orderlet in L1_ORDERLETS:
            hdu = fits.ImageHDU(ref[orderlet], name=ext_name(chip, orderlet, "WAVE"))
            hdu.header["BUNIT"] = ("Angstrom", "vacuum wavelength")
            hdus.append(hdu)
    return fits.HDUList(hdus)
