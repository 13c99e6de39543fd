"""A simulated KPF night with known truth: L0 files, an order mask, and the truth behind them.

:func:`simulate_night` writes, under ``out``:

- ``L0/<date>/KP.<date>.<SSSSS.ss>.fits``: L0 files as KPF writes them: amplifier
  extensions in raw DN * ``adc_scale`` as unsigned 32-bit integers (BITPIX 32, BZERO
  2147483648; the ADC saturates at 65535 DN), RICE-compressed by default (plain on request);
  in 2-amplifier mode the GREEN amplifiers stored upside down relative to the 2D image (they
  read from the other edge; the 2D step flips GREEN back); ``CA_HK`` in DN (unsigned 16-bit);
  KPF's OBJECT values and keywords (``ELAPSED``, the five shutter keywords, the comb's
  ``LFCCEOFR``/``LFCFRREF``); a small ``TELEMETRY`` table that readers must ignore;
- ``order_mask.fits``: ``GREEN_CCD``/``RED_CCD`` int16 images, 0 off-trace, 1..5 orderlets;
- ``wls_reference.fits``: a reference wavelength solution (``<CHIP>_SCI_WAVE1``.. as in a
  KPF L1: the truth plus a smooth known perturbation), for ``wls.reference``;
- ``truth/<date>/``: ``truth.json`` (parameters, per-amplifier constants, the spectrograph's
  geometry), ``frames.json`` (one record a file), one ``<CCD>.<array>.npy`` per truth array
  (see :mod:`kpfmasters.sim.truth` for units) including the spectrograph's true trace
  centres, wavelengths and 1D spectra, and ``order_trace_<CCD>.csv``, the true traces (see
  :mod:`kpfmasters.sim.spectrograph`).

A frame collects, per CCD pixel, ``bias + EXPTIME * (dark + prnu * light)`` electrons (plus
shot noise and cosmic rays unless ``noise=False``); each amplifier's share is divided by its
gain, put at its place in the stored amplifier block, and the pedestal (and read noise)
added to the whole block in DN. :func:`expected_2d` gives the noise-free 2D image of a
frame (docs/reference.md §2) from the same quantised raw values.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters.io.fits import atomic_output, write_fits
from kpfmasters.sim.spectrograph import KPF_SIZE, reference_hdulist
from kpfmasters.sim.truth import (
    CAHK,
    CCD_NAMES,
    CCDTruth,
    amp_regions,
    dump_json,
    load_ccd_truth,
    make_cahk_truth,
    make_ccd_truth,
    rng_for,
    save_ccd_truth,
)

TRUTH_VERSION = 2
# KPF's morning calibration lamps (OBJECT values as KPF writes them).
DEFAULT_ARC_OBJECTS = (
    "autocal-thar-all-morn",
    "autocal-une-all-morn",
    "autocal-lfc-all-morn",
    "autocal-etalon-all-morn",
)
DEFAULT_COUNTS = {
    "bias": 12,
    "dark": 5,
    "flat": 8,
    "arclamp": {obj: 3 for obj in DEFAULT_ARC_OBJECTS},
}
SIZES = {"small": 128, "medium": 512, "full": 4080}
COSMIC_RATE = 2e-7  # hits per pixel per second of exposure
SHOT_GAUSS_MIN = 30.0  # shot noise is Gaussian for means at or above this (electrons)
READOUT_S = 45.0  # seconds between the end of one exposure and the start of the next
SATURATION_DN = 65535  # the 16-bit ADC's largest value
RAW_DTYPE = np.uint32  # KPF's raw amplifier values: BITPIX 32 with BZERO 2147483648
CAHK_DTYPE = np.uint16  # CA_HK in DN: BITPIX 16 with BZERO 32768
BIAS_ELAPSED = (0.019, 0.024)  # seconds, as real KPF biases have
SHUTTERS = ("SCISEL", "SKYSEL", "FFSHTR", "SCRAMSHT", "SIMCALSH")
LFC_CEO_HZ = 5.22e9  # comb offset frequency f0
LFC_REP_HZ = 2.0e10  # comb repetition rate f_rep
ORIGIN = "kpfmasters simulate"  # PRIMARY ORIGIN of every file the simulator writes
BAND_ROWS = 256  # rows a band of the per-amplifier work; results depend on it


@dataclass
class Geometry:
    """L0 amplifier layout (docs/reference.md §1); sizes in pixels."""

    size: int = 128
    amps: int = 2
    prescan: int = 4
    serial_overscan: int = 50
    parallel_overscan: int = 30
    adc_scale: int = 65536
    flip: tuple[str, ...] = ("GREEN_CCD",)  # CCDs whose 2D image is the tiling flipped

    def __post_init__(self):
        self.flip = tuple(self.flip)

    @property
    def data_shape(self) -> tuple[int, int]:
        """(rows, cols) of one amplifier's data."""
        return (self.size if self.amps == 2 else self.size // 2, self.size // 2)

    @property
    def amp_shape(self) -> tuple[int, int]:
        """(rows, cols) of one stored amplifier image."""
        rows, cols = self.data_shape
        return rows + self.parallel_overscan, self.prescan + cols + self.serial_overscan

    def stored_data(self, amp: int) -> tuple[slice, slice]:
        """Where amplifier ``amp``'s data (0-based: AMP1 = 0) lies in its stored image.

        AMP2 and AMP4 are left-right mirrors (prescan on the right), AMP3 and AMP4 up-down
        mirrors (parallel overscan rows first). The data itself is stored as it lies on the
        CCD, so the block equals the CCD region of :func:`amp_regions` unflipped.
        """
        rows, cols = self.data_shape
        c0 = self.serial_overscan if amp in (1, 3) else self.prescan
        r0 = self.parallel_overscan if amp in (2, 3) else 0
        return slice(r0, r0 + rows), slice(c0, c0 + cols)


@dataclass
class SimFrame:
    """One simulated file. ``path`` is absolute; ``expected_master`` names the default
    selection (docs/reference.md §3) that picks it, None for frames none should pick."""

    name: str
    path: Path
    imtype: str
    object: str
    exptime: float
    elapsed: float
    mjd_obs: float
    date_obs: str
    seconds: float
    expected_master: str | None
    kind: str  # bias dark flat arclamp short_dark long_flat science redelivered manual
    light: str  # none lamp arc science
    index: int  # random stream of the frame (a re-delivered copy shares its source's)
    cosmics: dict = field(default_factory=dict)  # cosmic-ray hits per extension
    shutters: dict = field(default_factory=dict)  # shutter keyword -> state, when unusual

    def record(self, root: Path) -> dict:
        data = asdict(self)
        data["path"] = os.path.relpath(self.path, root)
        return data


@dataclass
class SimulatedNight:
    """What :func:`simulate_night` wrote, and the truth behind it.

    ``ccds`` maps ``GREEN_CCD``, ``RED_CCD`` and ``CA_HK`` to their :class:`CCDTruth`.
    """

    out: Path
    date: str
    l0_dir: Path
    order_mask_path: Path
    truth_dir: Path
    frames: list[SimFrame]
    ccds: dict[str, CCDTruth]
    geometry: Geometry
    seed: int = 0
    noise: bool = True
    compress: bool = True

    def frame(self, name: str) -> SimFrame:
        for frame in self.frames:
            if frame.name == name:
                return frame
        raise KeyError(f"no simulated frame named {name!r}")

    def expected(self, master: str, obj: str | None = None) -> list[SimFrame]:
        """Frames the default selection of ``master`` should pick, by MJD-OBS then name."""
        picked = [
            f
            for f in self.frames
            if f.expected_master == master and (obj is None or f.object == obj)
        ]
        return sorted(picked, key=lambda f: (f.mjd_obs, f.name))

    @property
    def thar_linelist_path(self) -> Path:
        """The ThAr line list of the night's ThAr lamps (``wls.thar_linelist``)."""
        return self.out / "thar_linelist.txt"

    @property
    def wls_reference_path(self) -> Path:
        """The reference wavelength solution the simulator writes (``wls.reference``)."""
        return self.out / "wls_reference.fits"

    @property
    def arc_objects(self) -> list[str]:
        return list(self.ccds[CCD_NAMES[0]].arc)


# --------------------------------------------------------------------------- night plan


def normalise_counts(counts: dict | None) -> dict:
    """Fill ``counts`` with defaults; ``arclamp`` may be an int (each default lamp) or a
    dict OBJECT -> count. Raises ValueError on unknown keys or negative counts."""
    result = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_COUNTS.items()}
    for key, value in (counts or {}).items():
        if key not in DEFAULT_COUNTS:
            raise ValueError(f"unknown frame type {key!r} in counts; use {list(DEFAULT_COUNTS)}")
        if key == "arclamp" and not isinstance(value, dict):
            value = {obj: value for obj in DEFAULT_ARC_OBJECTS}
        result[key] = value
    numbers = [result["bias"], result["dark"], result["flat"], *result["arclamp"].values()]
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"frame counts must be non-negative integers, got {n!r}")
    return result


def mjd_of_date(date: str) -> int:
    """MJD at 0h UT of ``YYYYMMDD`` (ValueError for an invalid date)."""
    if not (isinstance(date, str) and len(date) == 8 and date.isdigit()):
        raise ValueError(f"date must be YYYYMMDD, not {date!r}")
    day = dt.datetime.strptime(date, "%Y%m%d").date()
    return (day - dt.date(1858, 11, 17)).days


def iso_time(date: str, centis: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ss`` for ``centis`` hundredths of a second after UT midnight."""
    sec, cs = divmod(centis, 100)
    hh, rem = divmod(sec, 3600)
    mm, ss = divmod(rem, 60)
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T{hh:02d}:{mm:02d}:{ss:02d}.{cs:02d}"


def _spec(kind, imtype, obj, exptime, light, expected) -> dict:
    return {
        "kind": kind,
        "imtype": imtype,
        "object": obj,
        "exptime": float(exptime),
        "light": light,
        "expected_master": expected,
    }


def plan_frames(counts: dict, extras: bool, manual: bool = False) -> list[list[dict]]:
    """Frame specifications in three blocks: evening calibrations (half the biases, darks,
    flats, arcs lamp by lamp), the night (a science frame), morning (the other biases, the
    short dark and the long flat).

    ``manual`` adds frames taken by hand or for tests, which the default selection picks
    but KPF's production rules leave out: a bias with OBJECT ``bias``, a bias taken with
    the flat-field shutter open, a 0.5 s "bias", a dark with OBJECT ``test-dark`` and a flat
    with OBJECT ``manual-flat``."""
    bias = _spec("bias", "Bias", "autocal-bias", 0.0, "none", "bias")
    dark = _spec("dark", "Dark", "autocal-dark", 600.0, "none", "dark")
    flat = _spec("flat", "Flatlamp", "autocal-flat-all", 30.0, "lamp", "flat")
    n_bias = counts["bias"]
    evening = [bias] * (n_bias - n_bias // 2) + [dark] * counts["dark"] + [flat] * counts["flat"]
    for obj, n in counts["arclamp"].items():
        evening += [_spec("arclamp", "Arclamp", obj, 30.0, "arc", "arclamp")] * n
    night: list[dict] = []
    morning = [bias] * (n_bias // 2)
    if extras:
        night.append(_spec("science", "Object", "219134", 600.0, "science", None))
        morning.append(_spec("short_dark", "Dark", "autocal-dark", 60.0, "none", None))
        morning.append(_spec("long_flat", "Flatlamp", "autocal-flat-all", 120.0, "lamp", None))
    if manual:
        night += [
            _spec("manual", "Bias", "bias", 0.0, "none", "bias"),
            {**bias, "kind": "manual", "shutters": {"FFSHTR": "open"}},
            {**bias, "kind": "manual", "elapsed": 0.5},
            _spec("manual", "Dark", "test-dark", 600.0, "none", "dark"),
            _spec("manual", "Flatlamp", "manual-flat", 30.0, "lamp", "flat"),
        ]
    return [evening, night, morning]


def schedule(blocks: list[list[dict]], date: str, rng) -> list[dict]:
    """Give each spec a start time: blocks begin near 01:00, 08:00 and 16:00 UT (or right
    after the previous block), frames follow each other by ELAPSED plus read-out."""
    mjd0 = mjd_of_date(date)
    starts = [3600.0, 8 * 3600.0, 16 * 3600.0]
    t = 0.0
    timed = []
    for block, start in zip(blocks, starts, strict=True):
        t = max(t + 600.0, start) + rng.uniform(0.0, 600.0)
        for spec in block:
            centis = int(round(t * 100))
            if centis >= 8640000:
                raise ValueError("too many frames to fit in one UT day; lower the counts")
            exptime = spec["exptime"]
            if exptime > 0:
                elapsed = round(exptime + rng.uniform(0.0, 0.05), 3)
            else:
                elapsed = round(rng.uniform(*BIAS_ELAPSED), 4)
            elapsed = spec.get("elapsed", elapsed)
            seconds = centis / 100
            timed.append(
                {
                    **spec,
                    "elapsed": elapsed,
                    "seconds": seconds,
                    "mjd_obs": mjd0 + centis / 8640000,
                    "date_obs": iso_time(date, centis),
                    "name": f"KP.{date}.{seconds:08.2f}.fits",
                }
            )
            t = seconds + elapsed + READOUT_S + rng.uniform(0.0, 5.0)
    return timed


# --------------------------------------------------------------------------- pixels


def add_shot_noise(image: np.ndarray, mean: np.ndarray, rng: np.random.Generator) -> None:
    """Add a Poisson draw of ``mean`` electrons (float64 array) to ``image`` in place;
    Gaussian (mean, sqrt(mean)) where the mean is at least ``SHOT_GAUSS_MIN``."""
    small = mean < SHOT_GAUSS_MIN
    if small.all():
        image += rng.poisson(mean)
        return
    noise = rng.standard_normal(mean.shape, dtype=np.float32)
    noise *= np.sqrt(mean, dtype=np.float32)
    if small.any():
        noise[small] = rng.poisson(mean[small]) - mean[small]
    image += mean
    image += noise


def add_cosmics(image: np.ndarray, exptime: float, rng, scale: float = 1.0) -> int:
    """Add cosmic-ray hits (1-4 pixel tracks, 500-20000 e- each, times ``scale``) in place;
    their number is Poisson with mean ``COSMIC_RATE * pixels * exptime``. Returns it."""
    n = int(rng.poisson(COSMIC_RATE * image.size * exptime))
    if n == 0:
        return 0
    rows, cols = image.shape
    y0 = rng.uniform(0, rows, n)[:, None]
    x0 = rng.uniform(0, cols, n)[:, None]
    angle = rng.uniform(0, np.pi, n)[:, None]
    length = rng.integers(1, 5, n)[:, None]
    energy = scale * 10.0 ** rng.uniform(np.log10(500.0), np.log10(20000.0), n)[:, None]
    step = np.arange(4)[None, :]
    yy = np.floor(y0 + step * np.sin(angle)).astype(np.int64)
    xx = np.floor(x0 + step * np.cos(angle)).astype(np.int64)
    keep = (step < length) & (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
    per_pixel = np.broadcast_to(energy / length, yy.shape)
    np.add.at(image, (yy[keep], xx[keep]), per_pixel[keep])
    return n


def expose(out: np.ndarray, truth: CCDTruth, region, light, exptime: float, rng, cr_scale=1.0):
    """Fill ``out`` (float64, the region's shape; may be a view) with the electrons (DN for
    CA_HK) of CCD ``region`` (row slice, column slice) at read-out; return the cosmic-ray
    count.

    ``bias + exptime * (dark + prnu * light)``; with ``rng``, shot noise on the collected
    charge and cosmic rays (energies times ``cr_scale``) are added. Works in bands of
    ``BAND_ROWS`` rows to keep temporaries small.
    """
    bias, dark, prnu = truth.bias[region], truth.dark[region], truth.prnu[region]
    light = None if light is None else light[region]
    for start in range(0, out.shape[0], BAND_ROWS):
        band = slice(start, start + BAND_ROWS)
        target = out[band]
        target[...] = bias[band]
        if exptime <= 0:
            continue
        charge = dark[band].astype(np.float64)
        if light is not None:
            charge += np.multiply(prnu[band], light[band], dtype=np.float64)
        charge *= exptime
        if rng is None:
            target += charge
        else:
            add_shot_noise(target, charge, rng)
    if rng is None or exptime <= 0:
        return 0
    return add_cosmics(out, exptime, rng, cr_scale)


def quantise(
    block: np.ndarray, pedestal: int, sigma: float, rng, top: float, dtype=RAW_DTYPE
) -> np.ndarray:
    """Stored raw of ``block`` (float64 raw units, modified in place): plus Gaussian read
    noise of ``sigma`` raw units when ``rng``, rounded, plus ``pedestal``, clipped to
    ``[0, top]`` (the saturation value), as ``dtype`` (unsigned, as KPF stores it)."""
    for start in range(0, block.shape[0], BAND_ROWS):
        target = block[start : start + BAND_ROWS]
        if rng is not None:
            noise = rng.standard_normal(target.shape, dtype=np.float32)
            noise *= np.float32(sigma)
            target += noise
        np.rint(target, out=target)
        target += pedestal
        np.clip(target, 0, top, out=target)
    return block.astype(dtype)


def raw_top(geom: Geometry) -> int:
    """Largest raw value: the ADC's 65535 DN times ``adc_scale`` (within uint32)."""
    return min(SATURATION_DN * geom.adc_scale, np.iinfo(RAW_DTYPE).max)


def ccd_region(geom: Geometry, name: str, amp: int) -> tuple[tuple[slice, slice], bool]:
    """(truth region, reversed) of amplifier ``amp``'s data: the truth arrays are in 2D
    orientation, so for a CCD whose 2D image is the tiling flipped up-down (KPF's GREEN in
    2-amplifier mode) the amplifier holds the mirrored rows, in reverse order."""
    rows, cols = amp_regions(geom.size, geom.amps)[amp]
    if name not in geom.flip:
        return (rows, cols), False
    return (slice(geom.size - rows.stop, geom.size - rows.start), cols), True


def amp_raw(truth: CCDTruth, geom: Geometry, amp: int, light, exptime: float, rng=None):
    """Stored raw image (uint32, ``geom.amp_shape``) of amplifier ``amp`` (0-based) and its
    cosmic-ray count: DN = electrons / gain + pedestal (+ read noise), raw = rint(DN *
    adc_scale), clipped to ``[0, 65535 * adc_scale]`` (the ADC saturates at 65535 DN)."""
    region, reverse = ccd_region(geom, truth.name, amp)
    gain = truth.gain[amp]
    block = np.zeros(geom.amp_shape, dtype=np.float64)
    data = block[geom.stored_data(amp)]
    hits = expose(data[::-1] if reverse else data, truth, region, light, exptime, rng)
    data /= gain
    data *= geom.adc_scale
    sigma = truth.read_noise[amp] / gain * geom.adc_scale
    pedestal = pedestal_raw(truth, amp, geom)
    return quantise(block, pedestal, sigma, rng, raw_top(geom)), hits


def pedestal_raw(truth: CCDTruth, amp: int, geom: Geometry) -> int:
    """Pedestal of ``amp`` in raw units (an integer)."""
    return int(round(truth.pedestal[amp] * geom.adc_scale))


def cahk_raw(truth: CCDTruth, light, exptime: float, rng=None):
    """Stored CA_HK image (uint16 DN, rounded, saturating at 65535) and its cosmic-ray
    count."""
    dn = np.empty(truth.shape, dtype=np.float64)
    hits = expose(dn, truth, (slice(None), slice(None)), light, exptime, rng, cr_scale=0.2)
    return quantise(dn, 0, truth.read_noise[0], rng, SATURATION_DN, CAHK_DTYPE), hits


def frame_light(truth: CCDTruth, frame: SimFrame):
    return truth.light(frame.light, frame.object)


def render_frame(night: SimulatedNight, frame: SimFrame, noise: bool, pool=None) -> dict:
    """Raw images of one frame: extension name -> stored array; fills ``frame.cosmics``."""
    geom = night.geometry
    tasks = []
    for ccd_id, name in enumerate(CCD_NAMES):
        for amp in range(geom.amps):
            tasks.append((name, ccd_id, amp))
    tasks.append((CAHK, 9, 0))

    def run(task):
        name, ccd_id, amp = task
        truth = night.ccds[name]
        rng = rng_for(night.seed, 3, frame.index, ccd_id, amp) if noise else None
        light = frame_light(truth, frame)
        if name == CAHK:
            return cahk_raw(truth, light, frame.exptime, rng)
        return amp_raw(truth, geom, amp, light, frame.exptime, rng)

    results = list(pool.map(run, tasks)) if pool is not None else [run(t) for t in tasks]
    images, cosmics = {}, {}
    for (name, _, amp), (image, hits) in zip(tasks, results, strict=True):
        ext = CAHK if name == CAHK else f"{name.split('_')[0]}_AMP{amp + 1}"
        images[ext] = image
        cosmics[name] = cosmics.get(name, 0) + hits
    frame.cosmics = cosmics
    return images


# --------------------------------------------------------------------------- FITS


def primary_header(frame: SimFrame, date: str, seed: int, noise: bool) -> fits.Header:
    head = fits.Header()
    head["TELESCOP"] = ("Keck I", "telescope")
    head["INSTRUME"] = ("KPF", "instrument")
    head["OBSERVAT"] = ("KECK", "observatory")
    head["ORIGIN"] = (ORIGIN, "simulated data")
    head["OFNAME"] = (frame.name.split("-")[0].removesuffix(".fits") + ".fits", "file name")
    head["DATE-OBS"] = (frame.date_obs, "UT at exposure start (ISO)")
    head["UT"] = (frame.date_obs[11:], "UT at exposure start")
    head["MJD-OBS"] = (frame.mjd_obs, "MJD at exposure start")
    head["EXPTIME"] = (frame.exptime, "requested exposure time (s)")
    head["ELAPSED"] = (frame.elapsed, "actual exposure time (s)")
    head["IMTYPE"] = (frame.imtype, "image type")
    head["OBJECT"] = (frame.object, "object")
    head["TARGNAME"] = (frame.object if frame.kind == "science" else "", "target name")
    head["SCI-OBJ"] = (frame.object if frame.light != "none" else "", "science fibre source")
    head["SKY-OBJ"] = ("", "sky fibre source")
    head["CAL-OBJ"] = ("", "calibration fibre source")
    for key, state in shutter_states(frame).items():
        head[key] = (state, "shutter state")
    if "lfc" in frame.object.lower().split("-"):
        head["LFCCEOFR"] = (LFC_CEO_HZ, "LFC carrier-envelope offset frequency [Hz]")
        head["LFCFRREF"] = (LFC_REP_HZ, "LFC repetition rate reference [Hz]")
    head["FRAMENO"] = (frame.index, "frame number of the night")
    head["SIMSEED"] = (seed, "simulation seed")
    head["SIMNOISE"] = (noise, "simulation includes noise")
    head["SIMDATE"] = (date, "simulated night")
    return head


def shutter_states(frame: SimFrame) -> dict[str, str]:
    """The five shutter keywords: all ``closed`` without light (biases, darks); open for the
    calibration lamps; the science frame's light comes through the science and sky fibres
    only. ``frame.shutters`` overrides (a test frame)."""
    if frame.light == "none":
        states = dict.fromkeys(SHUTTERS, "closed")
    elif frame.light == "science":
        states = {
            k: "open" if k in ("SCISEL", "SKYSEL", "SCRAMSHT") else "closed" for k in SHUTTERS
        }
    else:
        states = dict.fromkeys(SHUTTERS, "open")
    return {**states, **frame.shutters}


def telemetry_table() -> fits.BinTableHDU:
    """A small table extension that readers must ignore."""
    cols = [
        fits.Column("KEYWORD", "24A", array=["kpfgreen.CF_BASE_T", "kpfred.CF_BASE_T"]),
        fits.Column("AVERAGE", "D", array=[-100.0, -100.1]),
        fits.Column("UNITS", "8A", array=["degC", "degC"]),
    ]
    return fits.BinTableHDU.from_columns(cols, name="TELEMETRY")


def frame_hdul(night, frame, images: dict, compress: bool) -> fits.HDUList:
    hdus = [fits.PrimaryHDU(header=primary_header(frame, night.date, night.seed, night.noise))]
    for ccd in CCD_NAMES:
        truth = night.ccds[ccd]
        for amp in range(night.geometry.amps):
            ext = f"{ccd.split('_')[0]}_AMP{amp + 1}"
            head = fits.Header()
            head["CCDGAIN"] = (truth.gain[amp], "electrons per DN")
            if compress:
                hdu = fits.CompImageHDU(images[ext], head, name=ext, compression_type="RICE_1")
            else:
                hdu = fits.ImageHDU(images[ext], head, name=ext)
            hdus.append(hdu)
    cahk = fits.Header()
    cahk["BUNIT"] = ("DN", "CA_HK data unit")
    hdus.append(fits.ImageHDU(images[CAHK], cahk, name=CAHK))
    hdus.append(telemetry_table())
    return fits.HDUList(hdus)


def write_thar_linelist(night: SimulatedNight) -> Path | None:
    """``<out>/thar_linelist.txt``: the line list of the night's ThAr lamps (both CCDs), for
    the configuration key ``wls.thar_linelist``; None when the night has no ThAr lamp."""
    waves = [
        cat for ccd in CCD_NAMES for cat in (night.ccds[ccd].spectrograph.catalogues or {}).values()
    ]
    if not waves:
        return None
    values = np.unique(np.concatenate(waves))
    text = "# Simulated ThAr line list: vacuum Angstrom (kpfmasters simulate)\n" + "".join(
        f"{v:.6f}\n" for v in values
    )
    path = night.thar_linelist_path
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
    return path


def write_reference_wls(night: SimulatedNight) -> Path:
    """``<out>/wls_reference.fits``: the reference wavelength solution of the night's
    spectrograph (KPF L1 WAVE extensions), for the configuration key ``wls.reference``."""
    specs = {ccd: night.ccds[ccd].spectrograph for ccd in CCD_NAMES}
    return write_fits(reference_hdulist(specs, night.seed), night.wls_reference_path)


def write_order_mask(night: SimulatedNight) -> Path:
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["ORIGIN"] = ORIGIN
    hdus[0].header["COMMENT"] = "0 off-trace; 1 SKY, 2 SCI1, 3 SCI2, 4 SCI3, 5 CAL"
    for ccd in CCD_NAMES:
        hdus.append(fits.ImageHDU(night.ccds[ccd].order_mask, name=ccd))
    return write_fits(fits.HDUList(hdus), night.order_mask_path)


# --------------------------------------------------------------------------- API


def default_cahk_shape(size: int) -> tuple[int, int]:
    return (255, 1024) if size >= 2040 else (32, 128)


def simulate_night(
    out: Path,
    date: str,
    *,
    seed: int = 0,
    amps: int = 2,
    size: int = 128,
    cahk_shape: tuple[int, int] | None = None,
    noise: bool = True,
    counts: dict | None = None,
    compress: bool = True,
    extras: bool = True,
    manual: bool = False,
    flip_updown: tuple[str, ...] | None = None,
    prescan: int = 4,
    serial_overscan: int = 50,
    parallel_overscan: int = 30,
    adc_scale: int = 65536,
    workers: int | None = None,
    geometry: str | None = None,
) -> SimulatedNight:
    """Write a simulated night under ``out`` and return it with its truth.

    ``date`` is the UT night ``YYYYMMDD``. ``size`` is the square CCD data size in pixels
    (even, >= 48; full KPF is 4080), ``amps`` 2 or 4; ``cahk_shape`` (rows, cols) of CA_HK
    defaults to (255, 1024) for size >= 2040, else (32, 128). ``noise=False`` leaves out
    read noise, shot noise and cosmic rays. ``counts`` overrides :data:`DEFAULT_COUNTS`
    (``arclamp`` an int for each default lamp, or OBJECT -> count); ``extras`` adds frames
    the default selection must not pick (60 s dark, 120 s flat, a science frame, a
    re-delivered bias whose name contains ``-``); ``manual`` adds frames taken by hand or
    for tests that KPF's production rules leave out (see :func:`plan_frames`).
    ``compress`` (default, as KPF) RICE-compresses amplifiers; ``compress=False`` writes
    them plain. ``flip_updown``: the CCDs (``GREEN``, ``RED``) whose 2D image is the tiling
    flipped up-down; default KPF's: GREEN with 2 amplifiers, none with 4. The amplifier
    widths (pixels) and ``adc_scale`` are those of docs/reference.md §1.

    ``geometry`` is the spectrograph's trace geometry, ``compact`` or ``kpf`` (KPF's measured
    traces, size 4080 only); the default is ``kpf`` at size 4080, else ``compact``. The
    night's reference wavelength solution (truth plus a smooth known perturbation, see
    :mod:`kpfmasters.sim.spectrograph`) is written as ``<out>/wls_reference.fits``.

    ``workers`` threads render amplifiers (default: up to 2); results do not depend on it.
    Files are written one frame at a time. The same arguments give the same data and
    headers (only the CHECKSUM cards, which carry the write time, differ). An earlier
    simulated night in the same place is replaced; a directory holding other FITS files is
    refused (ValueError).
    """
    mjd_of_date(date)
    if amps not in (2, 4):
        raise ValueError(f"amps must be 2 or 4, not {amps}")
    if size % 2 or size < 48:
        raise ValueError(f"size must be an even number of pixels >= 48, not {size}")
    counts = normalise_counts(counts)
    out = Path(out)
    if flip_updown is None:
        flip_updown = ("GREEN",) if amps == 2 else ()
    flip = tuple(f"{ccd}_CCD" for ccd in flip_updown)
    geom = Geometry(size, amps, prescan, serial_overscan, parallel_overscan, adc_scale, flip)
    objects = [obj for obj, n in counts["arclamp"].items() if n > 0]
    geometry = geometry or ("kpf" if size == KPF_SIZE else "compact")
    ccds = {
        name: make_ccd_truth(name, size, amps, objects, seed, adc_scale, geometry)
        for name in CCD_NAMES
    }
    ccds[CAHK] = make_cahk_truth(tuple(cahk_shape or default_cahk_shape(size)), objects, seed)
    night = SimulatedNight(
        out=out,
        date=date,
        l0_dir=out / "L0" / date,
        order_mask_path=out / "order_mask.fits",
        truth_dir=out / "truth" / date,
        frames=[],
        ccds=ccds,
        geometry=geom,
        seed=seed,
        noise=noise,
        compress=compress,
    )
    timed = schedule(plan_frames(counts, extras, manual), date, rng_for(seed, 4))
    frames = [
        SimFrame(path=night.l0_dir / spec["name"], index=i, **spec) for i, spec in enumerate(timed)
    ]
    clear_previous(night)
    night.l0_dir.mkdir(parents=True, exist_ok=True)
    write_order_mask(night)
    write_reference_wls(night)
    write_thar_linelist(night)
    save_truth_arrays(night)
    workers = workers or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for frame in frames:
            images = render_frame(night, frame, noise, pool if workers > 1 else None)
            write_fits(frame_hdul(night, frame, images, compress), frame.path)
            del images
            night.frames.append(frame)
    biases = [f for f in frames if f.kind == "bias"]
    if extras and biases:
        night.frames.append(redeliver(biases[len(biases) // 2]))
    save_truth_records(night)
    return night


def redeliver(source: SimFrame) -> SimFrame:
    """Copy ``source`` to ``<stem>-2.fits`` (a re-delivery the L0 name pattern rejects)."""
    name = source.name.removesuffix(".fits") + "-2.fits"
    path = source.path.with_name(name)
    with atomic_output(path) as tmp:
        shutil.copyfile(source.path, tmp)
    frame = SimFrame(**{**asdict(source), "path": path, "name": name})
    frame.kind, frame.expected_master = "redelivered", None
    return frame


def clear_previous(night: SimulatedNight) -> None:
    """Remove an earlier simulated night from the same place, so the directory holds exactly
    this night. Refuses (ValueError, nothing removed) when the L0 directory holds FITS files
    the simulator did not write: ``out`` must never be a real data tree."""
    old = sorted(night.l0_dir.glob("*.fits")) if night.l0_dir.is_dir() else []
    for path in old:
        try:
            origin = fits.getval(path, "ORIGIN")
        except (OSError, KeyError, ValueError):
            origin = None
        if origin != ORIGIN:
            raise ValueError(f"{path} was not written by the simulator; choose another output")
    for path in old:
        path.unlink()
    if night.truth_dir.is_dir():
        old_truth = [*night.truth_dir.glob("*.npy"), *night.truth_dir.glob("*.json")]
        for path in [*old_truth, *night.truth_dir.glob("order_trace_*.csv")]:
            path.unlink()


def save_truth_arrays(night: SimulatedNight) -> None:
    night.truth_dir.mkdir(parents=True, exist_ok=True)
    records = {name: save_ccd_truth(truth, night.truth_dir) for name, truth in night.ccds.items()}
    dump_json(
        {
            "version": TRUTH_VERSION,
            "date": night.date,
            "seed": night.seed,
            "noise": night.noise,
            "compress": night.compress,
            "geometry": asdict(night.geometry),
            "ccds": records,
        },
        night.truth_dir / "truth.json",
    )


def save_truth_records(night: SimulatedNight) -> None:
    """``frames.json`` is written last: its presence marks a complete night."""
    records = [f.record(night.out) for f in night.frames]
    dump_json(records, night.truth_dir / "frames.json")


def load_truth(truth_dir: str | Path, mmap: bool = True) -> SimulatedNight:
    """Read a night written by :func:`simulate_night` back from ``out/truth/<date>``.

    Arrays are read-only memory maps when ``mmap`` (cheap for full-size nights).
    """
    truth_dir = Path(truth_dir)
    meta = json.loads((truth_dir / "truth.json").read_text())
    if meta.get("version") != TRUTH_VERSION:
        raise ValueError(f"{truth_dir}: unknown truth version {meta.get('version')!r}")
    out = truth_dir.parent.parent
    ccds = {name: load_ccd_truth(rec, truth_dir, mmap) for name, rec in meta["ccds"].items()}
    frames = []
    for rec in json.loads((truth_dir / "frames.json").read_text()):
        rec["path"] = out / rec["path"]
        frames.append(SimFrame(**rec))
    date = meta["date"]
    return SimulatedNight(
        out=out,
        date=date,
        l0_dir=out / "L0" / date,
        order_mask_path=out / "order_mask.fits",
        truth_dir=truth_dir,
        frames=frames,
        ccds=ccds,
        geometry=Geometry(**meta["geometry"]),
        seed=meta["seed"],
        noise=meta["noise"],
        compress=meta["compress"],
    )


def expected_2d(night: SimulatedNight, frame: SimFrame | str) -> dict[str, np.ndarray]:
    """Noise-free 2D image of ``frame`` (docs/reference.md §2), float64, by extension name.

    ``GREEN_CCD``/``RED_CCD`` (size x size electrons): per amplifier, the noise-free raw
    values ``raw / adc_scale * gain`` minus the overscan level ``pedestal * gain``, tiled
    on the CCD (then flipped up-down for the CCDs in ``geometry.flip``); ``CA_HK``: the
    noise-free stored DN. Without noise the L0 files hold exactly
    these raw values; with noise this is the expectation (no cosmic rays).
    """
    if isinstance(frame, str):
        frame = night.frame(frame)
    geom = night.geometry
    result = {}
    for name in CCD_NAMES:
        truth = night.ccds[name]
        image = np.empty((geom.size, geom.size), dtype=np.float64)
        for amp, region in enumerate(amp_regions(geom.size, geom.amps)):
            raw, _ = amp_raw(truth, geom, amp, frame_light(truth, frame), frame.exptime)
            gain = truth.gain[amp]
            level = pedestal_raw(truth, amp, geom) / geom.adc_scale * gain
            image[region] = raw[geom.stored_data(amp)] / geom.adc_scale * gain - level
        result[name] = image[::-1].copy() if name in geom.flip else image
    cahk = night.ccds[CAHK]
    raw, _ = cahk_raw(cahk, frame_light(cahk, frame), frame.exptime)
    result[CAHK] = raw.astype(np.float64)
    return result
