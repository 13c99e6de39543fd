"""Wavelength-solution and drift products as FITS HDU lists, from an arclamp's L1.

The L1 of a master holds, per CHIP (GREEN, RED), five FLUX, five VAR and five WAVE images of
shape (orders, columns): ``<CHIP>_SCI_FLUX1..3``, ``<CHIP>_SKY_FLUX``, ``<CHIP>_CAL_FLUX``
and the same with ``VAR`` / ``WAVE``; then a ``TRACE`` table and an ``INPUTS`` table
(ROLE, FILENAME, MD5). Here:

- :func:`l1_stack` turns one CHIP of an L1 into row stacks (one row per order of each
  orderlet) for the solvers, and :func:`unstack` back;
- :func:`solve_l1` makes the ThAr or comb solution of every CHIP;
- :func:`wls_hdul` builds the wavelength-solution file: the arclamp's L1 with every WAVE
  image replaced, the tables ``WLS_ORDERS`` and ``WLS_LINES`` between ``TRACE`` and
  ``INPUTS``, and PRIMARY keywords ``WLSTYPE``, ``WLSPRIOR``, ``WLSRMSG``/``WLSRMSR``,
  ``MONOTWLS``;
- :func:`l2_hdul` builds the arclamp's L2: a table ``RV`` of the drift of the lamp's lines
  against the arclamp L1's own (reference) WAVE, per CHIP, ORDER and ORDERLET, with
  ``DRIFTG``/``DRIFTR`` in PRIMARY.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from kpfmasters.core.errors import InputError
from kpfmasters.science import drift, lfc, linefit, wls
from kpfmasters.science.l1 import ext_name

CHIPS = ("GREEN", "RED")
ORDERLETS = ("SKY", "SCI1", "SCI2", "SCI3", "CAL")
CHIP_KEY = {"GREEN": "G", "RED": "R"}

log = logging.getLogger(__name__)


@dataclass
class ChipStack:
    """One CHIP of an L1 as row stacks: ``flux``, ``var``, ``wave`` of shape (rows, ncol);
    ``order`` (rows,) order index; ``orderlet`` (rows,) name; rows orderlet by orderlet in
    the sequence SKY, SCI1, SCI2, SCI3, CAL, orders bottom up within each."""

    chip: str
    flux: np.ndarray
    var: np.ndarray
    wave: np.ndarray
    order: np.ndarray
    orderlet: list[str]

    def labels(self) -> list[str]:
        return [
            f"{self.chip} {o} order {i}" for o, i in zip(self.orderlet, self.order, strict=True)
        ]


def _image(hdul: fits.HDUList, name: str, source: str) -> np.ndarray:
    try:
        data = hdul[name].data
    except KeyError:
        raise InputError(source, f"has no extension {name} (an L1 file holds it)") from None
    if data is None or data.ndim != 2:
        raise InputError(source, f"extension {name} is not a 2D image (orders x columns)")
    return np.asarray(data, dtype=float)


def l1_stack(hdul: fits.HDUList, chip: str, source: str = "L1", wave_from=None) -> ChipStack:
    """Row stacks of one CHIP of an L1 file.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        The L1 (FLUX and VAR are read from it).
    chip : str
        ``GREEN`` or ``RED``.
    source : str
        File name used in error messages.
    wave_from : astropy.io.fits.HDUList, optional
        Where to read the WAVE images (a prior solution); default ``hdul``.

    Raises
    ------
    InputError
        An extension is missing, not 2D, or the shapes differ.
    """
    waves = hdul if wave_from is None else wave_from
    flux, var, wave, order, orderlet = [], [], [], [], []
    shape = None
    for name in ORDERLETS:
        f = _image(hdul, ext_name(chip, name, "FLUX"), source)
        v = _image(hdul, ext_name(chip, name, "VAR"), source)
        w = _image(waves, ext_name(chip, name, "WAVE"), source)
        shape = shape or f.shape
        for what, arr in (("FLUX", f), ("VAR", v), ("WAVE", w)):
            if arr.shape != shape:
                raise InputError(
                    source,
                    f"extension {ext_name(chip, name, what)} has shape {arr.shape}, expected "
                    f"{shape} like {ext_name(chip, ORDERLETS[0], 'FLUX')}",
                )
        flux.append(f)
        var.append(v)
        wave.append(w)
        order.extend(range(shape[0]))
        orderlet.extend([name] * shape[0])
    return ChipStack(
        chip, np.vstack(flux), np.vstack(var), np.vstack(wave), np.array(order), orderlet
    )


def unstack(rows: np.ndarray, norders: int) -> dict[str, np.ndarray]:
    """Row stack (5 * norders, ncol) back to one (norders, ncol) image per orderlet."""
    return {name: rows[k * norders : (k + 1) * norders] for k, name in enumerate(ORDERLETS)}


def solve_l1(
    l1: fits.HDUList,
    prior: fits.HDUList,
    kind: str,
    *,
    catalogue: np.ndarray | None = None,
    f0: float | None = None,
    frep: float | None = None,
    thar_settings: wls.TharSettings | None = None,
    lfc_settings: lfc.LfcSettings | None = None,
    source: str = "L1",
) -> dict[str, tuple[ChipStack, wls.Solution]]:
    """ThAr (``kind`` = thar) or comb (lfc) solution of each CHIP of an arclamp L1.

    Parameters
    ----------
    l1 : HDUList
        The arclamp's L1.
    prior : HDUList
        A file whose WAVE images are the prior (the reference for ThAr; the night's ThAr
        solution for the comb).
    kind : str
        ``thar`` or ``lfc``.
    catalogue : ndarray, optional
        ThAr line wavelengths (Angstrom), for ``thar``.
    f0, frep : float, optional
        Comb frequencies (Hz), for ``lfc``.

    Returns
    -------
    dict
        CHIP -> (its row stacks with the prior as ``wave``, its Solution).
    """
    out = {}
    for chip in CHIPS:
        stack = l1_stack(l1, chip, source, wave_from=prior)
        if kind == "thar":
            sol = wls.thar_solution(
                stack.flux, stack.var, stack.wave, catalogue, thar_settings, stack.labels()
            )
        elif kind == "lfc":
            sol = lfc.lfc_solution(
                stack.flux, stack.var, stack.wave, stack.order, stack.orderlet, f0, frep,
                lfc_settings, stack.labels(),
            )  # fmt: skip
        else:
            raise ValueError(f"unknown wavelength solution type {kind!r} (thar or lfc)")
        out[chip] = (stack, sol)
    return out


def orders_table(results: dict) -> fits.BinTableHDU:
    """``WLS_ORDERS``: a row per CHIP, ORDERLET and ORDER."""
    cols = {k: [] for k in ("CHIP", "ORDERLET", "ORDER", "NLINES", "NUSED", "DEGREE",
                            "RMS_MS", "SEM_MS", "STATUS")}  # fmt: skip
    for chip, (stack, sol) in results.items():
        for r in range(len(stack.order)):
            cols["CHIP"].append(chip)
            cols["ORDERLET"].append(stack.orderlet[r])
            cols["ORDER"].append(int(stack.order[r]))
            cols["NLINES"].append(int(sol.nlines[r]))
            cols["NUSED"].append(int(sol.nused[r]))
            cols["DEGREE"].append(int(sol.degree[r]))
            cols["RMS_MS"].append(float(sol.rms_ms[r]))
            cols["SEM_MS"].append(float(sol.sem_ms[r]))
            cols["STATUS"].append(sol.status[r])
    hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column("CHIP", "5A", array=np.array(cols["CHIP"], dtype="U5")),
            fits.Column("ORDERLET", "4A", array=np.array(cols["ORDERLET"], dtype="U4")),
            fits.Column("ORDER", "I", array=np.array(cols["ORDER"], dtype=np.int16)),
            fits.Column("NLINES", "J", array=np.array(cols["NLINES"], dtype=np.int32)),
            fits.Column("NUSED", "J", array=np.array(cols["NUSED"], dtype=np.int32)),
            fits.Column("DEGREE", "I", array=np.array(cols["DEGREE"], dtype=np.int16)),
            fits.Column("RMS_MS", "D", unit="m/s", array=np.array(cols["RMS_MS"])),
            fits.Column("SEM_MS", "D", unit="m/s", array=np.array(cols["SEM_MS"])),
            fits.Column("STATUS", "5A", array=np.array(cols["STATUS"], dtype="U5")),
        ],
        name="WLS_ORDERS",
    )
    hdu.header["COMMENT"] = "STATUS fit: solved from this order's lines; prior: prior kept"
    return hdu


def lines_table(results: dict, kind: str) -> fits.BinTableHDU:
    """``WLS_LINES``: every line with a good fit (MODE for the comb)."""
    parts = {k: [] for k in ("CHIP", "ORDERLET", "ORDER", "WAVE", "X", "X_ERR", "USED",
                             "RESID_MS", "MODE")}  # fmt: skip
    for chip, (stack, sol) in results.items():
        good = sol.fits.flags == 0 if sol.fits is not None else np.ones(len(sol.line_row), bool)
        rows = sol.line_row[good]
        parts["CHIP"].append(np.full(len(rows), chip, dtype="U5"))
        parts["ORDERLET"].append(np.array(stack.orderlet, dtype="U4")[rows])
        parts["ORDER"].append(stack.order[rows].astype(np.int16))
        parts["WAVE"].append(sol.line_wave[good])
        parts["X"].append(sol.line_x[good])
        parts["X_ERR"].append(sol.line_xerr[good])
        parts["USED"].append(sol.line_used[good])
        parts["RESID_MS"].append(sol.line_resid_ms[good])
        parts["MODE"].append(sol.line_mode[good].astype(np.int64))
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    columns = [
        fits.Column("CHIP", "5A", array=cat["CHIP"].astype("U5")),
        fits.Column("ORDERLET", "4A", array=cat["ORDERLET"].astype("U4")),
        fits.Column("ORDER", "I", array=cat["ORDER"].astype(np.int16)),
        fits.Column("WAVE", "D", unit="Angstrom", array=cat["WAVE"]),
        fits.Column("X", "D", unit="pixel", array=cat["X"]),
        fits.Column("X_ERR", "D", unit="pixel", array=cat["X_ERR"]),
        fits.Column("USED", "L", array=cat["USED"].astype(bool)),
        fits.Column("RESID_MS", "D", unit="m/s", array=cat["RESID_MS"]),
    ]
    if kind == "lfc":
        columns.append(fits.Column("MODE", "K", array=cat["MODE"].astype(np.int64)))
    hdu = fits.BinTableHDU.from_columns(columns, name="WLS_LINES")
    hdu.header["COMMENT"] = "WAVE vacuum; X 0-based column; RESID_MS c*(fit(X)-WAVE)/WAVE"
    return hdu


def inputs_table(rows: list[tuple[str, str, str]]) -> fits.BinTableHDU:
    """``INPUTS`` (ROLE, FILENAME, MD5)."""
    return fits.BinTableHDU.from_columns(
        [
            fits.Column(name, f"{max([1, *(len(r[i]) for r in rows)])}A",
                        array=np.array([r[i] for r in rows]))
            for i, name in enumerate(("ROLE", "FILENAME", "MD5"))
        ],
        name="INPUTS",
    )  # fmt: skip


def inputs_with(hdul: fits.HDUList, rows: list[tuple[str, str, str]], source: str):
    """The ``INPUTS`` table of ``hdul`` with (ROLE, FILENAME, MD5) rows appended."""
    try:
        old = hdul["INPUTS"].data
    except KeyError:
        raise InputError(source, "has no extension INPUTS (an L1 file holds it)") from None
    roles = [str(v) for v in old["ROLE"]] + [r[0] for r in rows]
    names = [str(v) for v in old["FILENAME"]] + [r[1] for r in rows]
    md5s = [str(v) for v in old["MD5"]] + [r[2] for r in rows]
    width = max([len(n) for n in names] + [1])
    return fits.BinTableHDU.from_columns(
        [
            fits.Column("ROLE", f"{max(len(r) for r in roles)}A", array=np.array(roles)),
            fits.Column("FILENAME", f"{width}A", array=np.array(names)),
            fits.Column("MD5", "32A", array=np.array(md5s)),
        ],
        name="INPUTS",
        header=hdul["INPUTS"].header.copy(),
    )


def median_rms(sol: wls.Solution) -> float:
    """Median RMS_MS of the rows fitted (NaN when none)."""
    fitted = np.array([s == wls.STATUS_FIT for s in sol.status])
    return float(np.median(sol.rms_ms[fitted])) if fitted.any() else float("nan")


def _finite_or_none(value: float):
    return float(value) if np.isfinite(value) else None


def wls_hdul(
    l1: fits.HDUList,
    results: dict,
    kind: str,
    prior_name: str,
    inputs: list[tuple[str, str, str]] = (),
    source: str = "L1",
    keywords: dict | None = None,
) -> fits.HDUList:
    """The wavelength-solution file of an arclamp.

    Parameters
    ----------
    l1 : HDUList
        The arclamp's L1 (left unchanged; the result holds copies).
    results : dict
        :func:`solve_l1`'s result.
    kind : str
        ``thar`` or ``lfc`` (``WLSTYPE``).
    prior_name : str
        File name of the prior (``WLSPRIOR``).
    inputs : list of (ROLE, FILENAME, MD5)
        Rows added to ``INPUTS`` (the prior, the line list).
    source : str
        The L1's file name, for error messages.
    keywords : dict, optional
        Further PRIMARY keywords: name -> (value, comment).

    Returns
    -------
    HDUList
        PRIMARY ... ``TRACE``, ``WLS_ORDERS``, ``WLS_LINES``, ``INPUTS``.
    """
    names = [h.name for h in l1]
    for needed in ("TRACE", "INPUTS"):
        if needed not in names:
            raise InputError(source, f"has no extension {needed} (an L1 file holds it)")
    out = []
    for hdu in l1:
        if hdu.name == "INPUTS":
            continue
        copy = hdu.copy()
        out.append(copy)
        if hdu.name == "TRACE":
            out.append(orders_table(results))
            out.append(lines_table(results, kind))
    out.append(inputs_with(l1, list(inputs), source))
    hdul = fits.HDUList(out)
    mono = True
    for chip, (stack, sol) in results.items():
        norders = int(np.max(stack.order)) + 1
        for name, image in unstack(sol.wave, norders).items():
            hdul[ext_name(chip, name, "WAVE")].data = image.astype(np.float64)
        mono &= wls.monotonic(sol.wave)
    hdr = hdul[0].header
    hdr["WLSTYPE"] = (kind, "wavelength solution from thar or lfc lines")
    hdr["WLSPRIOR"] = (prior_name, "prior solution") if len(prior_name) < 50 else prior_name
    for chip, (stack, sol) in results.items():
        key = CHIP_KEY[chip]
        hdr[f"WLSRMS{key}"] = (_finite_or_none(median_rms(sol)), f"{chip} median RMS_MS (m/s)")
        nprior = sum(
            1 for r, s in enumerate(sol.status) if s != wls.STATUS_FIT and np.isfinite(
                stack.wave[r]).any()
        )  # fmt: skip
        hdr[f"WLSNPRI{key}"] = (nprior, f"{chip} orders x orderlets left at the prior")
    hdr["MONOTWLS"] = (1 if mono else 0, "1: lambda monotonic in x in every order")
    for name, (value, comment) in (keywords or {}).items():
        hdr[name] = (value, comment)
    return hdul


def lines_from_table(table, chip: str, stack: ChipStack):
    """Rows of a ``WLS_LINES`` table of one CHIP as solver arrays.

    Returns
    -------
    row : ndarray of int
        Row of each line in ``stack`` (orderlet-major row stacks).
    wave, x, x_err : ndarray
    used : ndarray of bool
    """
    norders = int(np.max(stack.order)) + 1
    sel = np.char.strip(np.asarray(table["CHIP"]).astype(str)) == chip
    orderlet = np.char.strip(np.asarray(table["ORDERLET"]).astype(str))[sel]
    order = np.asarray(table["ORDER"], dtype=np.int64)[sel]
    index = {name: k for k, name in enumerate(ORDERLETS)}
    row = np.array([index[o] * norders for o in orderlet], dtype=np.int64) + order
    return (
        row,
        np.asarray(table["WAVE"], dtype=float)[sel],
        np.asarray(table["X"], dtype=float)[sel],
        np.asarray(table["X_ERR"], dtype=float)[sel],
        np.asarray(table["USED"], dtype=bool)[sel],
    )


def l2_hdul(
    l1: fits.HDUList,
    wls_file: fits.HDUList,
    inputs: list[tuple[str, str, str]] = (),
    source: str = "L1",
    wls_source: str = "WLS",
) -> fits.HDUList:
    """The arclamp's L2: drift of its lines against the arclamp L1's reference WAVE.

    Parameters
    ----------
    l1 : HDUList
        The arclamp's L1: its WAVE images are the reference solution.
    wls_file : HDUList
        The arclamp's wavelength-solution file: the lines (``WLS_LINES``, those with
        USED true) are measured against the reference.
    inputs : list of (ROLE, FILENAME, MD5)
        Rows of the ``INPUTS`` table (the L1 and the wavelength-solution file).
    source, wls_source : str
        File names for error messages.

    Returns
    -------
    HDUList
        PRIMARY (the L1's, with ``DRIFTG``, ``DRIFTR`` and their errors ``DRIFTGE``,
        ``DRIFTRE``, m/s), ``RV`` (CHIP, ORDER, ORDERLET, RV_MS, RV_ERR_MS, NLINES), INPUTS.
    """
    if "WLS_LINES" not in wls_file:
        raise InputError(wls_source, "has no extension WLS_LINES (a wavelength solution has)")
    table = wls_file["WLS_LINES"].data
    for column in ("CHIP", "ORDERLET", "ORDER", "WAVE", "X", "X_ERR", "USED"):
        if column not in table.columns.names:
            raise InputError(wls_source, f"table WLS_LINES has no column {column}")
    cols = {k: [] for k in ("CHIP", "ORDER", "ORDERLET", "RV_MS", "RV_ERR_MS", "NLINES")}
    header = l1[0].header.copy()
    for key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "CHECKSUM", "DATASUM"):
        header.remove(key, ignore_missing=True, remove_all=True)
    primary = fits.PrimaryHDU(header=header)
    for chip in CHIPS:
        stack = l1_stack(l1, chip, source)
        row, wave, x, x_err, used = lines_from_table(table, chip, stack)
        d = drift.drift_rows(len(stack.order), row, x, x_err, wave, used, stack.wave)
        cols["CHIP"].extend([chip] * len(stack.order))
        cols["ORDER"].extend(int(o) for o in stack.order)
        cols["ORDERLET"].extend(stack.orderlet)
        cols["RV_MS"].extend(d.rv_ms.tolist())
        cols["RV_ERR_MS"].extend(d.rv_err_ms.tolist())
        cols["NLINES"].extend(int(n) for n in d.nlines)
        mean, err = drift.weighted_mean(d.rv_ms, d.rv_err_ms)
        key = CHIP_KEY[chip]
        primary.header[f"DRIFT{key}"] = (_finite_or_none(mean), f"{chip} drift vs reference (m/s)")
        primary.header[f"DRIFT{key}E"] = (_finite_or_none(err), f"error of DRIFT{key} (m/s)")
    rv = fits.BinTableHDU.from_columns(
        [
            fits.Column("CHIP", "5A", array=np.array(cols["CHIP"], dtype="U5")),
            fits.Column("ORDER", "I", array=np.array(cols["ORDER"], dtype=np.int16)),
            fits.Column("ORDERLET", "4A", array=np.array(cols["ORDERLET"], dtype="U4")),
            fits.Column("RV_MS", "D", unit="m/s", array=np.array(cols["RV_MS"])),
            fits.Column("RV_ERR_MS", "D", unit="m/s", array=np.array(cols["RV_ERR_MS"])),
            fits.Column("NLINES", "J", array=np.array(cols["NLINES"], dtype=np.int32)),
        ],
        name="RV",
    )
    rv.header["COMMENT"] = "RV_MS: c*(lambda_ref(X)-lambda_line)/lambda_line, weighted mean"
    return fits.HDUList([primary, rv, inputs_table(list(inputs) or [("l1", source, "")])])


# --------------------------------------------------------------------------- file jobs


@dataclass
class WlsJob:
    """One wavelength solution: the arclamp's L1, its kind (``thar``/``lfc``), the prior
    file ('' for the L1's own WAVE, the reference), the ThAr line list, and the settings
    (configuration section ``wls``)."""

    l1: str
    output: str
    kind: str
    settings: dict
    prior: str = ""
    linelist: str = ""


def settings_from_config(cfg: dict) -> tuple[wls.TharSettings, lfc.LfcSettings]:
    """Solver settings from the configuration section ``wls``."""
    line = cfg["line"]
    fit = linefit.LineFitSettings(
        sigma_guess=line["sigma_guess"],
        sigma_range=(line["sigma_min"], line["sigma_max"]),
        min_snr=line["min_snr"],
        max_chi2red=line["max_chi2red"],
        saturation=line["saturation"],
    )

    def solve(section):
        return wls.SolveSettings(
            max_degree=section["max_degree"],
            lines_per_degree=section["lines_per_degree"],
            min_lines=section["min_lines"],
            clip_nsigma=cfg["clip_nsigma"],
            clip_iterations=cfg["clip_iterations"],
            min_coverage=section["min_coverage"],
            max_error_growth=cfg["max_error_growth"],
            wave_error_ms=section.get("catalogue_error_ms", 0.0),
        )

    thar = wls.TharSettings(
        half_window=cfg["thar"]["half_window_px"],
        max_offset=cfg["thar"]["max_offset_px"],
        blend_px=cfg["thar"]["blend_px"],
        line=fit,
        solve=solve(cfg["thar"]),
    )
    comb = lfc.LfcSettings(
        half_window=cfg["lfc"]["half_window_spacing"],
        max_offset=cfg["lfc"]["max_offset_spacing"],
        max_shift=cfg["lfc"]["max_shift_modes"],
        line=fit,
        solve=solve(cfg["lfc"]),
    )
    return thar, comb


def _open(path: str | Path) -> fits.HDUList:
    try:
        return fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from None


def build_wls(job: WlsJob) -> dict:
    """Make the wavelength-solution file of ``job``; return a summary per CHIP."""
    from kpfmasters.io.fits import write_fits
    from kpfmasters.science.l1 import md5_file

    thar_settings, lfc_settings = settings_from_config(job.settings)
    with _open(job.l1) as l1:
        hdr = l1[0].header
        reference = str(hdr.get("WLSFILE", "") or "")
        prior_name = Path(job.prior).name if job.prior else reference or Path(job.l1).name
        prior = _open(job.prior) if job.prior else l1
        try:
            inputs = [("wls_prior", prior_name, md5_file(job.prior) if job.prior else "")]
            keywords = {}
            if job.kind == "thar":
                catalogue = wls.read_linelist(job.linelist)
                inputs.append(("linelist", Path(job.linelist).name, md5_file(job.linelist)))
                results = solve_l1(l1, prior, "thar", catalogue=catalogue,
                                   thar_settings=thar_settings, source=job.l1)  # fmt: skip
                keywords["WLSLIST"] = (Path(job.linelist).name, "ThAr line list")
            else:
                f0, frep, origin = lfc.comb_parameters(
                    hdr, job.settings["lfc_f0_hz"], job.settings["lfc_frep_hz"]
                )
                log.info("comb f0 %.6g Hz, f_rep %.6g Hz (from the %s)", f0, frep, origin)
                results = solve_l1(l1, prior, "lfc", f0=f0, frep=frep,
                                   lfc_settings=lfc_settings, source=job.l1)  # fmt: skip
                keywords["LFCF0"] = (f0, "comb offset frequency used (Hz)")
                keywords["LFCFREP"] = (frep, "comb repetition frequency used (Hz)")
            inputs.insert(0, ("l1", Path(job.l1).name, md5_file(job.l1)))
            hdul = wls_hdul(l1, results, job.kind, prior_name, inputs[1:], job.l1, keywords)
            write_fits(hdul, job.output)
        finally:
            if prior is not l1:
                prior.close()
    summary = {}
    for chip, (stack, sol) in results.items():
        summary[chip] = {
            "rows": len(sol.status),
            "fitted": sum(s == wls.STATUS_FIT for s in sol.status),
            "prior": [lab for lab, s, w in zip(stack.labels(), sol.status, stack.wave,
                                               strict=True)
                      if s != wls.STATUS_FIT and np.isfinite(w).any()],
            "median_rms_ms": median_rms(sol),
            "lines": int(np.sum(sol.fits.flags == 0)),
        }  # fmt: skip
    return summary


@dataclass
class L2Job:
    """One arclamp L2: the arclamp's L1 (the reference WAVE) and its wavelength solution."""

    l1: str
    wls: str
    output: str


def build_l2(job: L2Job) -> dict:
    """Make the arclamp L2 file of ``job``; return DRIFTG, DRIFTR and their errors."""
    from kpfmasters.io.fits import write_fits
    from kpfmasters.science.l1 import md5_file

    with _open(job.l1) as l1, _open(job.wls) as solution:
        inputs = [
            ("l1", Path(job.l1).name, md5_file(job.l1)),
            ("wls", Path(job.wls).name, md5_file(job.wls)),
        ]
        hdul = l2_hdul(l1, solution, inputs, job.l1, job.wls)
        write_fits(hdul, job.output)
        hdr = hdul[0].header
        return {k: hdr[k] for k in ("DRIFTG", "DRIFTGE", "DRIFTR", "DRIFTRE")}
