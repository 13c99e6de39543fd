"""Assembling a master FITS file from its stacked 2D inputs.

The file's layout is described in docs/reference.md, 'The master files'.

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
from kpfmasters.core.instrument import CCD_BIT, CCD_EXTS
from kpfmasters.core.products import MASTERS, product
from kpfmasters.io.fits import write_fits
from kpfmasters.science.flat import load_order_mask, normalize_flat
from kpfmasters.science.qcstats import ccd_statistics, master_medians, qc_cards, read_frame_headers
from kpfmasters.science.stack import StackResult, stack_files

MASKED = ("GREEN_CCD", "RED_CCD")  # the CCDs an order mask describes (never CA_HK)
MJD_UNIX = 40587.0  # MJD of 1970-01-01T00:00:00 UTC

log = logging.getLogger(__name__)

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


@dataclass
class MasterJob:
    """Everything needed to make one master.

    Attributes
    ----------
    mtype : str
        Master type (``bias``, ``dark``, ``flat``, ``arclamp``).
    date : str
        The night, ``YYYYMMDD``.
    output : str
        Path of the master to write.
    frames : list of str
        The 2D files stacked, in stacking order.
    rows : list of dict
        The INPUTS table rows of every frame the selection picked (``USED`` false for those
        not stacked): ``FILENAME``, ``L0FILE``, ``MJD_OBS`` (days), ``EXPTIME`` (s),
        ``USED``, ``REASON``.
    settings : dict
        The master's section of the configuration (``nsigma``, ``flag_min_count``,
        ``extensions`` and, for the flat, ``smooth_sigma`` and ``low_light_limit``).
    stack : dict
        The ``stack`` section of the configuration (``band_rows``, ``memory_mb`` in MiB).
    flag_fraction : float
        Fraction of low-count pixels that sets a CCD's INFOBITS bit.
    obj : str or None
        The OBJECT value (arclamps).
    predecessors : dict of str to str
        Master type -> path of the predecessor master used.
    order_mask : str or None
        The order-mask FITS file (the flat).
    previous : str or None
        The previous master of the same kind (QCPREV), as declared by the plan.
    threads : int
        Threads for the stack.
    cfghash : str
        ``CFGHASH`` to write.
    """

    mtype: str
    date: str
    output: str
    frames: list[str]
    rows: list[dict]
    settings: dict
    stack: dict
    flag_fraction: float
    obj: str | None = None
    predecessors: dict[str, str] = field(default_factory=dict)
    order_mask: str | None = None
    previous: str | None = None
    threads: int = 1
    cfghash: str = ""


def read_verified(path: str | Path, extname: str) -> np.ndarray | None:
    """One image of a predecessor master, after checksum verification.

    The file is memory-mapped: the sums run over the extension's bytes where the page cache
    holds them, no other extension's data is touched, and only the image is copied.

    Parameters
    ----------
    path : str or Path
        The predecessor master.
    extname : str
        The extension (``GREEN_CCD``, ``RED_CCD``, ``CA_HK``).

    Returns
    -------
    ndarray, float64, shape (rows, cols), or None
        The image in its BUNIT; None when the file has no such extension.

    Raises
    ------
    InputError
        When the file is unreadable or the extension's CHECKSUM/DATASUM are missing or do
        not match its bytes.
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
    """For each wanted extension, the indices of the 2D frames that contain it.

    Parameters
    ----------
    paths : list of str
        The 2D files.
    wanted : list of str
        Extension names.

    Returns
    -------
    dict of str to list of int
        Extension -> indices into ``paths``, ascending.

    Raises
    ------
    InputError
        Naming a file that is not a readable 2D file.
    """
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
    """The per-frame calibration applied to each row band before stacking.

    dark: (x - bias) / EXPTIME; flat: (x - bias) / EXPTIME - dark;
    arclamp: ((x - bias) / EXPTIME - dark) / flat (docs/reference.md, 'Rules').

    Parameters
    ----------
    mtype : str
        Master type; a bias needs none.
    exptimes : list of float
        EXPTIME of each frame (s), in stacking order.
    calib : dict of str to ndarray
        ``bias`` (electrons), ``dark`` (e-/s) and ``flat`` (dimensionless) images, float64
        (rows, cols), as the type needs (DN and DN/s for CA_HK).

    Returns
    -------
    callable or None
        ``preprocess(i, rows, band)`` for :func:`kpfmasters.science.stack.stack_files`: it
        calibrates frame ``i``'s float64 band (rows in band, cols) in place and returns it;
        None for a bias.
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
    """An array as big-endian ``dtype`` (FITS byte order), swapped in place when possible.

    Parameters
    ----------
    array : ndarray
        The image; the caller must not use it afterwards: its bytes may have been swapped.
    dtype : dtype-like
        The element type wanted (e.g. float64, float32, int32).

    Returns
    -------
    ndarray
        The same values as big-endian ``dtype``: ``array`` itself, a view of it, or a copy.
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
    """A CCD's INFOBITS bit, set when too many pixels have a low CNT.

    Parameters
    ----------
    cnt : ndarray, int32, shape (rows, cols)
        Values kept per pixel by the clipped stack.
    min_count : int
        CNT below it counts as low.
    fraction : float
        The bit is set when more than this fraction of pixels is low.
    ext : str
        The extension (``GREEN_CCD`` bit 0, ``RED_CCD`` bit 1, ``CA_HK`` bit 2).

    Returns
    -------
    int
        ``1 << bit`` or 0.
    """
    low = np.count_nonzero(cnt < min_count) / cnt.size
    return (1 << CCD_BIT[ext]) if low > fraction else 0


def primary_header(
    job: MasterJob, first: fits.Header, used_rows: list[dict], nframes: int, infobits: int
) -> fits.Header:
    """The master's PRIMARY header (docs/reference.md, 'PRIMARY header').

    Parameters
    ----------
    job : MasterJob
        The master.
    first : astropy.io.fits.Header
        PRIMARY header of the first 2D frame, copied without its structural keywords.
    used_rows : list of dict
        INPUTS rows of the stacked frames (``MJD_OBS`` in days).
    nframes : int
        Frames stacked.
    infobits : int
        The combined INFOBITS.

    Returns
    -------
    astropy.io.fits.Header
        With IMTYPE, OBJECT (arclamps), NFRAMES, MINMJD, MAXMJD, INFOBITS, NSIGMA, the INP*
        keywords of the predecessors, SOFTVER, CFGHASH and DATE.
    """
    header = first.copy()
    for key in STRUCTURAL:
        header.remove(key, ignore_missing=True, remove_all=True)
    mjds = [r["MJD_OBS"] for r in used_rows]
    header["IMTYPE"] = product(job.mtype).imtype
    if job.obj is not None:
        header["OBJECT"] = job.obj
    header["NFRAMES"] = (nframes, "number of frames stacked")
    header["MINMJD"] = (min(mjds), "earliest MJD-OBS of the stacked frames")
    header["MAXMJD"] = (max(mjds), "latest MJD-OBS of the stacked frames")
    add_mid_time(header, min(mjds), max(mjds))
    header["INFOBITS"] = (infobits, "bit 0/1/2 GREEN/RED/CA_HK: >1% pixels low CNT")
    header["NSIGMA"] = (float(job.settings["nsigma"]), "clip k of the stack")
    for mtype, path in job.predecessors.items():
        header[MASTERS[mtype].input_key] = (Path(path).name, f"master {mtype} used")
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
    """The ``INPUTS`` table of a master (docs/reference.md, 'The `INPUTS` table').

    Parameters
    ----------
    rows : list of dict
        One row per frame the selection picked: ``FILENAME``, ``L0FILE``, ``MJD_OBS``
        (days), ``EXPTIME`` (s), ``USED`` and optionally ``REASON``.
    notes : list of str, optional
        Lines written as COMMENT cards of the table's header (an extension left out, and
        why).

    Returns
    -------
    astropy.io.fits.BinTableHDU
        Named ``INPUTS``; a missing MJD_OBS or EXPTIME is NaN.
    """

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


def previous_of(job: MasterJob) -> tuple[Path | None, dict[str, float]]:
    """The declared previous master (QCPREV) and its median per CCD extension.

    A previous master that cannot be read costs only the comparison: it is logged and the
    master is written without QCPREV.

    Parameters
    ----------
    job : MasterJob
        The master; ``job.previous`` is the declared previous master or None.

    Returns
    -------
    path : Path or None
        The previous master, None when there is none or it cannot be read.
    medians : dict of str to float
        Its QCMEDIAN per CCD extension (image units).
    """
    if not job.previous:
        return None, {}
    try:
        return Path(job.previous), master_medians(job.previous)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("previous master %s cannot be read (%s); not compared", job.previous, exc)
        return None, {}


@dataclass
class StackedCCD:
    """One CCD of a master, ready to be written.

    Attributes
    ----------
    image, unc, cnt : astropy.io.fits.ImageHDU
        The extension (float64) and its ``_UNC`` (float32) and ``_CNT`` (int32) HDUs, data
        already in FITS byte order.
    extras : list of astropy.io.fits.ImageHDU
        The post-stack images written after every UNC/CNT pair (the flat's ``_STACK`` and
        ``_LAMP``, float32).
    infobit : int
        Its INFOBITS bit (0 when not set).
    summary : dict
        What the log and tests see of it.
    """

    image: fits.ImageHDU
    unc: fits.ImageHDU
    cnt: fits.ImageHDU
    extras: list[fits.ImageHDU]
    infobit: int
    summary: dict


def check_frames(job: MasterJob) -> list[dict]:
    """The INPUTS rows marked USED, checked against the 2D frames given (same order).

    Parameters
    ----------
    job : MasterJob
        The master.

    Returns
    -------
    list of dict
        The rows of ``job.rows`` with ``USED`` true, in stacking order.

    Raises
    ------
    ValueError
        When their number or file names differ from ``job.frames``.
    """
    used_rows = [r for r in job.rows if r["USED"]]
    if len(used_rows) != len(job.frames):
        raise ValueError(
            f"{len(job.frames)} 2D frames given but {len(used_rows)} INPUTS rows marked USED"
        )
    for row, path in zip(used_rows, job.frames, strict=True):
        if Path(path).name != row["FILENAME"]:
            raise ValueError(f"2D frame {path} does not match INPUTS row {row['FILENAME']}")
    return used_rows


def lacking_predecessor(job: MasterJob, ext: str) -> str:
    """'' when every predecessor master of ``job`` has extension ``ext``; else why the
    extension is left out of the master (an older predecessor without ``CA_HK`` costs only
    that extension). Only the headers are read."""
    for mtype in product(job.mtype).predecessors:
        path = job.predecessors[mtype]
        try:
            with fits.open(path, lazy_load_hdus=True) as hdul:
                names = {hdu.name for hdu in hdul}
        except (OSError, ValueError) as exc:
            raise InputError(path, f"is not a readable master ({exc})") from exc
        if ext not in names:
            return (
                f"{ext} left out: the master {mtype} {Path(path).name} has no {ext} "
                f"extension to calibrate the {job.mtype} frames with"
            )
    return ""


def calibration_images(job: MasterJob, ext: str) -> dict[str, np.ndarray]:
    """One extension of each predecessor master the type is calibrated with, verified.

    Parameters
    ----------
    job : MasterJob
        The master; ``job.predecessors`` gives the files.
    ext : str
        The extension.

    Returns
    -------
    dict of str to ndarray
        ``bias`` / ``dark`` / ``flat`` -> float64 image (rows, cols) in its BUNIT.

    Raises
    ------
    InputError
        When a predecessor lacks the extension or fails verification (:func:`read_verified`).
    """
    calib = {}
    for mtype in product(job.mtype).predecessors:
        image = read_verified(job.predecessors[mtype], ext)
        if image is None:
            raise InputError(
                job.predecessors[mtype],
                f"has no extension {ext}, needed to calibrate the {job.mtype} frames",
            )
        calib[mtype] = image
    return calib


def stack_ccd(job: MasterJob, ext: str, paths: list[str], exptimes: list[float]) -> StackResult:
    """Calibrate (per the product type) and clip-stack one extension of the frames.

    Parameters
    ----------
    job : MasterJob
        The master (settings, stack budget, threads, predecessors).
    ext : str
        The extension.
    paths : list of str
        The 2D frames that have it, in stacking order.
    exptimes : list of float
        Their EXPTIME (s).

    Returns
    -------
    StackResult
        AVG (float64), UNC (float32), CNT (int32), each (rows, cols), in the units of the
        calibrated frames: electrons for a bias, e-/s for the others (DN and DN/s for
        CA_HK); the flat is normalised afterwards.

    Raises
    ------
    InputError
        Naming a frame that cannot be read, or a predecessor that lacks the extension, fails
        verification or has another shape.
    """
    calib = calibration_images(job, ext)
    pre = make_preprocess(job.mtype, exptimes, calib)
    nsigma = float(job.settings["nsigma"])
    log.info("%s: stacking %d frame(s) of %s, k = %.2f", job.mtype, len(paths), ext, nsigma)
    result = stack_files(
        paths,
        ext,
        nsigma,
        preprocess=pre,
        band_rows=int(job.stack["band_rows"]),
        memory_mb=int(job.stack["memory_mb"]),
        threads=job.threads,
    )
    for name, image in calib.items():
        if image.shape != result.avg.shape:
            raise InputError(
                job.predecessors[name],
                f"extension {ext} shape {image.shape} differs from the frames' {result.avg.shape}",
            )
    return result


def normalize_flat_step(job: MasterJob, ext: str, result: StackResult):
    """Post-stack step of the flat: per-orderlet normalisation with the order mask.

    Parameters
    ----------
    job : MasterJob
        The flat (``order_mask``, ``smooth_sigma``, ``low_light_limit``).
    ext : str
        The extension.
    result : StackResult
        Its stack (e-/s; DN/s for CA_HK); ``result.avg`` is released.

    Returns
    -------
    flat : ndarray, float64, shape (rows, cols)
        The normalised flat (dimensionless).
    unc : ndarray, float32, shape (rows, cols)
        Its uncertainty.
    extras : list of astropy.io.fits.ImageHDU
        The ``_STACK`` and ``_LAMP`` images (float32; GREEN and RED only).
    info : dict
        ``norms``: orderlet -> n_v, for the summary.

    Raises
    ------
    InputError
        When the order mask cannot be used (:func:`kpfmasters.science.flat.load_order_mask`).
    """
    data = result.avg
    masked = job.order_mask and ext in MASKED  # only GREEN/RED of the mask are read
    mask = load_order_mask(job.order_mask, ext, data.shape) if masked else None
    flat = normalize_flat(
        data,
        result.unc,
        mask,
        smooth_sigma=float(job.settings["smooth_sigma"]),
        low_light_limit=float(job.settings["low_light_limit"]),
    )
    for problem in flat.problems:
        log.warning("%s %s: %s", job.output, ext, problem)
    extras = []
    if ext != "CA_HK":
        extras.append(fits.ImageHDU(data.astype(">f4"), name=f"{ext}_STACK"))
        extras.append(fits.ImageHDU(flat.lamp.astype(">f4"), name=f"{ext}_LAMP"))
    result.avg = None  # kept as <EXT>_STACK (float32) above
    return flat.flat, flat.unc, extras, {"norms": flat.norms}


#: The post-stack steps a product type may name (:attr:`ProductType.post_stack`).
POST_STACK = {"normalize_flat": normalize_flat_step}


def ccd_header(
    job: MasterJob,
    ext: str,
    paths: list[str],
    mjds: list[float],
    data: np.ndarray,
    unc: np.ndarray,
    cnt: np.ndarray,
    previous: Path | None,
    previous_median: float | None,
) -> tuple[fits.Header, dict]:
    """Header of one CCD extension, and its QC statistics.

    Parameters
    ----------
    job : MasterJob
        The master.
    ext : str
        The extension.
    paths : list of str
        The 2D frames stacked for it.
    mjds : list of float
        Their MJD-OBS (days).
    data, unc : ndarray, shape (rows, cols)
        The extension's image and uncertainty (master units).
    cnt : ndarray, int32, shape (rows, cols)
        Values kept per pixel.
    previous : Path or None
        The previous master, for QCPREV.
    previous_median : float or None
        Its median of this extension (master units).

    Returns
    -------
    header : astropy.io.fits.Header
        BUNIT, NFRAMES, MINMJD, MAXMJD and the QC* keywords.
    qc : dict
        The statistics (:func:`kpfmasters.science.qcstats.ccd_statistics`).
    """
    bunit_ccd, bunit_hk = product(job.mtype).units
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
        cnt,
        len(paths),
        int(job.settings["flag_min_count"]),
        read_frame_headers(paths, ext),
        previous_median,
    )
    for key, value, comment in qc_cards(qc, previous.name if previous else None):
        hdr[key] = (value, comment)
    return hdr, qc


def make_ccd(
    job: MasterJob,
    ext: str,
    members: list[int],
    used_rows: list[dict],
    previous: Path | None,
    previous_medians: dict[str, float],
) -> StackedCCD:
    """Stack, post-process and describe one CCD of the master.

    Parameters
    ----------
    job : MasterJob
        The master.
    ext : str
        The extension.
    members : list of int
        Indices into ``job.frames`` of the frames that have it.
    used_rows : list of dict
        INPUTS rows of ``job.frames`` (``EXPTIME`` in s, ``MJD_OBS`` in days).
    previous : Path or None
        The previous master, for QCPREV.
    previous_medians : dict of str to float
        Its median per extension (master units).

    Returns
    -------
    StackedCCD
        The HDUs, the INFOBITS bit and the summary.

    Raises
    ------
    InputError
        From the stack, the predecessors or the order mask, naming the file.
    """
    paths = [job.frames[i] for i in members]
    exptimes = [float(used_rows[i]["EXPTIME"]) for i in members]
    result = stack_ccd(job, ext, paths, exptimes)
    data, unc, extras, info = result.avg, result.unc, [], {}
    step = product(job.mtype).post_stack
    if step:
        data, unc, extras, info = POST_STACK[step](job, ext, result)
    bit = infobits_for(result.cnt, int(job.settings["flag_min_count"]), job.flag_fraction, ext)
    mjds = [used_rows[i]["MJD_OBS"] for i in members]
    hdr, qc = ccd_header(
        job, ext, paths, mjds, data, unc, result.cnt, previous, previous_medians.get(ext)
    )
    summary = {
        **info,
        "nframes": len(paths),
        "median": qc["median"],
        "low_count_fraction": qc["low_count_fraction"],
        "qc": qc,
    }
    # Held until the write, in FITS byte order (swapped in place, no copy) so astropy makes
    # no byte-swapped copies of its own while writing.
    return StackedCCD(
        image=fits.ImageHDU(fits_order(data, np.float64), header=hdr, name=ext),
        unc=fits.ImageHDU(fits_order(unc, np.float32), name=f"{ext}_UNC"),
        cnt=fits.ImageHDU(fits_order(result.cnt, np.int32), name=f"{ext}_CNT"),
        extras=extras,
        infobit=bit,
        summary=summary,
    )


def assemble_hdus(
    job: MasterJob,
    ccds: dict[str, StackedCCD],
    used_rows: list[dict],
    previous: Path | None,
    notes: list[str] | None = None,
) -> fits.HDUList:
    """The master's HDUs in file order (docs/reference.md, 'HDUs, in file order').

    PRIMARY, the CCDs, their UNC/CNT pairs, the post-stack images, INPUTS. Sets the
    combined INFOBITS in every CCD extension, and BUNIT in every UNC.

    Parameters
    ----------
    job : MasterJob
        The master.
    ccds : dict of str to StackedCCD
        The CCDs, in file order.
    used_rows : list of dict
        INPUTS rows of the stacked frames.
    previous : Path or None
        The previous master, for QCPREV in PRIMARY.
    notes : list of str, optional
        COMMENT cards of INPUTS (:func:`inputs_table`).

    Returns
    -------
    astropy.io.fits.HDUList
        The file's HDUs.
    """
    infobits = 0
    for ccd in ccds.values():
        infobits |= ccd.infobit
    for ccd in ccds.values():
        ccd.image.header["INFOBITS"] = infobits
        ccd.unc.header["BUNIT"] = ccd.image.header["BUNIT"]
    with fits.open(job.frames[0], lazy_load_hdus=True) as hdul:
        first = hdul[0].header.copy()
    header = primary_header(job, first, used_rows, len(job.frames), infobits)
    if previous is not None:
        header["QCPREV"] = (previous.name, "previous master of this type (QC* keywords)")
    hdus = [fits.PrimaryHDU(header=header)]
    hdus += [ccd.image for ccd in ccds.values()]
    for ccd in ccds.values():
        hdus += [ccd.unc, ccd.cnt]
    for ccd in ccds.values():
        hdus += ccd.extras
    hdus.append(inputs_table(job.rows, notes))
    return fits.HDUList(hdus)


def build_master(job: MasterJob) -> dict:
    """Make the master described by ``job`` and write it atomically.

    Steps: check the frames against the INPUTS rows; for each wanted CCD extension present
    in the frames, stack it (:func:`make_ccd`); assemble the HDUs (:func:`assemble_hdus`);
    write.

    Parameters
    ----------
    job : MasterJob
        The master.

    Returns
    -------
    dict
        A summary for logs and tests: ``output``, ``nframes``, ``infobits`` and, per
        extension (``extensions``), ``nframes``, ``median``, ``low_count_fraction``, ``qc``
        (and the flat's ``norms``).

    Raises
    ------
    InputError
        Naming the file: an unreadable frame or predecessor, an unusable order mask, or no
        wanted extension present in the frames.
    """
    used_rows = check_frames(job)
    wanted = list(job.settings["extensions"])
    present = frame_extensions(job.frames, wanted)
    previous, previous_medians = previous_of(job)
    ccds: dict[str, StackedCCD] = {}
    notes: list[str] = []
    for ext in CCD_EXTS:
        if ext not in wanted:
            continue
        if not present[ext]:
            log.warning("%s: no input frame has extension %s; it is left out", job.output, ext)
            continue
        note = lacking_predecessor(job, ext)
        if note:
            log.warning("%s: %s", job.output, note)
            notes.append(note)
            continue
        ccds[ext] = make_ccd(job, ext, present[ext], used_rows, previous, previous_medians)
    if not ccds:
        raise InputError(
            job.frames[0] if job.frames else job.output,
            f"none of the extensions {wanted} is present in the inputs",
        )
    hdul = assemble_hdus(job, ccds, used_rows, previous, notes)
    write_fits(hdul, job.output)
    infobits = hdul[0].header["INFOBITS"]
    summary = {
        "output": job.output,
        "extensions": {ext: ccd.summary for ext, ccd in ccds.items()},
        "nframes": len(job.frames),
        "infobits": infobits,
    }
    log.info("wrote %s: %d frame(s), INFOBITS %d", job.output, len(job.frames), infobits)
    return summary
