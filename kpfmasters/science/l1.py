"""1D master spectra (L1): every orderlet of every order of a 2D master, box-extracted.

``kpf_<date>_master_<type>_L1.fits`` holds, in this order: PRIMARY (the 2D master's, plus
``TRACFGRN``, ``TRACFRED``, ``EXTMETH``, ``WLSFILE``, ``SOFTVER``, ``CFGHASH``); for CHIP in
GREEN, RED the five ``FLUX`` images (``<CHIP>_SCI_FLUX1..3``, ``<CHIP>_SKY_FLUX``,
``<CHIP>_CAL_FLUX``), then the five ``VAR`` and the five ``WAVE`` images; for the flat only,
after both CHIPs, the ``BLAZE`` images of GREEN then RED; then the ``TRACE`` table (CHIP plus
the trace CSV's columns) and the ``INPUTS`` table (ROLE, FILENAME, MD5).

Every image is float64 of shape (orders, columns), row i = order i from the bottom of the
CCD; an orderlet without a trace in an order is a NaN row. FLUX is in the master's unit,
VAR in its square, WAVE in vacuum Angstrom (copied from the reference solution, NaN without
one), BLAZE in e-/s (the flat's lamp stack extracted).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters import __version__
from kpfmasters.core.errors import InputError
from kpfmasters.science.extract import box_extract, to_orders
from kpfmasters.science.traces import ORDERLETS, TraceSet, read_traces

log = logging.getLogger(__name__)

CHIPS = ("GREEN", "RED")
L1_ORDERLETS = ("SCI1", "SCI2", "SCI3", "SKY", "CAL")
KINDS = ("FLUX", "VAR", "WAVE")
STRUCTURAL = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "CHECKSUM", "DATASUM")
_CHUNK = 1 << 20


def ext_name(chip: str, orderlet: str, kind: str) -> str:
    """L1 extension name: ``GREEN_SCI_FLUX2``, ``RED_SKY_VAR``, ``GREEN_CAL_BLAZE``..."""
    if orderlet.startswith("SCI"):
        return f"{chip}_SCI_{kind}{orderlet[3:]}"
    return f"{chip}_{orderlet}_{kind}"


def l1_extension_names(chips=CHIPS, blaze: bool = False) -> list[str]:
    """Image extension names of an L1 file, in file order."""
    names = [ext_name(c, o, k) for c in chips for k in KINDS for o in L1_ORDERLETS]
    if blaze:
        names += [ext_name(c, o, "BLAZE") for c in chips for o in L1_ORDERLETS]
    return names


def l1_name(master_name: str) -> str:
    """``kpf_<date>_master_<type>.fits`` -> ``kpf_<date>_master_<type>_L1.fits``."""
    return master_name.removesuffix(".fits") + "_L1.fits"


def md5_file(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def var_unit(unit: str) -> str:
    """Unit of VAR for a FLUX unit: ``electrons`` -> ``electrons**2``."""
    if unit in ("", "dimensionless"):
        return unit
    return f"({unit})**2" if "/" in unit else f"{unit}**2"


@dataclass
class ChipSpectra:
    """Extracted spectra of one CCD: orderlet -> (orders, columns) float64 images."""

    flux: dict[str, np.ndarray]
    var: dict[str, np.ndarray]
    wave: dict[str, np.ndarray]
    blaze: dict[str, np.ndarray] | None = None
    unit: str = ""


def extract_chip(
    traces: TraceSet,
    image: np.ndarray,
    unc: np.ndarray,
    stack: np.ndarray | None = None,
    wave: dict[str, np.ndarray] | None = None,
    unit: str = "",
) -> ChipSpectra:
    """Box-extract one CCD of a master.

    Parameters
    ----------
    traces : TraceSet
    image, unc : ndarray, shape (nrows, ncols)
        The master's ``<CCD>`` and ``<CCD>_UNC`` images (master unit).
    stack : ndarray, shape (nrows, ncols), optional
        The flat's ``<CCD>_STACK`` (e-/s): extracted into BLAZE.
    wave : dict, optional
        Orderlet -> (orders, ncols) wavelengths (vacuum Angstrom); NaN images without.
    unit : str
        BUNIT of the master's image.
    """
    n_orders, ncols = traces.n_orders, image.shape[1]
    flux, var = box_extract(traces, image, unc)
    blaze = None
    if stack is not None:
        blaze_flux, _ = box_extract(traces, stack)
        blaze = to_orders(traces, blaze_flux, n_orders)
    if wave is None:
        wave = {o: np.full((n_orders, ncols), np.nan) for o in ORDERLETS}
    return ChipSpectra(
        to_orders(traces, flux, n_orders), to_orders(traces, var, n_orders), wave, blaze, unit
    )


def read_reference_wave(
    path: str | Path, chip: str, n_orders: int, ncols: int
) -> dict[str, np.ndarray]:
    """Orderlet -> lambda(order, column) (vacuum Angstrom) of ``chip`` from a reference file.

    The file holds ``<CHIP>_SCI_WAVE1..3``, ``<CHIP>_SKY_WAVE`` and ``<CHIP>_CAL_WAVE`` of
    shape (orders, columns), as any KPF L1 file does; :class:`InputError` names the
    extension that is missing or of the wrong shape.
    """
    out = {}
    try:
        with fits.open(path, memmap=True) as hdul:
            for orderlet in L1_ORDERLETS:
                name = ext_name(chip, orderlet, "WAVE")
                if name not in hdul:
                    raise InputError(path, f"has no {name} extension, expected one (L1 layout)")
                data = hdul[name].data
                if data is None or data.shape != (n_orders, ncols):
                    shape = None if data is None else data.shape
                    raise InputError(
                        path,
                        f"extension {name} has shape {shape}, expected ({n_orders}, {ncols}) "
                        "(orders, columns) as the traces give",
                    )
                out[orderlet] = np.array(data, dtype=np.float64)
    except OSError as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from None
    return out


def image_hdu(data: np.ndarray, name: str, unit: str, comment: str) -> fits.ImageHDU:
    hdu = fits.ImageHDU(np.ascontiguousarray(data, dtype=">f8"), name=name)
    hdu.header["BUNIT"] = (unit, comment)
    return hdu


def trace_table(traces: dict[str, TraceSet]) -> fits.BinTableHDU:
    """``TRACE``: one row per trace used, columns CHIP, INDEX, Coeff0.., the CSV's edges."""
    chips, index, coeffs, rows = [], [], [], []
    for chip, ts in traces.items():
        for i in range(len(ts)):
            chips.append(chip)
            index.append(i)
            coeffs.append(ts.coeffs[i])
            rows.append((ts.bottom[i], ts.top[i], ts.x1[i], ts.x2[i], ts.fiber[i], ts.order[i]))
    ncoef = max(ts.coeffs.shape[1] for ts in traces.values())
    coeffs = np.array([np.pad(c, (0, ncoef - c.size)) for c in coeffs]).reshape(-1, ncoef)
    cols = [
        fits.Column("CHIP", "5A", array=chips),
        fits.Column("INDEX", "J", array=index),
        *[fits.Column(f"Coeff{k}", "D", array=coeffs[:, k]) for k in range(ncoef)],
        fits.Column("BottomEdge", "D", array=[r[0] for r in rows]),
        fits.Column("TopEdge", "D", array=[r[1] for r in rows]),
        fits.Column("X1", "J", array=[r[2] for r in rows]),
        fits.Column("X2", "J", array=[r[3] for r in rows]),
        fits.Column("Fiber", "4A", array=[r[4] for r in rows]),
        fits.Column("Order", "J", array=[r[5] for r in rows]),
    ]
    return fits.BinTableHDU.from_columns(cols, name="TRACE")


def inputs_table(inputs: list[tuple[str, str, str]]) -> fits.BinTableHDU:
    """``INPUTS``: (ROLE, FILENAME, MD5) of the 2D master, trace files and wavelength file."""

    def width(i):
        return max([1, *(len(r[i].encode()) for r in inputs)])

    cols = [
        fits.Column(name, f"{width(i)}A", array=[r[i] for r in inputs])
        for i, name in enumerate(("ROLE", "FILENAME", "MD5"))
    ]
    return fits.BinTableHDU.from_columns(cols, name="INPUTS")


def l1_hdulist(
    primary: fits.Header,
    spectra: dict[str, ChipSpectra],
    traces: dict[str, TraceSet],
    inputs: list[tuple[str, str, str]],
    keywords: dict[str, tuple],
) -> fits.HDUList:
    """Assemble the L1 file (module docstring). ``spectra`` and ``traces`` are keyed by CHIP
    (``GREEN``, ``RED``); ``keywords`` are PRIMARY cards added to the 2D master's header."""
    header = primary.copy()
    for key in STRUCTURAL:
        header.remove(key, ignore_missing=True, remove_all=True)
    for key, card in keywords.items():
        header[key] = card
    header["DATE"] = (
        dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "file creation time (UTC)",
    )
    hdus = [fits.PrimaryHDU(header=header)]
    chips = [c for c in CHIPS if c in spectra]
    for chip in chips:
        sp = spectra[chip]
        for orderlet in L1_ORDERLETS:
            hdus.append(
                image_hdu(
                    sp.flux[orderlet],
                    ext_name(chip, orderlet, "FLUX"),
                    sp.unit,
                    "unit of the 2D master",
                )
            )
        for orderlet in L1_ORDERLETS:
            hdus.append(
                image_hdu(
                    sp.var[orderlet],
                    ext_name(chip, orderlet, "VAR"),
                    var_unit(sp.unit),
                    "variance of FLUX",
                )
            )
        for orderlet in L1_ORDERLETS:
            hdus.append(
                image_hdu(
                    sp.wave[orderlet],
                    ext_name(chip, orderlet, "WAVE"),
                    "Angstrom",
                    "vacuum wavelength",
                )
            )
    for chip in chips:
        sp = spectra[chip]
        if sp.blaze is None:
            continue
        for orderlet in L1_ORDERLETS:
            hdus.append(
                image_hdu(
                    sp.blaze[orderlet],
                    ext_name(chip, orderlet, "BLAZE"),
                    "electrons/sec",
                    "lamp spectrum: extracted flat stack",
                )
            )
    hdus.append(trace_table({c: traces[c] for c in chips}))
    hdus.append(inputs_table(inputs))
    return fits.HDUList(hdus)


# --------------------------------------------------------------------------- job


@dataclass
class L1Job:
    """One L1 product: the 2D master, its trace files (CCD name -> CSV) and the settings.

    ``wls`` is the reference wavelength file ('' for none); ``method`` ``box``.
    """

    master: str
    output: str
    traces: dict[str, str]
    wls: str = ""
    method: str = "box"
    cfghash: str = ""
    extra_inputs: list[tuple[str, str]] = field(default_factory=list)


def _open_master(path: Path) -> fits.HDUList:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            return fits.open(path, memmap=True, checksum=True)
    except (OSError, ValueError, AstropyUserWarning) as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from None


def build_l1(job: L1Job) -> dict:
    """Make the L1 file of ``job``; return a summary (orders per CHIP, NaN fractions)."""
    from kpfmasters.io.fits import write_fits

    if job.method != "box":
        raise ValueError(f"extraction method {job.method!r} is not available; use 'box'")
    master = Path(job.master)
    traces = {}
    for ccd, path in job.traces.items():
        traces[ccd.split("_")[0]] = read_traces(path)
    # The inputs' MD5 (the 2D master is hundreds of MB at full size) are computed in a
    # thread while the master is read and extracted: hashlib releases the GIL.
    with ThreadPoolExecutor(max_workers=1) as pool:
        digests = {p: pool.submit(md5_file, p) for p in [master, *job.traces.values()]}
        if job.wls:
            digests[job.wls] = pool.submit(md5_file, job.wls)
        spectra, summary, primary = _extract_master(job, master, traces)
        md5 = {p: d.result() for p, d in digests.items()}
    if not job.wls:
        log.warning("no reference wavelength solution configured (wls.reference): WAVE is NaN")
    inputs = [("master2d", master.name, md5[master])]
    for ccd, path in job.traces.items():
        inputs.append((f"trace_{ccd}", Path(path).name, md5[path]))
    if job.wls:
        inputs.append(("wls", Path(job.wls).name, md5[job.wls]))
    keywords = {
        "TRACFGRN": (Path(job.traces.get("GREEN_CCD", "")).name, "GREEN trace file used"),
        "TRACFRED": (Path(job.traces.get("RED_CCD", "")).name, "RED trace file used"),
        "EXTMETH": (job.method, "extraction method"),
        "WLSFILE": (Path(job.wls).name if job.wls else "", "reference wavelength solution"),
        "SOFTVER": (__version__, "kpfmasters version"),
        "CFGHASH": (job.cfghash, "hash of the effective configuration"),
    }
    hdul = l1_hdulist(primary, spectra, traces, inputs, keywords)
    write_fits(hdul, job.output)
    return summary


def _extract_master(job: L1Job, master: Path, traces: dict) -> tuple[dict, dict, fits.Header]:
    """Spectra (CHIP -> ChipSpectra), the summary and the PRIMARY header of ``master``."""
    spectra: dict[str, ChipSpectra] = {}
    summary = {"orders": {}, "nan_fraction": {}}
    with _open_master(master) as hdul:
        primary = hdul[0].header.copy()
        is_flat = str(primary.get("IMTYPE", "")).lower() == "flat"
        for chip in CHIPS:
            ccd = f"{chip}_CCD"
            if ccd not in hdul:
                log.warning("%s has no %s extension: no %s spectra", master, ccd, chip)
                continue
            if chip not in traces:
                raise InputError(master, f"no trace file given for {ccd}")
            if f"{ccd}_UNC" not in hdul:
                raise InputError(master, f"has {ccd} but no {ccd}_UNC extension, expected both")
            image = hdul[ccd].data
            unc = hdul[f"{ccd}_UNC"].data
            stack = None
            if is_flat:
                if f"{ccd}_STACK" not in hdul:
                    raise InputError(master, f"flat has no {ccd}_STACK extension (for BLAZE)")
                stack = hdul[f"{ccd}_STACK"].data
            ts = traces[chip]
            wave = None
            if job.wls:
                wave = read_reference_wave(job.wls, chip, ts.n_orders, image.shape[1])
            unit = str(hdul[ccd].header.get("BUNIT", ""))
            spectra[chip] = extract_chip(ts, image, unc, stack, wave, unit)
            summary["orders"][chip] = ts.n_orders
            summary["nan_fraction"][chip] = float(
                np.mean([np.isnan(v).mean() for v in spectra[chip].flux.values()])
            )
    return spectra, summary, primary
