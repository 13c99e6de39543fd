"""Quality assessment of masters: QC statistics, the previous-night comparison, checks.

Two moments:

* **When a master is written** (:func:`kpfmasters.science.master.build_master`), each CCD extension
  gets its statistics as ``QC*`` header keywords (:func:`ccd_statistics`, :func:`qc_cards`),
  so the numbers travel with the file and the file is never touched afterwards:

  ``QCMEDIAN``  median of the image (finite pixels; the flat: its normalised pixels, UNC > 0)
  ``QCNOISE``   robust noise of the same pixels, 1.4826 * median absolute deviation
  ``QCNPIX``    number of pixels in those two statistics
  ``QCLOWCNT``  fraction of pixels with CNT below the master's ``flag_min_count``
  ``QCREJFRC``  fraction of rejected samples, 1 - sum(CNT) / (NFRAMES * npix). The 2D inputs
                have no NaN, so every missing sample is one the clip rejected; a NaN input
                sample (none in practice) would count as rejected too.
  ``QCOSVn``    overscan level of amplifier n (electrons): mean of the inputs' ``OSCANVn``
  ``QCRNn``     read noise of amplifier n (electrons): median of the inputs' ``OSCANNn``
  ``QCPREV``    file name of the previous master of the same type (also in PRIMARY): the
                nearest earlier night under the same masters root holding one
  ``QCPMED``    that master's median of the same extension (its ``QCMEDIAN``)
  ``QCDMED``    QCMEDIAN - QCPMED

  The previous master is looked up on disk when the master is written. In a run over
  several nights an earlier night of the same run may not be written yet; QCPREV always
  names the file that was compared.

* **After the night** (rule ``night_qa``), :func:`master_record` reads those keywords back
  with the provenance of each master, and :func:`check_record` turns them into warnings with
  the thresholds of the ``qa`` configuration section. Warnings never stop the night.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters import __version__

log = logging.getLogger(__name__)

QC_EXTS = ("GREEN_CCD", "RED_CCD", "CA_HK")
MAD_TO_SIGMA = 1.4826
KIND_RE = re.compile(r"^kpf_(?P<date>\d{8})_master_(?P<kind>(bias|dark|flat|arclamp_.+))\.fits$")
NIGHT_DIR_RE = re.compile(r"^\d{8}$")
MAX_AMPS = 4
# Defaults of the ``qa`` configuration section (config.yaml documents each).
DEFAULT_QA = {
    "max_median_change": {"bias": 5.0, "dark": 0.05, "flat": 0.02, "arclamp": None},
    "max_previous_age_days": 30,
    "max_rejected_fraction": 0.15,
    "warn_low_count": True,
    "max_read_noise": 10.0,
    "preview_max_pixels": 512,
}


def qa_settings(qa: dict | None) -> dict:
    """The ``qa`` section with defaults filled in (a partial section is allowed)."""
    out = {**DEFAULT_QA, **(qa or {})}
    out["max_median_change"] = {
        **DEFAULT_QA["max_median_change"],
        **((qa or {}).get("max_median_change") or {}),
    }
    return out


def master_kind(path: str | Path) -> str | None:
    """``bias``, ``dark``, ``flat`` or ``arclamp_<tag>`` from a master's file name."""
    match = KIND_RE.match(Path(path).name)
    return match.group("kind") if match else None


def master_type(kind: str) -> str:
    return kind.split("_", 1)[0]


# -- statistics ----------------------------------------------------------------------------
def stats_pixels(mtype: str, data: np.ndarray, unc: np.ndarray | None) -> np.ndarray:
    """Boolean mask of the pixels the median and noise are taken over.

    Finite pixels; for the flat only its normalised pixels (UNC > 0): elsewhere the flat is
    1.0 by definition (off the traces, below the low-light limit) and would hide the traces.
    """
    good = np.isfinite(data)
    if mtype == "flat" and unc is not None:
        good &= unc > 0
    return good


def robust_median_noise(values: np.ndarray) -> tuple[float, float]:
    """(median, 1.4826 * MAD) of a 1-D float array (NaN, NaN when empty). Works in place."""
    if values.size == 0:
        return math.nan, math.nan
    values = np.asarray(values, dtype=np.float64)
    med = float(np.median(values, overwrite_input=True))
    np.subtract(values, med, out=values)
    np.abs(values, out=values)
    return med, float(MAD_TO_SIGMA * np.median(values, overwrite_input=True))


def overscan_summary(headers: list[fits.Header]) -> tuple[list[float], list[float]]:
    """Per amplifier: mean of the inputs' OSCANVn and median of their OSCANNn (electrons).

    Amplifier n is reported while every input header has the keyword; 2D files written before
    OSCANN existed give no read noise.
    """
    levels, noises = [], []
    if not headers:
        return levels, noises
    for n in range(1, MAX_AMPS + 1):
        vals = [h.get(f"OSCANV{n}") for h in headers]
        if any(v is None for v in vals):
            break
        levels.append(float(np.mean(vals)))
    for n in range(1, len(levels) + 1):
        vals = [h.get(f"OSCANN{n}") for h in headers]
        if any(v is None for v in vals):
            break
        noises.append(float(np.median(vals)))
    return levels, noises


def read_frame_headers(paths: list[str], ext: str) -> list[fits.Header]:
    """``ext``'s header of each 2D input (only headers are read)."""
    out = []
    for path in paths:
        with fits.open(path, lazy_load_hdus=True) as hdul:
            out.append(hdul[ext].header.copy())
    return out


def ccd_statistics(
    mtype: str,
    data: np.ndarray,
    unc: np.ndarray | None,
    cnt: np.ndarray,
    nframes: int,
    flag_min_count: int,
    frame_headers: list[fits.Header] | None = None,
    previous_median: float | None = None,
) -> dict:
    """QC statistics of one CCD of a master (see the module docstring for each)."""
    good = stats_pixels(mtype, data, unc)
    median, noise = robust_median_noise(np.asarray(data)[good])
    npix = cnt.size
    levels, noises = overscan_summary(frame_headers or [])
    change = None
    if previous_median is not None and math.isfinite(previous_median) and math.isfinite(median):
        change = median - previous_median
    return {
        "median": median,
        "noise": noise,
        "npix_stats": int(np.count_nonzero(good)),
        "low_count_fraction": float(np.count_nonzero(cnt < flag_min_count) / npix),
        "rejected_fraction": float(1.0 - np.sum(cnt, dtype=np.int64) / (nframes * npix)),
        "overscan_level": levels,
        "read_noise": noises,
        "previous_median": previous_median,
        "median_change": change,
    }


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def qc_cards(stats: dict, previous: str | None = None) -> list[tuple[str, object, str]]:
    """Header cards (keyword, value, comment) of :func:`ccd_statistics`; non-finite values
    are left out (FITS headers cannot hold NaN)."""
    cards = []

    def add(key, value, comment):
        if _finite(value):
            cards.append((key, value, comment))

    add("QCMEDIAN", stats["median"], "QC median of the image")
    add("QCNOISE", stats["noise"], "QC robust noise, 1.4826*MAD")
    cards.append(("QCNPIX", stats["npix_stats"], "QC pixels in QCMEDIAN and QCNOISE"))
    add("QCLOWCNT", stats["low_count_fraction"], "QC fraction of pixels with low CNT")
    add("QCREJFRC", stats["rejected_fraction"], "QC 1-sum(CNT)/(NFRAMES*npix)")
    for n, level in enumerate(stats["overscan_level"], start=1):
        add(f"QCOSV{n}", level, f"QC mean overscan level AMP{n} [e-]")
    for n, noise in enumerate(stats["read_noise"], start=1):
        add(f"QCRN{n}", noise, f"QC median read noise AMP{n} [e-]")
    if previous:
        cards.append(("QCPREV", previous, "QC previous master compared"))
        add("QCPMED", stats["previous_median"], "QC median of the previous master")
        add("QCDMED", stats["median_change"], "QC QCMEDIAN - QCPMED")
    return cards


# -- the previous master -------------------------------------------------------------------
def earlier_masters(output: str | Path, date: str) -> list[Path]:
    """Masters of the same kind as ``output`` on earlier nights, nearest first.

    ``output`` is ``<masters_root>/<date>/kpf_<date>_master_<kind>.fits``; anything else (a
    file outside a night directory) has no previous master.
    """
    output = Path(output)
    kind = master_kind(output)
    if kind is None or output.parent.name != date:
        return []
    root = output.parent.parent
    try:
        nights = sorted(
            (d.name for d in root.iterdir() if NIGHT_DIR_RE.match(d.name) and d.name < date),
            reverse=True,
        )
    except OSError:
        return []
    found = []
    for night in nights:
        path = root / night / f"kpf_{night}_master_{kind}.fits"
        if path.is_file():
            found.append(path)
    return found


def master_medians(path: str | Path) -> dict[str, float]:
    """QCMEDIAN of each CCD extension of a master (computed when a file predates QC)."""
    out = {}
    with fits.open(path, memmap=True) as hdul:
        for ext in QC_EXTS:
            if ext not in hdul:
                continue
            value = hdul[ext].header.get("QCMEDIAN")
            if value is None:
                mtype = str(hdul[0].header.get("IMTYPE", "")).lower()
                data = np.asarray(hdul[ext].data, dtype=np.float64)
                unc = hdul[f"{ext}_UNC"].data if f"{ext}_UNC" in hdul else None
                value, _ = robust_median_noise(data[stats_pixels(mtype, data, unc)])
            out[ext] = float(value)
    return out


def previous_master(output: str | Path, date: str) -> tuple[Path | None, dict[str, float]]:
    """The nearest earlier master of the same kind that can be read, and its medians.

    An unreadable candidate is logged and skipped. ``(None, {})`` when there is none.
    """
    for path in earlier_masters(output, date):
        try:
            return path, master_medians(path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("previous master %s cannot be read (%s); trying an earlier one", path, exc)
    return None, {}


# -- after the night: records, checks, JSON ------------------------------------------------
def _night_date(date: str) -> dt.date:
    return dt.datetime.strptime(date, "%Y%m%d").date()


def _clean(value):
    """JSON-safe: NaN/Inf -> None, NumPy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _ccd_from_header(hdr: fits.Header) -> dict:
    levels = [hdr[f"QCOSV{n}"] for n in range(1, MAX_AMPS + 1) if f"QCOSV{n}" in hdr]
    noises = [hdr[f"QCRN{n}"] for n in range(1, MAX_AMPS + 1) if f"QCRN{n}" in hdr]
    return {
        "median": hdr.get("QCMEDIAN"),
        "noise": hdr.get("QCNOISE"),
        "npix_stats": hdr.get("QCNPIX"),
        "low_count_fraction": hdr.get("QCLOWCNT"),
        "rejected_fraction": hdr.get("QCREJFRC"),
        "overscan_level": levels,
        "read_noise": noises,
        "previous": hdr.get("QCPREV"),
        "previous_median": hdr.get("QCPMED"),
        "median_change": hdr.get("QCDMED"),
    }


def master_record(path: str | Path, settings: dict | None = None) -> dict:
    """Statistics and provenance of one master, from its headers and INPUTS table.

    ``settings``: the master type's configuration section (recorded as its configuration).
    A master written before QC keywords existed gets its image statistics computed here
    (``qc_source`` says which); overscan and previous-night values are then absent.
    """
    path = Path(path)
    match = KIND_RE.match(path.name)
    kind = match.group("kind") if match else path.stem
    with fits.open(path, memmap=True) as hdul:
        prim = hdul[0].header
        ccds = {}
        source = "header"
        for ext in QC_EXTS:
            if ext not in hdul:
                continue
            hdr = hdul[ext].header
            if "QCMEDIAN" in hdr or "QCNPIX" in hdr:
                stats = _ccd_from_header(hdr)
            else:
                source = "computed at QA time (no QC keywords in the file)"
                cnt = hdul[f"{ext}_CNT"].data
                unc = hdul[f"{ext}_UNC"].data
                stats = ccd_statistics(
                    master_type(kind),
                    np.asarray(hdul[ext].data, dtype=np.float64),
                    unc,
                    cnt,
                    int(hdr.get("NFRAMES", prim.get("NFRAMES", 1))),
                    int((settings or {}).get("flag_min_count", 10)),
                )
                stats["previous"] = None
            stats.update(
                bunit=hdr.get("BUNIT", ""),
                nframes=hdr.get("NFRAMES"),
                shape=list(hdul[ext].data.shape) if hdul[ext].data is not None else None,
            )
            ccds[ext] = stats
        inputs = []
        if "INPUTS" in hdul:
            table = hdul["INPUTS"].data
            names = table.columns.names
            for row in table:
                inputs.append(
                    {
                        "filename": str(row["FILENAME"]),
                        "l0file": str(row["L0FILE"]),
                        "mjd_obs": float(row["MJD_OBS"]),
                        "exptime": float(row["EXPTIME"]),
                        "used": bool(row["USED"]),
                        "reason": str(row["REASON"]) if "REASON" in names else "",
                    }
                )
        predecessors = {
            name: prim[key]
            for name, key in (("bias", "INPBIAS"), ("dark", "INPDARK"), ("flat", "INPFLAT"))
            if key in prim
        }
        record = {
            "master": kind,
            "type": master_type(kind),
            "object": prim.get("OBJECT") if master_type(kind) == "arclamp" else None,
            "file": path.name,
            "path": str(path),
            "date": match.group("date") if match else None,
            "imtype": prim.get("IMTYPE"),
            "nframes": prim.get("NFRAMES"),
            "minmjd": prim.get("MINMJD"),
            "maxmjd": prim.get("MAXMJD"),
            "infobits": prim.get("INFOBITS"),
            "nsigma": prim.get("NSIGMA"),
            "predecessors": predecessors,
            "previous": prim.get("QCPREV"),
            "software_version": prim.get("SOFTVER"),
            "cfghash": prim.get("CFGHASH"),
            "created": prim.get("DATE"),
            "configuration": settings,
            "qc_source": source,
            "inputs": inputs,
            "ccds": ccds,
        }
    return _clean(record)


def check_record(record: dict, qa: dict | None, flag_fraction: float = 0.01) -> list[str]:
    """Warnings for one master record (:func:`master_record`) under the ``qa`` thresholds."""
    qa = qa_settings(qa)
    warnings = []
    label = f"master {record['master']} of {record['date']}"
    limit = qa["max_median_change"].get(record["type"])
    max_age = qa["max_previous_age_days"]
    previous = record.get("previous")
    age = None
    if previous and record.get("date"):
        match = KIND_RE.match(previous)
        if match:
            age = (_night_date(record["date"]) - _night_date(match.group("date"))).days
    for ext, stats in record["ccds"].items():
        unit = stats.get("bunit") or ""
        change = stats.get("median_change")
        if limit is not None and change is not None and age is not None:
            if (max_age is None or age <= max_age) and abs(change) > limit:
                warnings.append(
                    f"{label} {ext}: median {stats['median']:.4g} {unit} moved by "
                    f"{change:+.4g} {unit} from {previous} ({age} day(s) earlier), more than "
                    f"qa.max_median_change.{record['type']} = {limit:g}"
                )
        rej = stats.get("rejected_fraction")
        if rej is not None and rej > qa["max_rejected_fraction"]:
            warnings.append(
                f"{label} {ext}: {100 * rej:.1f}% of the stacked samples were rejected, more "
                f"than qa.max_rejected_fraction = {100 * qa['max_rejected_fraction']:g}%"
            )
        low = stats.get("low_count_fraction")
        if qa["warn_low_count"] and low is not None and low > flag_fraction:
            warnings.append(
                f"{label} {ext}: {100 * low:.1f}% of the pixels have a low CNT, more than "
                f"flag_fraction = {100 * flag_fraction:g}% (INFOBITS set)"
            )
        rn_limit = qa["max_read_noise"]
        for n, rn in enumerate(stats.get("read_noise") or [], start=1):
            if rn_limit is not None and rn is not None and rn > rn_limit:
                warnings.append(
                    f"{label} {ext}: read noise of AMP{n} {rn:.2f} e- is above "
                    f"qa.max_read_noise = {rn_limit:g} e-"
                )
    return warnings


def assessed_record(
    path: str | Path, qa: dict | None, flag_fraction: float, settings: dict | None = None
) -> dict:
    """:func:`master_record` with its ``warnings`` (:func:`check_record`).

    QA never fails the night: a master whose record cannot be made (e.g. an unreadable file)
    gets a record with an ``error`` and a warning saying so.
    """
    path = Path(path)
    try:
        record = master_record(path, settings)
        record["warnings"] = check_record(record, qa, flag_fraction)
        return record
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        log.error("QA of %s failed (%s)", path, problem)
        kind = master_kind(path) or path.stem
        return {
            "master": kind,
            "type": master_type(kind),
            "file": path.name,
            "path": str(path),
            "date": None,
            "error": problem,
            "predecessors": {},
            "inputs": [],
            "ccds": {},
            "warnings": [f"QA of {path.name} failed ({problem}): no statistics"],
        }


def night_report(
    date: str,
    masters: list[str | Path],
    qa: dict | None,
    flag_fraction: float,
    settings: dict | None = None,
    previews: dict[str, dict] | None = None,
    rejects: list[dict] | None = None,
) -> dict:
    """The night's QA document (written as ``kpf_<date>_masters_qa.json``).

    ``settings``: configuration section of each master type; ``previews``: for each master
    kind, {CCD: {figure: path}}; ``rejects``: the frames L0 -> 2D refused
    (:func:`kpfmasters.plan.rejects.night_rejections`: name, problem, version, current).
    """
    qa = qa_settings(qa)
    records = []
    all_warnings = []
    for path in masters:
        kind = master_kind(path)
        record = assessed_record(
            path, qa, flag_fraction, (settings or {}).get(master_type(kind or ""))
        )
        record["previews"] = (previews or {}).get(record["master"], {})
        all_warnings += record["warnings"]
        records.append(record)
    return _clean(
        {
            "date": date,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__,
            "qa": qa,
            "flag_fraction": flag_fraction,
            "masters": records,
            "rejects": list(rejects or []),
            "warnings": all_warnings,
        }
    )
