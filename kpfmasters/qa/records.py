"""Quality assessment of masters: QC statistics, the previous-night comparison, checks.

Two moments:

* **When a master is written**, each CCD extension gets its statistics as ``QC*`` header
  keywords (:mod:`kpfmasters.science.qcstats`), so the numbers travel with the file and the
  file is never touched afterwards.

* **After the night** (rule ``night_qa``), :func:`master_record` reads those keywords back
  with the provenance of each master, and :func:`check_record` turns them into warnings with
  the thresholds of the ``qa`` configuration section. Warnings never stop the night.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters import __version__
from kpfmasters.core.instrument import CCD_EXTS
from kpfmasters.core.naming import MASTER_NAME_RE, master_kind
from kpfmasters.science.qcstats import MAX_AMPS, ccd_statistics

log = logging.getLogger(__name__)


def master_type(kind: str) -> str:
    """The master type of a kind.

    Parameters
    ----------
    kind : str
        ``bias``, ``dark``, ``flat`` or ``arclamp_<tag>``
        (:func:`kpfmasters.core.naming.master_kind`).

    Returns
    -------
    str
        The part before the first ``_``: ``bias``, ``dark``, ``flat``, ``arclamp``.
    """
    return kind.split("_", 1)[0]


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

    A master written before QC keywords existed gets its image statistics computed here
    (``qc_source`` says which); overscan and previous-night values are then absent.

    Parameters
    ----------
    path : str or Path
        The master file.
    settings : dict, optional
        The master type's configuration section (recorded as its configuration;
        ``flag_min_count`` is used when statistics are computed, default 10).

    Returns
    -------
    dict
        JSON-safe (NaN -> None): the master's kind, type, object, file, date, PRIMARY
        provenance (IMTYPE, NFRAMES, MINMJD and MAXMJD in days, INFOBITS, NSIGMA,
        predecessors, previous, SOFTVER, CFGHASH, DATE), ``configuration``, ``qc_source``,
        the ``inputs`` rows (MJD-OBS in days, EXPTIME in s) and, per CCD extension
        (``ccds``), the QC statistics in its BUNIT with ``bunit``, ``nframes`` and ``shape``.
        An unreadable file raises (astropy's error); :func:`assessed_record` turns that into
        a record with an error.
    """
    path = Path(path)
    match = MASTER_NAME_RE.match(path.name)
    kind = master_kind(path) or path.stem
    with fits.open(path, memmap=True) as hdul:
        prim = hdul[0].header
        ccds = {}
        source = "header"
        for ext in CCD_EXTS:
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


def by_construction(record: dict) -> bool:
    """Whether a master's low-CNT flag follows from its frame count alone.

    Made of fewer frames than its ``flag_min_count``, every pixel's count is below it (e.g.
    5 darks with ``flag_min_count`` 10): such a flag is information, not a warning.

    Parameters
    ----------
    record : dict
        As returned by :func:`master_record` (``nframes``, ``configuration``).

    Returns
    -------
    bool
        True when ``nframes < configuration["flag_min_count"]``.
    """
    settings = record.get("configuration") or {}
    nframes, floor = record.get("nframes"), settings.get("flag_min_count")
    return isinstance(nframes, int) and isinstance(floor, int) and nframes < floor


def check_record(
    record: dict, qa: dict, flag_fraction: float, notes: list | None = None
) -> list[str]:
    """Warnings for one master record under the ``qa`` thresholds.

    A low-CNT flag that follows by construction (:func:`by_construction`) is appended to
    ``notes`` (when given) instead of the warnings.

    Parameters
    ----------
    record : dict
        As returned by :func:`master_record`.
    qa : dict
        The whole ``qa`` configuration section (``max_median_change`` per type in the
        image's units, ``max_previous_age_days``, ``max_rejected_fraction``,
        ``warn_low_count``, ``max_read_noise`` in electrons).
    flag_fraction : float
        The configuration's fraction of low-count pixels that sets an INFOBITS bit.
    notes : list, optional
        Where information lines go (flags that follow from the frame count).

    Returns
    -------
    list of str
        One line per warning, naming the master, the extension and the threshold.
    """
    warnings = []
    label = f"master {record['master']} of {record['date']}"
    limit = qa["max_median_change"].get(record["type"])
    max_age = qa["max_previous_age_days"]
    previous = record.get("previous")
    age = None
    if previous and record.get("date"):
        match = MASTER_NAME_RE.match(previous)
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
            text = (
                f"{label} {ext}: {100 * low:.1f}% of the pixels have a low CNT, more than "
                f"flag_fraction = {100 * flag_fraction:g}% (INFOBITS set)"
            )
            if by_construction(record):
                if notes is not None:
                    floor = record["configuration"]["flag_min_count"]
                    notes.append(
                        f"{text}: by construction, {record['nframes']} frame(s) < "
                        f"flag_min_count {floor}"
                    )
            else:
                warnings.append(text)
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
    """A master's record (:func:`master_record`) with its ``warnings`` (:func:`check_record`).

    QA never fails the night: a master whose record cannot be made (e.g. an unreadable file)
    gets a record with an ``error`` and a warning saying so.

    Parameters
    ----------
    path : str or Path
        The master file.
    qa : dict
        The ``qa`` configuration section.
    flag_fraction : float
        Fraction of low-count pixels that sets an INFOBITS bit.
    settings : dict, optional
        The master type's configuration section.

    Returns
    -------
    dict
        The record with ``warnings`` and ``notes`` (lists of str), or, on failure, a
        minimal record with ``error`` and one warning.
    """
    path = Path(path)
    try:
        record = master_record(path, settings)
        notes: list[str] = []
        record["warnings"] = check_record(record, qa, flag_fraction, notes)
        record["notes"] = notes
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
            "notes": [],
        }


def night_report(
    date: str,
    masters: list[str | Path],
    qa: dict,
    flag_fraction: float,
    settings: dict | None = None,
    previews: dict[str, dict] | None = None,
    rejects: list[dict] | None = None,
    wavelength: list[dict] | None = None,
) -> dict:
    """The night's QA document (written as ``kpf_<date>_masters_qa.json``).

    Parameters
    ----------
    date : str
        The night, ``YYYYMMDD``.
    masters : list of str or Path
        The night's master files.
    qa : dict
        The ``qa`` configuration section.
    flag_fraction : float
        Fraction of low-count pixels that sets an INFOBITS bit.
    settings : dict, optional
        Master type -> its configuration section.
    previews : dict, optional
        Master kind -> {CCD: {figure: path}}.
    rejects : list of dict, optional
        The frames L0 -> 2D refused (:func:`kpfmasters.plan.rejects.night_rejections`:
        ``name``, ``problem``, ``version``, ``current``).
    wavelength : list of dict, optional
        The summaries of the night's wavelength solutions (each ``WLS-summary.json``
        written by rule wls_qa); their warnings join the night's.

    Returns
    -------
    dict
        JSON-safe: ``date``, ``created`` (UTC, ISO 8601), ``software_version``, ``qa``,
        ``flag_fraction``, ``masters`` (one record each, :func:`assessed_record`, with its
        ``previews``), the night's ``rejects``, ``wavelength_solutions``, all
        ``warnings`` and all ``notes`` (flags that are information).
    """
    records = []
    all_warnings = []
    all_notes = []
    for path in masters:
        kind = master_kind(path)
        record = assessed_record(
            path, qa, flag_fraction, (settings or {}).get(master_type(kind or ""))
        )
        record["previews"] = (previews or {}).get(record["master"], {})
        all_warnings += record["warnings"]
        all_notes += record.get("notes", [])
        records.append(record)
    solutions = list(wavelength or [])
    for solution in solutions:
        all_warnings += solution.get("warnings", [])
    return _clean(
        {
            "date": date,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__,
            "qa": qa,
            "flag_fraction": flag_fraction,
            "masters": records,
            "rejects": list(rejects or []),
            "wavelength_solutions": solutions,
            "warnings": all_warnings,
            "notes": all_notes,
        }
    )
