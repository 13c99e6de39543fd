"""Static truth of a simulated KPF night: the fixed structures every frame is made from.

One :class:`CCDTruth` per detector image (``GREEN_CCD``, ``RED_CCD``, ``CA_HK``), computed
once per night from the seed and saved beside the L0 files so tests can compare products
against it. Conventions, for an ``S x S`` CCD (``S`` = data size in pixels):

- arrays are indexed ``[row, column]``; row 0 is the bottom of the CCD (AMP1 side);
- ``bias`` is the fixed bias structure in electrons, relative to the overscan level;
- ``dark`` is dark current in electrons per second (hot pixels included);
- ``prnu`` is the pixel response (dimensionless, mean about 1);
- ``lamp`` and ``arc[OBJECT]`` are light rates in electrons per second *before* PRNU;
  a frame collects ``EXPTIME * (dark + prnu * light)`` electrons on top of ``bias``;
- ``order_mask`` marks orderlets: 0 off-trace, 1..5 = SKY, SCI1, SCI2, SCI3, CAL.

``CA_HK`` follows the same layout but its arrays are in DN and DN/s (it has no overscan and
is stored as integer DN), with one notional "amplifier" of gain 1 and pedestal 0.

Echelle orders run along the columns (dispersion along x) with gentle curvature; each order
has five orderlets with a Gaussian cross-profile integrated over pixels.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from kpfmasters.core.naming import object_tag

CCD_NAMES = ("GREEN_CCD", "RED_CCD")
CAHK = "CA_HK"
ORDERLETS = ("SKY", "SCI1", "SCI2", "SCI3", "CAL")

# Trace geometry, in pixels (independent of the CCD size).
ORDERLET_PITCH = 6.0  # distance between neighbouring orderlet centres
TRACE_SIGMA = 1.0  # Gaussian cross-profile sigma
MASK_HALF_WIDTH = 2.0  # |row - centre| <= this is inside an orderlet in the order mask
GROUP_HALF = 2 * ORDERLET_PITCH + 3 * TRACE_SIGMA  # half height of an order's five orderlets
MIN_ORDER_PITCH = 36.0
MAX_ORDERS = 35
PROFILE_HALF = 6  # rows rendered on each side of a trace centre

# Light levels (electrons per second before PRNU).
LAMP_PEAK = {"GREEN_CCD": 800.0, "RED_CCD": 700.0}
SCATTERED_FRACTION = 0.01  # smooth scattered light, relative to the trace peak
ARC_PEAK = 1500.0
ARC_SCATTERED_FRACTION = 0.002
ORDERLET_THROUGHPUT = np.array([0.6, 0.95, 1.0, 0.9, 0.75])
HOT_PIXEL_FRACTION = 3e-4
SCIENCE_FRACTION = 0.03  # a science frame's light: this fraction of the flat lamp

# CA_HK (DN, DN/s).
CAHK_BIAS_LEVEL = 250.0
CAHK_READ_NOISE = 2.0
CAHK_LAMP_PEAK = 40.0
CAHK_ARC_PEAK = 30.0


@dataclass
class CCDTruth:
    """Truth of one detector image; array shapes are the CCD data shape (rows, cols).

    ``gain`` (electrons per DN), ``pedestal`` (DN, overscan level) and ``read_noise``
    (electrons; DN for CA_HK) have one value per amplifier, AMP1 first.
    """

    name: str
    unit: str  # "electrons" (GREEN/RED) or "DN" (CA_HK)
    bias: np.ndarray
    dark: np.ndarray
    prnu: np.ndarray
    lamp: np.ndarray
    arc: dict[str, np.ndarray] = field(default_factory=dict)
    order_mask: np.ndarray | None = None
    gain: tuple[float, ...] = ()
    pedestal: tuple[float, ...] = ()
    read_noise: tuple[float, ...] = ()
    spectrograph: object = None  # kpfmasters.sim.spectrograph.Spectrograph (GREEN, RED)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.bias.shape)

    def light(self, source: str, obj: str = "") -> np.ndarray | None:
        """Light rate (before PRNU) of a frame whose light ``source`` is none/lamp/arc/science."""
        if source == "none":
            return None
        if source == "lamp":
            return self.lamp
        if source == "arc":
            return self.arc[obj]
        if source == "science":
            return self.lamp * np.float32(SCIENCE_FRACTION)
        raise ValueError(f"unknown light source {source!r}")


def stable_id(text: str) -> int:
    """A process-independent integer for ``text`` (Python's ``hash`` is salted)."""
    return zlib.crc32(text.encode("utf-8"))


def rng_for(seed: int, *tags: int) -> np.random.Generator:
    """An independent random stream for ``seed`` and integer ``tags``."""
    return np.random.default_rng([int(seed), *[int(t) for t in tags]])


# --------------------------------------------------------------------------- traces


def trace_centres(size: int, rng: np.random.Generator) -> np.ndarray:
    """Row of each orderlet's centre at every column, shape (n_orders, 5, size), float64.

    Orders are spread over the CCD with a pitch that changes slowly across it, each a gentle
    parabola plus tilt; orderlets sit ``ORDERLET_PITCH`` apart within an order.
    """
    edge = max(4.0, 0.03 * size)
    sag = rng.choice([-1.0, 1.0]) * rng.uniform(0.008, 0.012) * size
    tilt = rng.uniform(-0.006, 0.006) * size
    lo = min(0.0, 1.2 * sag) - abs(tilt) / 2
    hi = max(0.0, 1.2 * sag) + abs(tilt) / 2
    first = edge + GROUP_HALF - lo
    last = size - 1 - edge - GROUP_HALF - hi
    span = last - first
    if span < 0:
        raise ValueError(f"CCD size {size} is too small for the simulated traces (minimum 48)")
    n_orders = int(np.clip(np.floor(span / MIN_ORDER_PITCH) + 1, 1, MAX_ORDERS))
    if n_orders == 1:
        base = np.array([(first + last) / 2])
    else:
        f = np.linspace(0.0, 1.0, n_orders)
        base = first + span * (f + 0.1 * f * (1 - f))  # pitch changes by +-10 % across
    u = (np.arange(size) + 0.5) / size
    k = np.linspace(0.8, 1.2, n_orders)[:, None]
    offset = k * sag * (2 * u - 1) ** 2 + tilt * (u - 0.5)  # (n_orders, size)
    centre = base[:, None] + offset
    orderlet = (np.arange(5) - 2) * ORDERLET_PITCH
    return centre[:, None, :] + orderlet[None, :, None]


@dataclass
class TraceProfile:
    """Pixel-integrated cross-profiles of every orderlet (flattened to (n_traces, ...)).

    ``index``: flat pixel index into the (size, size) image, shape (n_traces, K, size);
    ``weight``: fraction of a unit-rate trace falling in that pixel (float32, same shape,
    0 where the row is off the CCD); ``inside``: pixel within ``MASK_HALF_WIDTH`` rows.
    """

    size: int
    index: np.ndarray
    weight: np.ndarray
    inside: np.ndarray


def trace_profile(centres: np.ndarray, size: int, sigma: float = TRACE_SIGMA) -> TraceProfile:
    """Profiles of ``centres`` (n_traces, size) rows: Gaussian sigma ``sigma`` pixels."""
    offsets = np.arange(-PROFILE_HALF, PROFILE_HALF + 1)
    rows = np.floor(centres).astype(np.int64)[:, None, :] + offsets[None, :, None]
    dy = rows - centres[:, None, :]
    weight = (ndtr((dy + 0.5) / sigma) - ndtr((dy - 0.5) / sigma)).astype(np.float32)
    valid = (rows >= 0) & (rows < size)
    weight[~valid] = 0.0
    rows = np.clip(rows, 0, size - 1)
    cols = np.arange(size)[None, None, :]
    index = rows * size + cols
    inside = valid & (np.abs(dy) <= MASK_HALF_WIDTH)
    return TraceProfile(size, index, weight, inside)


def render(profile: TraceProfile, amplitude: np.ndarray) -> np.ndarray:
    """Image (size, size) float64 of traces with peak-free amplitude (n_traces, size) e-/s."""
    w = profile.weight * amplitude[:, None, :].astype(np.float32)
    n = profile.size * profile.size
    image = np.bincount(profile.index.ravel(), weights=w.ravel(), minlength=n)
    return image.reshape(profile.size, profile.size)


def order_mask(profile: TraceProfile) -> np.ndarray:
    """Orderlet number (1..5) of each pixel, 0 off-trace; (size, size) int16."""
    mask = np.zeros(profile.size * profile.size, dtype=np.int16)
    n_traces = profile.index.shape[0]
    value = (np.arange(n_traces) % 5 + 1).astype(np.int16)
    values = np.broadcast_to(value[:, None, None], profile.index.shape)
    mask[profile.index[profile.inside]] = values[profile.inside]
    return mask.reshape(profile.size, profile.size)


def smooth_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth positive field of order 1 (float32, ``shape``): scattered-light envelope."""
    rows, cols = shape
    y = (np.arange(rows) + 0.5) / rows
    x = (np.arange(cols) + 0.5) / cols
    x0 = rng.uniform(0.4, 0.6)
    fx = 0.6 + 0.4 * np.exp(-0.5 * ((x - x0) / 0.35) ** 2)
    fy = 0.5 + 0.5 * np.sin(np.pi * y)
    return np.outer(fy, fx).astype(np.float32)


def lamp_rate(name: str, centres: np.ndarray, profile: TraceProfile, rng, trace_flux=None):
    """Flat-lamp rate (e-/s, before PRNU) of one CCD, (size, size) float32.

    Each order has a blaze envelope along x and a lamp colour; each orderlet its throughput.
    The brightest pixel is ``LAMP_PEAK``; smooth scattered light of ``SCATTERED_FRACTION``
    of the peak lies everywhere. A list ``trace_flux`` receives each trace's light per column
    (n_traces, size), e-/s before PRNU, scattered light not included.
    """
    n_orders, _, size = centres.shape
    u = (np.arange(size) + 0.5) / size
    centre_u = rng.uniform(0.42, 0.58, n_orders)[:, None]
    blaze = 0.3 + 0.7 * np.exp(-0.5 * ((u[None, :] - centre_u) / 0.3) ** 2)
    colour = 0.6 + 0.4 * np.sin(np.linspace(0.3, 2.8, n_orders))[:, None]
    amplitude = (colour * blaze)[:, None, :] * ORDERLET_THROUGHPUT[None, :, None]
    image = render(profile, amplitude.reshape(-1, size))
    peak = LAMP_PEAK[name]
    scale = peak / image.max()
    image *= scale
    if trace_flux is not None:
        trace_flux.append(amplitude.reshape(-1, size) * np.float32(scale))
    image += SCATTERED_FRACTION * peak * smooth_field((size, size), rng)
    return image.astype(np.float32)


def orderlet_weights(obj: str) -> np.ndarray:
    """Which orderlets an arc lamp lights, from OBJECT's words: ``sky``, ``sci``, ``cal``.

    ``autocal-une-sky`` lights SKY only; ``...-all...`` or no such word lights all five.
    """
    words = set(obj.lower().replace("_", "-").split("-"))
    weights = np.zeros(5)
    if "sky" in words:
        weights[0] = 1.0
    if "sci" in words:
        weights[1:4] = 1.0
    if "cal" in words:
        weights[4] = 1.0
    if not weights.any():
        weights[:] = 1.0
    return weights


def arc_lines(obj: str, n_orders: int, size: int, rng) -> np.ndarray:
    """Line list of one lamp: rows (order, column centre, relative strength), float64."""
    dense = 1.5 if "thar" in obj.lower() else 1.0
    per_order = max(3, int(round(dense * size / 60)))
    order = np.repeat(np.arange(n_orders), per_order)
    x = rng.uniform(4.0, size - 5.0, order.size)
    strength = 10.0 ** rng.uniform(0.0, 1.7, order.size)
    return np.column_stack([order, x, strength])


def arc_rate(
    obj: str, lines: np.ndarray, profile: TraceProfile, shape, rng, trace_flux=None, light=None
):
    """Arc-lamp rate (e-/s, before PRNU), (size, size) float32: compact spots on the traces.

    Each line is a Gaussian along x (sigma 1.1 px) times the orderlet cross-profile; the
    brightest pixel is ``ARC_PEAK``, plus faint smooth scattered light. A list ``trace_flux``
    receives each trace's light per column (n_traces, size), e-/s before PRNU. ``light``
    (n_traces, size), when given, is the lamp's relative light per trace instead of
    ``lines`` (ThAr and comb lamps at their true wavelengths, :mod:`kpfmasters.sim.lamps`).
    """
    n_orders, size = shape
    if light is not None:
        amplitude = np.asarray(light) * np.tile(orderlet_weights(obj), n_orders)[:, None]
        image = render(profile, amplitude)
        peak = float(image.max())
        # a lamp can leave a CCD dark (the comb's envelope is zero on the bluest orders)
        scale = ARC_PEAK / peak if peak > 0 else 0.0
        image *= scale
        if trace_flux is not None:
            trace_flux.append(amplitude * scale)
        image += ARC_SCATTERED_FRACTION * ARC_PEAK * smooth_field((size, size), rng)
        return image.astype(np.float32)
    offsets = np.arange(-6, 7)
    order = lines[:, 0].astype(np.int64)
    cols = np.floor(lines[:, 1]).astype(np.int64)[:, None] + offsets[None, :]
    dx = cols - lines[:, 1][:, None]
    w = lines[:, 2][:, None] * (ndtr((dx + 0.5) / 1.1) - ndtr((dx - 0.5) / 1.1))
    ok = (cols >= 0) & (cols < size)
    flat = (order[:, None] * size + cols)[ok]
    spectrum = np.bincount(flat, weights=w[ok], minlength=n_orders * size)
    spectrum = spectrum.reshape(n_orders, size)
    amplitude = spectrum[:, None, :] * orderlet_weights(obj)[None, :, None]
    image = render(profile, amplitude.reshape(-1, size))
    scale = ARC_PEAK / image.max()
    image *= scale
    if trace_flux is not None:
        trace_flux.append(amplitude.reshape(-1, size) * scale)
    image += ARC_SCATTERED_FRACTION * ARC_PEAK * smooth_field((size, size), rng)
    return image.astype(np.float32)


# --------------------------------------------------------------------------- detector


def amp_regions(size: int, amps: int) -> list[tuple[slice, slice]]:
    """CCD (row, column) slices of each amplifier's data, AMP1 first (tiling: reference §2)."""
    half = size // 2
    if amps == 2:
        return [(slice(0, size), slice(0, half)), (slice(0, size), slice(half, size))]
    if amps == 4:
        lo, hi = slice(0, half), slice(half, size)
        return [(lo, lo), (lo, hi), (hi, lo), (hi, hi)]
    raise ValueError(f"amps must be 2 or 4, not {amps}")


def amp_corners(size: int, amps: int) -> list[tuple[float, float]]:
    """(row, column) of each amplifier's read-out corner on the CCD."""
    far = size - 1.0
    corners = [(0.0, 0.0), (0.0, far), (far, 0.0), (far, far)]
    return corners[:amps]


def bias_structure(size: int, amps: int, rng) -> np.ndarray:
    """Fixed bias pattern in electrons, (size, size) float32: a few e- of gradients, column
    and row patterns, per-amplifier offsets and pixel-scale pattern."""
    u = (np.arange(size) + 0.5) / size
    col = rng.uniform(1.5, 3.0) * u + rng.normal(0.0, 0.7, size)  # along x
    row = rng.uniform(-1.5, 1.5) * u + rng.normal(0.0, 0.3, size)  # along y
    image = np.add.outer(row.astype(np.float32), col.astype(np.float32))
    for rs, cs in amp_regions(size, amps):
        image[rs, cs] += np.float32(rng.uniform(-1.5, 1.5))
    image += rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.5)
    return image


def dark_current(size: int, amps: int, rng) -> np.ndarray:
    """Dark current in e-/s, (size, size) float32: a low level, amplifier glow at the
    read-out corners, and hot pixels (``HOT_PIXEL_FRACTION``, 0.5..5 e-/s)."""
    level = rng.uniform(0.002, 0.006)
    y = np.arange(size, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    image = np.full((size, size), level, dtype=np.float32)
    scale = np.float32(0.05 * size)
    for r, c in amp_corners(size, amps):
        dist = np.sqrt((y - r) ** 2 + (x - c) ** 2)
        image += np.float32(0.01) * np.exp(-dist / scale)
    n_hot = rng.poisson(HOT_PIXEL_FRACTION * size * size)
    idx = rng.choice(size * size, n_hot, replace=False)
    image.ravel()[idx] = 10.0 ** rng.uniform(np.log10(0.5), np.log10(5.0), n_hot)
    return image


def pixel_response(shape: tuple[int, int], rng) -> np.ndarray:
    """PRNU, float32 ``shape``: 1 + 1 % rms Gaussian pixel-to-pixel variation."""
    prnu = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
    prnu += np.float32(1.0)
    return prnu


def amplifier_constants(amps: int, adc_scale: int, rng) -> tuple[tuple, tuple, tuple]:
    """Per-amplifier gain (e-/DN, 4.5..5.5), pedestal (DN, 1500..2500, an exact multiple of
    ``1/adc_scale`` so the raw overscan is an integer) and read noise (e-, 3..5)."""
    gain = tuple(round(float(g), 3) for g in rng.uniform(4.5, 5.5, amps))
    raw = rng.integers(1500 * adc_scale, 2500 * adc_scale, amps)
    pedestal = tuple(float(r) / adc_scale for r in raw)
    read_noise = tuple(round(float(r), 2) for r in rng.uniform(3.0, 5.0, amps))
    return gain, pedestal, read_noise


def make_ccd_truth(
    name: str,
    size: int,
    amps: int,
    objects: list[str],
    seed: int,
    adc_scale: int = 65536,
    geometry: str = "compact",
) -> CCDTruth:
    """Every static structure of one CCD (``GREEN_CCD`` or ``RED_CCD``).

    ``geometry`` ``compact`` (the simulator's own traces, any size) or ``kpf`` (KPF's
    measured traces, 4080 x 4080): see :mod:`kpfmasters.sim.spectrograph`.
    """
    from kpfmasters.sim import spectrograph as sg

    ccd = CCD_NAMES.index(name)
    rng = rng_for(seed, 1, ccd)
    gain, pedestal, read_noise = amplifier_constants(amps, adc_scale, rng)
    bias = bias_structure(size, amps, rng)
    dark = dark_current(size, amps, rng)
    prnu = pixel_response((size, size), rng)
    wave_rng = rng_for(seed, 5, ccd)
    if geometry == "kpf":
        spec = sg.kpf(name, wave_rng, size)
        lamp, arcs = sg.kpf_light(spec, objects, seed, rng)
        mask = sg.slit_mask(spec)
    elif geometry == "compact":
        centres = trace_centres(size, rng)
        n_orders = centres.shape[0]
        spec = sg.compact(name, centres, TRACE_SIGMA, MASK_HALF_WIDTH, wave_rng)
        profile = trace_profile(centres.reshape(-1, size), size)
        spectra: list[np.ndarray] = []
        lamp = lamp_rate(name, centres, profile, rng, spectra)
        spec.lamp = spectra[0]
        arcs = {}
        for obj in objects:
            arng = rng_for(seed, 2, ccd, stable_id(obj))
            lines = arc_lines(obj, n_orders, size, arng)
            light = sg.lamp_light(obj, spec, arng)
            spectra = []
            arcs[obj] = arc_rate(obj, lines, profile, (n_orders, size), arng, spectra, light)
            spec.arcs[obj] = spectra[0].astype(np.float32)
        mask = order_mask(profile)
    else:
        raise ValueError(f"unknown trace geometry {geometry!r}; use 'compact' or 'kpf'")
    return CCDTruth(
        name, "electrons", bias, dark, prnu, lamp, arcs, mask, gain, pedestal, read_noise, spec
    )


def make_cahk_truth(shape: tuple[int, int], objects: list[str], seed: int) -> CCDTruth:
    """CA_HK truth in DN: bias level with gradient and pattern, dark, PRNU, a few lamp
    bands (``CAHK_LAMP_PEAK`` DN/s) and arc spots on them."""
    rows, cols = shape
    rng = rng_for(seed, 1, 9)
    y = ((np.arange(rows) + 0.5) / rows)[:, None]
    x = ((np.arange(cols) + 0.5) / cols)[None, :]
    bias = CAHK_BIAS_LEVEL + rng.uniform(1.0, 3.0) * x + rng.uniform(-1.0, 1.0) * y
    bias = bias + rng.normal(0.0, 0.3, cols)[None, :]
    bias = (bias + rng.normal(0.0, 0.3, shape)).astype(np.float32)
    dark = np.full(shape, rng.uniform(0.003, 0.008), dtype=np.float32)
    n_hot = max(1, rng.poisson(HOT_PIXEL_FRACTION * rows * cols))
    idx = rng.choice(rows * cols, n_hot, replace=False)
    dark.ravel()[idx] = rng.uniform(0.5, 3.0, n_hot)
    prnu = pixel_response(shape, rng)
    n_bands = max(2, rows // 40)
    centres = np.linspace(0.15, 0.85, n_bands)[:, None] * rows + 0.01 * rows * (x - 0.5)
    band = np.exp(-0.5 * ((np.arange(rows)[None, :, None] - centres[:, None, :]) / 2.0) ** 2)
    lamp = band.sum(axis=0) * (0.7 + 0.3 * np.sin(np.pi * x))
    lamp = CAHK_LAMP_PEAK * lamp / lamp.max() + 0.01 * CAHK_LAMP_PEAK
    arcs = {}
    for obj in objects:
        arng = rng_for(seed, 2, 9, stable_id(obj))
        xs = arng.uniform(3, cols - 4, max(3, cols // 40))
        spots = np.exp(-0.5 * ((np.arange(cols)[None, :] - xs[:, None]) / 1.2) ** 2)
        spectrum = (arng.uniform(0.2, 1.0, xs.size)[:, None] * spots).sum(axis=0)
        arc = band.sum(axis=0) * spectrum[None, :]
        arcs[obj] = (CAHK_ARC_PEAK * arc / arc.max()).astype(np.float32)
    return CCDTruth(
        CAHK,
        "DN",
        bias,
        dark,
        prnu,
        lamp.astype(np.float32),
        arcs,
        None,
        (1.0,),
        (0.0,),
        (CAHK_READ_NOISE,),
    )


# --------------------------------------------------------------------------- storage


def _array_names(truth: CCDTruth) -> dict[str, str]:
    """Attribute/arc key -> file name stem of every array of ``truth``."""
    names = {key: f"{truth.name}.{key}" for key in ("bias", "dark", "prnu", "lamp")}
    if truth.order_mask is not None:
        names["order_mask"] = f"{truth.name}.order_mask"
    for obj in truth.arc:
        names[f"arc:{obj}"] = f"{truth.name}.arc.{object_tag(obj)}"
    return names


def save_ccd_truth(truth: CCDTruth, directory: Path) -> dict:
    """Write every array of ``truth`` as ``<dir>/<CCD>.<name>.npy``; return its JSON record."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, stem in _array_names(truth).items():
        if key.startswith("arc:"):
            array = truth.arc[key[4:]]
        else:
            array = getattr(truth, key)
        np.save(directory / f"{stem}.npy", array)
        files[key] = f"{stem}.npy"
    record = {
        "name": truth.name,
        "unit": truth.unit,
        "shape": list(truth.shape),
        "gain": list(truth.gain),
        "pedestal": list(truth.pedestal),
        "read_noise": list(truth.read_noise),
        "arc_objects": list(truth.arc),
        "files": files,
    }
    if truth.spectrograph is not None:
        from kpfmasters.sim.spectrograph import save_spectrograph

        record["spectrograph"] = save_spectrograph(truth.spectrograph, directory)
    return record


def load_ccd_truth(record: dict, directory: Path, mmap: bool = True) -> CCDTruth:
    """Inverse of :func:`save_ccd_truth`; arrays memory-mapped read-only when ``mmap``."""
    mode = "r" if mmap else None
    files = record["files"]

    def get(key):
        return np.load(directory / files[key], mmap_mode=mode)

    arcs = {obj: get(f"arc:{obj}") for obj in record["arc_objects"]}
    spectrograph = None
    if "spectrograph" in record:
        from kpfmasters.sim.spectrograph import load_spectrograph

        spectrograph = load_spectrograph(record["name"], record["spectrograph"], directory, mmap)
    return CCDTruth(
        name=record["name"],
        unit=record["unit"],
        bias=get("bias"),
        dark=get("dark"),
        prnu=get("prnu"),
        lamp=get("lamp"),
        arc=arcs,
        order_mask=get("order_mask") if "order_mask" in files else None,
        gain=tuple(record["gain"]),
        pedestal=tuple(record["pedestal"]),
        read_noise=tuple(record["read_noise"]),
        spectrograph=spectrograph,
    )


def dump_json(data, path: Path) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
