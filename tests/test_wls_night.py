"""Wavelength solutions and arclamp L2 files of a simulated night, made by a real Snakemake
run through all four steps (2D masters, traces and L1, WLS and L2), checked against the
simulator's truth.

The night is 1024 x 1024 in KPF's trace geometry (the bottom-left corner of KPF's CCDs:
its measured traces, flat-topped slit images and trimmed order mask; 10 GREEN and 9 RED
orders of five orderlets), so the line positions meet what KPF's own traces and flat put
on them. (The simulator's compact geometry, Gaussian profiles 1 px wide, puts up to a
third of an aperture row outside the order mask, where the seed's flat is 1: the
flat-divided arcs get flux steps that move lines by 0.008 px rms, measured noise-free.
KPF's geometry leaves 0.0008 px.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from astropy.io import fits

from kpfmasters.core.config import REPO_ROOT, merge
from kpfmasters.science.l1 import ext_name
from kpfmasters.sim.lamps import NIGHT_CATALOGUE_ERROR_MS
from kpfmasters.sim.simulate import simulate_night
from tests.smk import Night, dry_run_outputs, snakemake
from tests.wavetruth import night_wls_errors

DATE = "20230606"
SIZE = 1024
THAR = "autocal-thar-all-morn"
LFC = "autocal-lfc-all-morn"
COUNTS = {"bias": 5, "dark": 3, "flat": 5, "arclamp": {THAR: 3, LFC: 3}}
C = 299_792_458.0
CHIPS = {"GREEN": "GREEN_CCD", "RED": "RED_CCD"}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wls_night")]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("wls")
    night = Night(root, [DATE])
    night.sim = simulate_night(root / "sim", DATE, seed=5, size=SIZE, counts=COUNTS, geometry="kpf")
    wls = {
        "reference": str(night.sim.wls_reference_path),
        "thar_linelist": str(night.sim.thar_linelist_path),
    }
    # Nested numbers need a configuration file (--config passes nested values as strings).
    cfg = merge(yaml.safe_load((REPO_ROOT / "config.yaml").read_text()), {"wls": wls})
    night.configfile = root / "config.yaml"
    night.configfile.write_text(yaml.safe_dump(cfg))
    snakemake(night, "--configfile", str(night.configfile))
    return night


def product(night, name):
    return night.masters_root / DATE / name


def truth_by_order(night, ccd):
    spec = night.sim.ccds[ccd].spectrograph
    return spec.by_order(np.asarray(spec.wave, dtype=float))


def test_products_exist_and_rerun_is_empty(night):
    for tag in (THAR, LFC):
        assert product(night, f"kpf_{DATE}_master_WLS_{tag}_L1.fits").is_file()
        assert product(night, f"kpf_{DATE}_master_arclamp_{tag}_L2.fits").is_file()
    assert dry_run_outputs(night, "--configfile", str(night.configfile)) == []
    # QA: figures, the per-order table, and a warning naming the orders left at the prior
    qa = night.work_root / "qa" / DATE / "WLS" / LFC
    for name in ("WLS-residuals.png", "WLS-drift.png", "WLS-orders.html"):
        assert (qa / name).stat().st_size > 1000
    record = json.loads((qa / "WLS-summary.json").read_text())
    assert "GREEN SKY order 0" in record["orders_at_prior"]
    assert any("kept the prior" in w for w in record["warnings"])
    log = (night.work_root / "logs" / DATE / f"qa_wls_{LFC}.log").read_text()
    assert "WARNING" in log and "kept the prior" in log
    # ... and the night's QA document holds both summaries, their warnings among its own
    doc = json.loads(product(night, f"kpf_{DATE}_masters_qa.json").read_text())
    files = sorted(w["file"] for w in doc["wavelength_solutions"])
    assert files == sorted(f"kpf_{DATE}_master_WLS_{t}_L1.fits" for t in (THAR, LFC))
    assert any(w.startswith(f"kpf_{DATE}_master_WLS_{LFC}") for w in doc["warnings"])
    page = (night.work_root / "qa" / DATE / "statistics.html").read_text()
    assert "kept the prior" in page


@pytest.mark.parametrize("tag, kind", [(THAR, "thar"), (LFC, "lfc")])
def test_solution_is_flagged_and_laid_out(night, tag, kind):
    path = product(night, f"kpf_{DATE}_master_WLS_{tag}_L1.fits")
    with fits.open(path, checksum=True) as hdul:
        hdr = hdul[0].header
        assert hdr["WLSTYPE"] == kind and hdr["MONOTWLS"] == 1
        names = [h.name for h in hdul]
        assert names[-4:] == ["TRACE", "WLS_ORDERS", "WLS_LINES", "INPUTS"]
        orders = hdul["WLS_ORDERS"].data
        assert (orders["STATUS"] == "fit").mean() > 0.8
        if kind == "lfc":
            assert hdr["WLSPRIOR"] == f"kpf_{DATE}_master_WLS_{THAR}_L1.fits"
            # the bluest GREEN order gets no comb light: it keeps the ThAr solution
            dark = (orders["CHIP"] == "GREEN") & (orders["ORDER"] == 0)
            assert np.all(orders["STATUS"][dark] == "prior")
            # RED is lit throughout, as KPF's comb lights it
            assert np.all(orders["STATUS"][orders["CHIP"] == "RED"] == "fit")


# ThAr: the simulated list's errors (NIGHT_CATALOGUE_ERROR_MS) join the noise in the limit,
# as wls.thar.catalogue_error_ms joins them in the weights: no solution can beat its list.
ACCURACY = [(THAR, NIGHT_CATALOGUE_ERROR_MS), (LFC, 0.0)]


@pytest.mark.parametrize("tag, catalogue_error", ACCURACY)
def test_solutions_reach_the_noise_limit(night, tag, catalogue_error):
    """Per order and orderlet, the rms over columns of c (lambda_fit - lambda_true) /
    lambda_true against the rms the noise allows (tests/wavetruth.py: Cramer-Rao centres
    from the lines' true fluxes and widths, the arc frames' photon and read noise, the
    flat frames' photon noise, propagated through the row's weighted Legendre fit).

    Measured on this night: ThAr ratio median 1.1, 90% 1.8, max 2.3 (90 rows); comb median
    1.5, 90% 2.1, max 3.7 (75 rows). The few comb rows above 2.5 are CAL and SCI rows of
    bright comb orders where the seed's flat (reset to 1 outside the order mask, which the
    box aperture crosses by fractions of a row) moves every line by a smooth pattern along
    the order, 0.0008 px rms noise-free: a column-correlated error no fit averages out."""
    errors = night_wls_errors(
        night.sim, night.masters_root / DATE, DATE, tag, catalogue_error_ms=catalogue_error
    )
    assert len(errors) > 60
    ratio = np.array([e["actual"] / e["limit"] for e in errors])
    assert np.median(ratio) < 2.0, ratio
    worst = sorted(zip(ratio, [e["row"] for e in errors], strict=True))[-8:]
    assert np.mean(ratio <= 2.5) >= 0.9, worst
    assert ratio.max() < 4.5, ratio.max()
    # SEM_MS against the true zero-point error: the median |error| / SEM is that of a
    # unit Gaussian (0.674) within a factor of 2
    pulls = np.abs([e["zero_point"] / e["sem"] for e in errors])
    assert 0.5 < np.median(pulls) / 0.6745 < 2.0


def test_comb_mode_numbers_are_right(night):
    path = product(night, f"kpf_{DATE}_master_WLS_{LFC}_L1.fits")
    with fits.open(path) as hdul:
        f0, frep = hdul[0].header["LFCF0"], hdul[0].header["LFCFREP"]
        lines = hdul["WLS_LINES"].data
        used = lines["USED"]
        assert used.sum() > 500
        for chip, ccd in CHIPS.items():
            truth = truth_by_order(night, ccd)
            sel = used & (lines["CHIP"] == chip)
            cols = np.arange(SIZE)
            true_wave = np.array(
                [
                    np.interp(x, cols, truth[orderlet.strip()][o])
                    for x, orderlet, o in zip(
                        lines["X"][sel], lines["ORDERLET"][sel], lines["ORDER"][sel], strict=True
                    )
                ]
            )
            n_true = np.rint((C * 1e10 / true_wave - f0) / frep).astype(np.int64)
            assert np.array_equal(n_true, lines["MODE"][sel])


def test_l2_drift_matches_the_reference_perturbation(night):
    """The reference is the truth moved by a known smooth amount per trace: the drift of
    each order and orderlet is that amount averaged over its lines."""
    path = product(night, f"kpf_{DATE}_master_arclamp_{LFC}_L2.fits")
    wls_path = product(night, f"kpf_{DATE}_master_WLS_{LFC}_L1.fits")
    with fits.open(path) as l2, fits.open(wls_path) as sol:
        with fits.open(night.sim.wls_reference_path) as ref:
            rv = l2["RV"].data
            lines = sol["WLS_LINES"].data
            pulls = []
            for chip, ccd in CHIPS.items():
                truth = truth_by_order(night, ccd)
                for row in rv[(rv["CHIP"] == chip) & (rv["NLINES"] > 0)]:
                    orderlet, o = row["ORDERLET"].strip(), row["ORDER"]
                    sel = (
                        lines["USED"]
                        & (lines["CHIP"] == chip)
                        & (lines["ORDERLET"] == orderlet)
                        & (lines["ORDER"] == o)
                    )
                    cols = np.arange(SIZE)
                    x, xerr = lines["X"][sel], lines["X_ERR"][sel]
                    lam_true = np.interp(x, cols, truth[orderlet][o])
                    lam_ref = np.interp(x, cols, ref[ext_name(chip, orderlet, "WAVE")].data[o])
                    w = 1 / xerr**2
                    expected = np.sum(w * C * (lam_ref - lam_true) / lam_true) / np.sum(w)
                    pulls.append((row["RV_MS"] - expected) / row["RV_ERR_MS"])
            pulls = np.array(pulls)
            assert len(pulls) > 20
            assert np.sqrt(np.mean(pulls**2)) < 2.0
            assert np.all(np.abs(pulls) < 5.0)
            assert l2[0].header["DRIFTGE"] > 0 and np.isfinite(l2[0].header["DRIFTR"])
