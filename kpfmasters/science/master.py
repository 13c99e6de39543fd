"""Assembling a master FITS file (SPEC section 5) from its stacked 2D inputs.

One :class:`MasterJob` describes a master: its type, the used 2D frames in stacking order,
the INPUTS rows of every picked frame, its settings, and the predecessor masters it is
calibrated with. :func:`build_master` stacks each CCD (streaming, see
:mod:`kpfmasters.science.stack`), normalises the flat, sets INFOBITS, and writes the
product atomically.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters import __version__
from kpfmasters.core.errors import InputError
from kpfmasters.io.fits import write_fits
from kpfmasters.qa.records import ccd_statistics, previous_master, qc_cards, read_frame_headers
from kpfmasters.science.flat import load_order_mask, normalize_flat
from kpfmasters.science.stack import stack_files

log = logging.getLogger(__name__)

IMTYPES = {"bias": "Bias", "dark": "Dark", "flat": "Flat", "arclamp": "Arclamp"}
CCD_EXTS = ("GREEN_CCD", "RED_CCD", "CA_HK")
INFOBIT = {"GREEN_CCD": 0, "RED_CCD": 1, "CA_HK": 2}
BUNITS = {
    "bias": ("electrons", "DN"),
    "dark": ("electrons/sec", "DN/sec"),
    "flat": ("dimensionless", "dimensionless"),
    "arclamp": ("electrons/sec", "DN/sec"),
}
PREDECESSORS = {
    "bias": (),
    "dark": ("bias",),
    "flat": ("bias", "dark"),
    "arclamp": ("bias", "dark", "flat"),
}
NORMALISED = ("dark", "flat", "arclamp")
STRUCTURAL = (
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "EXTEND",
    "CHECKSUM",
    "DATASUM",
    "BZERO",
    "BSCALE",
    "PCOUNT",
    "GCOUNT",
)
INPUT_KEYS = {"bias": "INPBIAS", "dark": "INPDARK", "flat": "INPFLAT"}
MASKED = ("GREEN_CCD", "RED_CCD")  # the CCDs an order mask describes (never CA_HK)
MJD_UNIX = 40587.0  # MJD of 1970-01-01T00:00:00 UTC


@dataclass
class MasterJob:
    """Everything needed to make one master.

    ``frames`` are the 2D files stacked, in stacking order; ``rows`` the INPUTS table rows of
    every frame the selection picked (``USED`` false for those not stacked). ``settings`` is
    the master's section of the configuration (``nsigma``, ``flag_min_count``,
    ``extensions`` and, for the flat, ``smooth_sigma`` and ``low_light_limit``).
    """

    mtype: str
    date: str
    output: str
    frames: list[str]
    rows: list[dict]
    settings: dict
    obj: str | None = None
    predecessors: dict[str, str] = field(default_factory=dict)
    order_mask: str | None = None
    stack: dict = field(default_factory=lambda: {"memory_mb": 384, "band_rows": 0})
    threads: int = 1
    flag_fraction: float = 0.01
    cfghash: str = ""


def read_verified(path: str | Path, extname: str) -> np.ndarray | None:
    """Image ``extname`` of a predecessor master as float64, after checksum verification.

    Returns None when the file has no such extension; raises :class:`InputError` when the file
    is unreadable or the extension's CHECKSUM/DATASUM are missing or do not match its bytes.
    The file is memory-mapped: the sums run over the extension's bytes where the page cache
    holds them, no other extension's data is touched, and only the image is copied.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, memmap=True) as hdul:
                if extname not in hdul:
                    return None
                hdu = hdul[extname]
                if "CHECKSUM" not in hdu.header or "DATASUM" not in hdu.header:
                    raise InputError(path, f"extension {extname} has no CHECKSUM/DATASUM")
                for what, check in (
                    ("Checksum", hdu.verify_checksum),
                    ("Datasum", hdu.verify_datasum),
                ):
                    if check() != 1:
                        raise InputError(
                            path,
                            f"fails checksum verification ({what} verification failed for "
                            f"HDU {(hdu.name, hdu.ver)})",
                        )
                return np.array(hdu.data, dtype=np.float64, copy=True)
    except (AstropyUserWarning, OSError, ValueError, TypeError) as exc:
        raise InputError(path, f"is not a readable master ({exc})") from exc


def frame_extensions(paths: list[str], wanted: list[str]) -> dict[str, list[int]]:
    """For each wanted extension, the indices of the 2D frames that contain it."""
    present: dict[str, list[int]] = {ext: [] for ext in wanted}
    for i, path in enumerate(paths):
        try:
            with fits.open(path, lazy_load_hdus=True) as hdul:
                names = {hdu.name for hdu in hdul}
        except (OSError, ValueError) as exc:
            raise InputError(path, f"is not a readable 2D file ({exc})") from exc
        for ext in wanted:
            if ext in names:
                present[ext].append(i)
    return present


def make_preprocess(mtype: str, exptimes: list[float], calib: dict[str, np.ndarray]):
    """Per-frame preprocessing of SPEC section 3 on a row band (float64, in place).

    dark: (x - bias) / EXPTIME; flat: (x - bias) / EXPTIME - dark;
    arclamp: ((x - bias) / EXPTIME - dark) / flat.
    """
    if mtype == "bias":
        return None
    bias, dark, flat = calib.get("bias"), calib.get("dark"), calib.get("flat")

    def preprocess(i: int, rows: slice, band: np.ndarray) -> np.ndarray:
        band -= bias[rows]
        band /= exptimes[i]
        if dark is not None:
            band -= dark[rows]
        if flat is not None:
            band /= flat[rows]
        return band

    return preprocess


def fits_order(array: np.ndarray, dtype) -> np.ndarray:
    """``array`` as big-endian ``dtype`` (FITS byte order), swapped in place when possible.

    The caller must not use ``array`` afterwards: its bytes may have been swapped.
    """
    target = np.dtype(dtype).newbyteorder(">")
    if array.dtype == target:
        return array
    if (
        array.dtype == target.newbyteorder("=")
        and array.flags.writeable
        and array.flags.c_contiguous
    ):
        return array.byteswap(inplace=True).view(target)
    return array.astype(target)


def infobits_for(cnt: np.ndarray, min_count: int, fraction: float, ext: str) -> int:
    """The ext's INFOBITS bit when more than ``fraction`` of pixels have CNT < min_count."""
    low = np.count_nonzero(cnt < min_count) / cnt.size
    return (1 << INFOBIT[ext]) if low > fraction else 0


def primary_header(
    job: MasterJob, first: fits.Header, used_rows: list[dict], nframes: int, infobits: int
) -> fits.Header:
    header = first.copy()
    for key in STRUCTURAL:
        header.remove(key, ignore_missing=True, remove_all=True)
    mjds = [r["MJD_OBS"] for r in used_rows]
    header["IMTYPE"] = IMTYPES[job.mtype]
    if job.obj is not None:
        header["OBJECT"] = job.obj
    header["NFRAMES"] = (nframes, "number of frames stacked")
    header["MINMJD"] = (min(mjds), "earliest MJD-OBS of the stacked frames")
    header["MAXMJD"] = (max(mjds), "latest MJD-OBS of the stacked frames")
    add_mid_time(header, min(mjds), max(mjds))
    header["INFOBITS"] = (infobits, "bit 0/1/2 GREEN/RED/CA_HK: >1% pixels low CNT")
    header["NSIGMA"] = (float(job.settings["nsigma"]), "clip k of the stack")
    for mtype, key in INPUT_KEYS.items():
        if mtype in job.predecessors:
            header[key] = (Path(job.predecessors[mtype]).name, f"master {mtype} used")
    header["SOFTVER"] = (__version__, "kpfmasters version")
    header["CFGHASH"] = (job.cfghash, "hash of the effective configuration")
    header["DATE"] = (
        dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "file creation time (UTC)",
    )
    return header


def mid_time(minmjd: float, maxmjd: float) -> tuple[float, str]:
    """(MIDMJD, DATE-MID): the mean of ``minmjd`` and ``maxmjd`` (days), and the same
    instant as ISO 8601 UTC to the millisecond (``YYYY-MM-DDTHH:MM:SS.sss``)."""
    mid = 0.5 * (float(minmjd) + float(maxmjd))
    when = dt.datetime(1970, 1, 1) + dt.timedelta(days=mid - MJD_UNIX, microseconds=500)
    return mid, when.isoformat(timespec="milliseconds")  # truncates: rounded by the 500 us


def add_mid_time(header: fits.Header, minmjd: float, maxmjd: float) -> None:
    """MIDMJD and DATE-MID cards (see :func:`mid_time`) after MAXMJD."""
    mid, iso = mid_time(minmjd, maxmjd)
    header["MIDMJD"] = (mid, "mean of MINMJD and MAXMJD")
    header["DATE-MID"] = (iso, "MIDMJD as UTC date and time")


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def inputs_table(rows: list[dict], notes: list[str] | None = None) -> fits.BinTableHDU:
    """The INPUTS table: one row per picked frame; ``notes`` (e.g. an extension left out
    and why) become COMMENT cards of its header."""

    def width(key):
        return max([1, *(len(str(r[key]).encode()) for r in rows)])

    cols = [
        fits.Column("FILENAME", f"{width('FILENAME')}A", array=[r["FILENAME"] for r in rows]),
        fits.Column("L0FILE", f"{width('L0FILE')}A", array=[r["L0FILE"] for r in rows]),
        fits.Column("MJD_OBS", "D", array=[_float(r["MJD_OBS"]) for r in rows]),
        fits.Column("EXPTIME", "D", array=[_float(r["EXPTIME"]) for r in rows]),
        fits.Column("USED", "L", array=[bool(r["USED"]) for r in rows]),
        fits.Column("REASON", f"{width('REASON')}A", array=[r.get("REASON", "") for r in rows]),
    ]
    table = fits.BinTableHDU.from_columns(cols, name="INPUTS")
    for note in notes or []:
        table.header.add_comment(note)
    return table


def build_master(job: MasterJob) -> dict:
    """Make the master described by ``job``; return a summary (for logs and tests)."""
    used_rows = [r for r in job.rows if r["USED"]]
    if len(used_rows) != len(job.frames):
        raise ValueError(
            f"{len(job.frames)} 2D frames given but {len(used_rows)} INPUTS rows marked USED"
        )
    for row, path in zip(used_rows, job.frames, strict=True):
        if Path(path).name != row["FILENAME"]:
            raise ValueError(f"2D frame {path} does not match INPUTS row {row['FILENAME']}")
    exptimes = [float(r["EXPTIME"]) for r in used_rows]
    wanted = list(job.settings["extensions"])
    present = frame_extensions(job.frames, wanted)
    nsigma = float(job.settings["nsigma"])
    bunit_ccd, bunit_hk = BUNITS[job.mtype]

    images: dict[str, fits.ImageHDU] = {}
    extras: list[fits.ImageHDU] = []
    counts: dict[str, int] = {}
    summary: dict = {"output": job.output, "extensions": {}}
    infobits = 0
    notes: list[str] = []
    previous, previous_medians = previous_master(job.output, job.date)
    for ext in wanted:
        members = present[ext]
        if not members:
            log.warning("%s: no input frame has extension %s; it is left out", job.output, ext)
            continue
        calib = {}
        for mtype in PREDECESSORS[job.mtype]:
            image = read_verified(job.predecessors[mtype], ext)
            if image is None:
                note = (
                    f"{ext} left out: the master {mtype} {Path(job.predecessors[mtype]).name} "
                    f"has no {ext} extension to calibrate the {job.mtype} frames with"
                )
                log.warning("%s: %s", job.output, note)
                notes.append(note)
                break
            calib[mtype] = image
        if len(calib) < len(PREDECESSORS[job.mtype]):
            del calib
            continue
        paths = [job.frames[i] for i in members]
        pre = make_preprocess(job.mtype, [exptimes[i] for i in members], calib)
        log.info("%s: stacking %d frame(s) of %s, k = %.2f", job.mtype, len(paths), ext, nsigma)
        result = stack_files(
            paths,
            ext,
            nsigma,
            preprocess=pre,
            band_rows=int(job.stack.get("band_rows", 0)),
            memory_mb=int(job.stack.get("memory_mb", 384)),
            threads=job.threads,
        )
        for name, image in calib.items():
            if image.shape != result.avg.shape:
                raise InputError(
                    job.predecessors[name],
                    f"extension {ext} shape {image.shape} "
                    f"differs from the frames' {result.avg.shape}",
                )
        del calib, pre  # the preprocess closure holds the predecessor images too
        data, unc, flat = result.avg, result.unc, None
        if job.mtype == "flat":
            masked = job.order_mask and ext in MASKED  # only GREEN/RED of the mask are read
            mask = load_order_mask(job.order_mask, ext, data.shape) if masked else None
            flat = normalize_flat(
                data,
                unc,
                mask,
                smooth_sigma=float(job.settings["smooth_sigma"]),
                low_light_limit=float(job.settings["low_light_limit"]),
            )
            for problem in flat.problems:
                log.warning("%s %s: %s", job.output, ext, problem)
            if ext != "CA_HK":
                extras.append(fits.ImageHDU(data.astype(">f4"), name=f"{ext}_STACK"))
                extras.append(fits.ImageHDU(flat.lamp.astype(">f4"), name=f"{ext}_LAMP"))
            data, unc = flat.flat, flat.unc
            result.avg = None  # kept as <EXT>_STACK (float32) above
            summary["extensions"].setdefault(ext, {})["norms"] = flat.norms
        bit = infobits_for(result.cnt, int(job.settings["flag_min_count"]), job.flag_fraction, ext)
        infobits |= bit
        counts[ext] = len(paths)
        mjds = [used_rows[i]["MJD_OBS"] for i in members]
        hdr = fits.Header()
        hdr["BUNIT"] = bunit_hk if ext == "CA_HK" else bunit_ccd
        hdr["NFRAMES"] = len(paths)
        hdr["MINMJD"] = min(mjds)
        hdr["MAXMJD"] = max(mjds)
        add_mid_time(hdr, min(mjds), max(mjds))
        qc = ccd_statistics(
            job.mtype,
            data,
            unc,
            result.cnt,
            len(paths),
            int(job.settings["flag_min_count"]),
            read_frame_headers(paths, ext),
            previous_medians.get(ext),
        )
        for key, value, comment in qc_cards(qc, previous.name if previous else None):
            hdr[key] = (value, comment)
        summary["extensions"][ext] = {
            **summary["extensions"].get(ext, {}),
            "nframes": len(paths),
            "median": qc["median"],
            "low_count_fraction": qc["low_count_fraction"],
            "qc": qc,
        }
        # Held until the write, in FITS byte order (swapped in place, no copy) so astropy
        # makes no byte-swapped copies of its own while writing.
        images[ext] = fits.ImageHDU(fits_order(data, np.float64), header=hdr, name=ext)
        images[f"{ext}_UNC"] = fits.ImageHDU(fits_order(unc, np.float32), name=f"{ext}_UNC")
        images[f"{ext}_CNT"] = fits.ImageHDU(fits_order(result.cnt, np.int32), name=f"{ext}_CNT")
        # Release this CCD's working arrays before the next CCD is stacked.
        del result, data, unc, flat
    stacked = [e for e in CCD_EXTS if e in counts]
    if not stacked:
        raise InputError(
            job.frames[0] if job.frames else job.output,
            f"none of the extensions {wanted} is present in the inputs",
        )
    for ext in stacked:
        images[ext].header["INFOBITS"] = infobits
        images[f"{ext}_UNC"].header["BUNIT"] = images[ext].header["BUNIT"]
    with fits.open(job.frames[0], lazy_load_hdus=True) as hdul:
        first = hdul[0].header.copy()
    header = primary_header(job, first, used_rows, len(job.frames), infobits)
    if previous is not None:
        header["QCPREV"] = (previous.name, "previous master of this type (QC* keywords)")
    hdus = [fits.PrimaryHDU(header=header)]
    hdus += [images[e] for e in stacked]
    for ext in stacked:
        hdus += [images[f"{ext}_UNC"], images[f"{ext}_CNT"]]
    hdus += extras
    hdus.append(inputs_table(job.rows, notes))
    write_fits(fits.HDUList(hdus), job.output)
    summary.update(nframes=len(job.frames), infobits=infobits)
    log.info("wrote %s: %d frame(s), INFOBITS %d", job.output, len(job.frames), infobits)
    return summary
