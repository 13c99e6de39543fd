"""Wavelength solutions (ThAr, LFC), their files, and the arclamp drift, on simulated lamps.

The lamps are rendered as 1D spectra per trace (kpfmasters.sim.lamps) from a KPF-like true
lambda(x) (tests/wavetruth.py): GREEN orders from 137 down, RED from 102 down, 870 m/s per
pixel, full-width rows of 4080 columns, lines sigma 1.1-1.5 px, Poisson + read noise.
"""

import logging

import numpy as np
import pytest
from astropy.io import fits
from numpy.polynomial import legendre

from kpfmasters.core.config import REPO_ROOT
from kpfmasters.core.errors import InputError
from kpfmasters.io.fits import write_fits
from kpfmasters.science import lfc, linefit, wls, wlsproducts
from kpfmasters.sim import lamps
from tests.wavetruth import BACKGROUND, READ_NOISE, LampChip, l1_hdul, to_orderlet_major

C = wls.C_MS
NCOL = 4080
LINELIST = REPO_ROOT / "kpfmasters" / "data" / "thar_vacuum_lines.txt"


@pytest.fixture(scope="module")
def catalogue():
    return wls.read_linelist(LINELIST)


@pytest.fixture(scope="module")
def night(catalogue):
    """GREEN 7 orders and RED 5 orders, full width; the reference is off by +250 m/s."""
    return {
        "GREEN": LampChip("GREEN", 7, NCOL, seed=11, linelist=catalogue),
        "RED": LampChip("RED", 5, NCOL, seed=12, linelist=catalogue),
    }


@pytest.fixture(scope="module")
def thar(night):
    l1 = l1_hdul(night, "thar", wave_offset_ms=250.0)
    cat = np.sort(np.concatenate([night[c].thar.catalogue for c in night]))
    return l1, wlsproducts.solve_l1(l1, l1, "thar", catalogue=cat)


def match_true(placed, row, x):
    """Index into ``placed`` of the true line nearest each column x of a row."""
    sel = np.nonzero(placed.row == row)[0]
    order = sel[np.argsort(placed.x[sel])]
    k = np.clip(np.searchsorted(placed.x[order], x), 1, len(order) - 1)
    left, right = order[k - 1], order[k]
    return np.where(np.abs(placed.x[left] - x) < np.abs(placed.x[right] - x), left, right)


def photon_limit(chip, placed, sol, r_sol, r_true, half):
    """Expected rms over columns (m/s) of the row's solution from photon + read noise alone."""
    used = (sol.line_row == r_sol) & sol.line_used
    idx = match_true(placed, r_true, sol.line_x[used])
    err_x = lamps.centre_error_limit(
        placed.flux[idx], placed.sigma[idx], placed.x[idx], BACKGROUND, READ_NOISE, half
    )
    err_lam = err_x * wls.dispersion(chip.wave[r_true], placed.x[idx])
    return lamps.solution_error_limit(
        placed.x[idx], err_lam, NCOL, int(sol.degree[r_sol]), chip.wave[r_true]
    )


def true_row(chip, r_sol):
    """Order-major truth row of an orderlet-major solution row."""
    n = int(chip.order.max()) + 1
    k, o = divmod(r_sol, n)
    return o * 5 + k


# --------------------------------------------------------------------------- line list


def test_shipped_linelist_is_the_default(base_config, catalogue):
    assert base_config["wls"]["thar_linelist"] == "kpfmasters/data/thar_vacuum_lines.txt"
    text = LINELIST.read_text()
    assert "Thorium_mask_031921.mas" in text
    assert len(catalogue) == 3308 and np.all(np.diff(catalogue) > 0)
    assert 3576.0 < catalogue[0] < 3577.0 and 10837.0 < catalogue[-1] < 10838.0


def test_linelist_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("# comment\n5000.1 1.0\nfoo\n")
    with pytest.raises(InputError, match=r"list\.txt: line 3: 'foo' is not a wavelength"):
        wls.read_linelist(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="holds no line"):
        wls.read_linelist(empty)


# --------------------------------------------------------------------------- line fits


def test_line_fits_errors_and_rejections():
    rng = np.random.default_rng(3)
    nrow, ncol = 40, 600
    mu = 20.0 + 25.0 * np.arange(23)[None, :] + rng.uniform(0, 1, (nrow, 1))
    amp = np.exp(rng.uniform(np.log(3e3), np.log(3e5), mu.shape))
    sig = rng.uniform(1.1, 1.5, mu.shape)
    placed = lamps.RenderedLines(
        np.repeat(np.arange(nrow), mu.shape[1]), mu.ravel(), mu.ravel(), amp.ravel(),
        sig.ravel(), np.full(mu.size, -1),
    )  # fmt: skip
    flux, var = lamps.observe(lamps.render((nrow, ncol), placed, 20.0), 10.0, rng)
    rows, x_true = placed.row, placed.x
    x_pred = x_true + rng.normal(0, 0.5, len(x_true))
    # A NaN pixel next to line 3 of row 0; one line of row 1 made very bright and clipped at
    # a saturation level above every other pixel; a blend flagged.
    flux[0, int(round(x_true[3])) + 1] = np.nan
    k_sat = mu.shape[1] + 5
    sat = 1.5 * np.nanmax(flux)
    cols = np.arange(ncol)
    flux_sat = flux.copy()
    flux_sat[1] += linefit.pixel_gaussian(cols, 3e7, x_true[k_sat], sig.ravel()[k_sat])
    flux_sat[1] = np.minimum(flux_sat[1], sat)
    blend = np.zeros(len(x_true), bool)
    blend[7] = True
    settings = linefit.LineFitSettings(saturation=sat)
    fits_ = linefit.fit_lines(flux_sat, var, rows, x_pred, 5, 2.0, settings, blend=blend)
    assert fits_.flags[3] & linefit.FLAG_MASKED
    assert fits_.flags[k_sat] & linefit.FLAG_SATURATED
    assert fits_.flags[7] & linefit.FLAG_BLEND
    # Spurious predictions (no line there) are rejected, not fitted to noise.
    spur = linefit.fit_lines(flux, var, rows[:50], x_true[:50] + 12.5, 5, 2.0)
    assert np.mean(spur.good) < 0.05
    good = fits_.good
    assert good.mean() > 0.97
    pull = (fits_.mu - x_true)[good] / fits_.mu_err[good]
    assert 0.85 < np.std(pull) < 1.15 and abs(np.mean(pull)) < 0.1
    crb = lamps.centre_error_limit(amp.ravel(), sig.ravel(), x_true, 20.0, 10.0, 5)
    assert np.median(fits_.mu_err[good] / crb[good]) < 1.1
    summary = linefit.flag_summary(fits_.flags)
    assert (summary["masked"], summary["saturated"], summary["blend"]) == (1, 1, 1)


# --------------------------------------------------------------------------- ThAr


def test_thar_solution_reaches_the_photon_limit(night, thar):
    """Per order and orderlet: rms over columns of c*(fit - true)/true <= 2.5 x the photon
    limit; SEM_MS matches the true zero-point error; lambda monotonic."""
    _, results = thar
    ratios, zp_pulls = [], []
    for chip_name, (_stack, sol) in results.items():
        chip = night[chip_name]
        assert all(s == "fit" for s in sol.status)
        truth = to_orderlet_major(chip.wave, int(chip.order.max()) + 1)
        err = C * (sol.wave - truth) / truth
        for r in range(len(sol.status)):
            limit = photon_limit(chip, chip.thar_placed, sol, r, true_row(chip, r), 5)
            rms = np.sqrt(np.mean(err[r] ** 2))
            ratios.append(rms / limit)
            used = (sol.line_row == r) & sol.line_used
            w = 1 / sol.line_xerr[used] ** 2
            zp = np.sum(w * err[r][np.rint(sol.line_x[used]).astype(int)]) / np.sum(w)
            zp_pulls.append(zp / sol.sem_ms[r])
        assert wls.monotonic(sol.wave)
    ratios = np.array(ratios)
    assert ratios.max() < 2.5, ratios
    assert np.median(ratios) < 1.3
    spread = np.sqrt(np.mean(np.square(zp_pulls)))
    assert 0.5 < spread < 2.0, spread


def test_thar_rejects_blends_and_spurious_lines(night, thar):
    _, results = thar
    stack, sol = results["GREEN"]
    assert sol.extra["blends"] > 0
    chip = night["GREEN"]
    # No used line sits on a catalogue entry absent from the lamp.
    lamp_waves = chip.thar.wave
    used = sol.line_used
    nearest = np.min(np.abs(sol.line_wave[used][:, None] - lamp_waves[None, :]), axis=1)
    assert np.all(C * nearest / sol.line_wave[used] < 50.0)


def test_too_few_lines_keep_the_prior_and_say_so(night, caplog):
    chip = night["GREEN"]
    flux = chip.thar_flux.copy()
    flux[2, :] = np.nan  # no data at all in one row
    prior = chip.wave.copy()
    cat = chip.thar.catalogue
    with caplog.at_level(logging.WARNING, logger="kpfmasters"):
        sol = wls.thar_solution(
            flux, chip.thar_var, prior, cat, labels=[f"r{i}" for i in range(len(prior))]
        )
    assert sol.status[2] == "prior" and np.array_equal(sol.wave[2], prior[2])
    assert "r2: 0 lines located, fewer than 8: prior kept" in caplog.text
    assert sol.status[3] == "fit"


# --------------------------------------------------------------------------- LFC


@pytest.fixture(scope="module")
def lfc_night(night, thar):
    l1 = l1_hdul(night, "lfc", wave_offset_ms=250.0)
    _, results = thar
    return l1, {chip: results[chip][1].wave for chip in results}


def mode_errors(chip, sol):
    """Used lines whose mode number differs from the true line's; number of used lines."""
    wrong, total = 0, 0
    for r in range(len(sol.status)):
        used = (sol.line_row == r) & sol.line_used
        if not used.any():
            continue
        idx = match_true(chip.lfc_placed, true_row(chip, r), sol.line_x[used])
        wrong += int(np.sum(chip.lfc_placed.mode[idx] != sol.line_mode[used]))
        total += int(used.sum())
    return wrong, total


def solve_lfc(night, l1, thar_waves, offset=None):
    prior = {c: thar_waves[c].copy() for c in thar_waves}
    if offset is not None:
        chip, rows, k = offset
        prior[chip][rows] = wls.C_AS / (wls.C_AS / prior[chip][rows] + k * 2.0e10)
    prior_l1 = l1_hdul(night, "lfc", wave=prior)
    return wlsproducts.solve_l1(l1, prior_l1, "lfc", f0=5.22e9, frep=2.0e10)


def test_lfc_modes_right_and_photon_limited(night, lfc_night):
    l1, thar_waves = lfc_night
    results = solve_lfc(night, l1, thar_waves)
    ratios = []
    for chip_name, (_stack, sol) in results.items():
        chip = night[chip_name]
        wrong, total = mode_errors(chip, sol)
        assert wrong == 0 and total > 5000
        assert not np.any(sol.extra["shift"])
        truth = to_orderlet_major(chip.wave, int(chip.order.max()) + 1)
        for r in range(len(sol.status)):
            if sol.status[r] != "fit":
                continue
            rms = np.sqrt(np.mean((C * (sol.wave[r] - truth[r]) / truth[r]) ** 2))
            half = int(np.floor(0.45 * np.median(np.abs(np.diff(chip.lfc_placed.x[
                chip.lfc_placed.row == true_row(chip, r)])))))  # fmt: skip
            ratios.append(
                rms / photon_limit(chip, chip.lfc_placed, sol, r, true_row(chip, r), max(3, half))
            )
        assert wls.monotonic(sol.wave)
    # GREEN's bluest order has no comb light: it keeps the ThAr solution, flagged.
    stack, sol = results["GREEN"]
    dark = stack.order == 0
    assert all(sol.status[r] == "prior" for r in np.nonzero(dark)[0])
    assert np.array_equal(sol.wave[dark], thar_waves["GREEN"][dark])
    assert "no usable comb light" in sol.notes[int(np.nonzero(dark)[0][0])]
    assert all(s == "fit" for s in results["RED"][1].status)
    ratios = np.array(ratios)
    assert ratios.max() < 2.5, ratios
    assert np.median(ratios) < 1.3


@pytest.mark.parametrize("shift", [1, -1, 2, -2])
def test_lfc_whole_order_shift_caught(night, lfc_night, shift):
    """A prior off by whole mode spacings in one order (all its orderlets), or in a single
    orderlet, still gives every mode number right, and the correction is reported."""
    l1, thar_waves = lfc_night
    n = int(night["GREEN"].order.max()) + 1
    rows = np.arange(5) * n + 3  # order 3 of every orderlet
    results = solve_lfc(night, l1, thar_waves, ("GREEN", rows, shift))
    stack, sol = results["GREEN"]
    assert mode_errors(night["GREEN"], sol)[0] == 0
    assert np.all(sol.extra["shift"][rows] == -shift)
    others = np.setdiff1d(np.arange(len(sol.status)), rows)
    assert not np.any(sol.extra["shift"][others])
    one = solve_lfc(night, l1, thar_waves, ("RED", np.array([2]), shift))
    assert mode_errors(night["RED"], one["RED"][1])[0] == 0
    assert one["RED"][1].extra["shift"][2] == -shift


def test_comb_parameters_from_header_or_configuration():
    hdr = fits.Header({"LFCCEOFR": 5.0e9, "LFCFRREF": 2.0e10})
    assert lfc.comb_parameters(hdr, 1.0, 2.0) == (5.0e9, 2.0e10, "header")
    assert lfc.comb_parameters(fits.Header(), 5.22e9, 2e10) == (5.22e9, 2e10, "configuration")
    in_ghz = fits.Header({"LFCCEOFR": 5.22, "LFCFRREF": 20.0})  # a header written in GHz
    assert lfc.comb_parameters(in_ghz, 1.0, 2.0) == (pytest.approx(5.22e9), 2.0e10, "header (GHz)")
    n, lam = lfc.mode_wavelengths(5.22e9, 2e10, 4457.4, 8699.6)
    assert n[0] == 33628 and n[-1] == 17230
    assert np.all(np.diff(lam) > 0)


# --------------------------------------------------------------------------- files


def test_wls_file_layout_and_keywords(tmp_path, night, thar):
    l1, results = thar
    hdul = wlsproducts.wls_hdul(
        l1,
        results,
        "thar",
        "kpf_20230606_master_arclamp_autocal-thar-all-morn_L1.fits",
        inputs=[("wls_prior", "ref.fits", "a" * 32), ("linelist", "thar.txt", "b" * 32)],
    )
    path = write_fits(hdul, tmp_path / "kpf_20230606_master_WLS_autocal-thar-all-morn_L1.fits")
    with fits.open(path, checksum=True) as back:
        names = [h.name for h in back]
        assert names[-4:] == ["TRACE", "WLS_ORDERS", "WLS_LINES", "INPUTS"]
        hdr = back[0].header
        assert hdr["WLSTYPE"] == "thar" and hdr["MONOTWLS"] == 1
        assert hdr["WLSPRIOR"].endswith("autocal-thar-all-morn_L1.fits")
        orders = back["WLS_ORDERS"].data
        assert orders.columns.names == [
            "CHIP",
            "ORDERLET",
            "ORDER",
            "NLINES",
            "NUSED",
            "DEGREE",
            "RMS_MS",
            "SEM_MS",
            "STATUS",
        ]
        assert len(orders) == 5 * 7 + 5 * 5
        fitted = orders["STATUS"] == "fit"
        green = fitted & (orders["CHIP"] == "GREEN")
        assert hdr["WLSRMSG"] == pytest.approx(np.median(orders["RMS_MS"][green]))
        lines = back["WLS_LINES"].data
        assert lines.columns.names == [
            "CHIP",
            "ORDERLET",
            "ORDER",
            "WAVE",
            "X",
            "X_ERR",
            "USED",
            "RESID_MS",
        ]
        used = lines["USED"]
        # Used lines lie within the clipping limit: a few of their own errors (870 m/s / px).
        assert np.all(np.abs(lines["RESID_MS"][used]) < 6 * 870.0 * lines["X_ERR"][used])
        # WAVE replaced by the solution, which is closer to the truth than the +250 m/s prior.
        sci2 = back["GREEN_SCI_WAVE2"].data
        truth = night["GREEN"].wave[2::5]
        err = C * (sci2 - truth) / truth
        assert np.sqrt(np.mean(err**2)) < 10.0 and np.max(np.abs(err)) < 100.0
        assert np.array_equal(back["GREEN_SCI_FLUX2"].data, l1["GREEN_SCI_FLUX2"].data)
        inputs = back["INPUTS"].data
        assert list(inputs["ROLE"]) == ["2d", "wls_prior", "linelist"]


def test_wls_file_needs_trace_and_inputs(thar):
    l1, results = thar
    broken = fits.HDUList([h for h in l1 if h.name != "TRACE"])
    with pytest.raises(InputError, match="x.fits: has no extension TRACE"):
        wlsproducts.wls_hdul(broken, results, "thar", "p.fits", source="x.fits")
    with pytest.raises(InputError, match="has no extension GREEN_SCI_VAR1"):
        wlsproducts.l1_stack(
            fits.HDUList([h for h in l1 if h.name != "GREEN_SCI_VAR1"]), "GREEN", "x.fits"
        )


def test_l2_drift_equals_the_known_offset(tmp_path, thar):
    """The reference WAVE of the arclamp L1 is the truth offset by +250 m/s."""
    l1, results = thar
    solution = wlsproducts.wls_hdul(l1, results, "thar", "reference.fits")
    hdul = wlsproducts.l2_hdul(l1, solution, inputs=[("l1", "a_L1.fits", "c" * 32)])
    path = write_fits(hdul, tmp_path / "kpf_20230606_master_arclamp_autocal-thar-all-morn_L2.fits")
    with fits.open(path) as back:
        hdr = back[0].header
        rv = back["RV"].data
        assert rv.columns.names == ["CHIP", "ORDER", "ORDERLET", "RV_MS", "RV_ERR_MS", "NLINES"]
        for key in ("G", "R"):
            assert abs(hdr[f"DRIFT{key}"] - 250.0) < 3 * hdr[f"DRIFT{key}E"]
            assert hdr[f"DRIFT{key}E"] < 2.0
        pulls = (rv["RV_MS"] - 250.0) / rv["RV_ERR_MS"]
        assert np.sqrt(np.mean(pulls**2)) < 2.0
        assert np.all(rv["NLINES"] > 10)


def test_legendre_fit_clips_outliers():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 4079, 60))
    t = 2 * x / 4079 - 1
    lam = legendre.legval(t, [5000.0, -26.0, 0.01, 0.001])
    err = np.full(60, 1e-4)
    obs = lam + rng.normal(0, 1e-4, 60)
    obs[[5, 40]] += 5e-3
    coeffs, used = wls.fit_legendre_clipped(x, obs, err, 4080, 3, wls.SolveSettings())
    assert not used[5] and not used[40] and used.sum() == 58
    assert np.max(np.abs(legendre.legval(t, coeffs) - lam)) < 1e-4


def row_with_lines(x, err_px=0.002, seed=1, perturb=(0.3, -0.2, 0.25)):
    """A true lambda(x) of a KPF-like row, a prior off by a smooth quadratic (pixels, as
    the simulator's reference) and lines at columns ``x`` measured with ``err_px``."""
    from kpfmasters.sim.spectrograph import wavelengths

    rng = np.random.default_rng(seed)
    true = wavelengths(np.array([120]), ["SCI2"], NCOL, rng)[0]
    cols = np.arange(NCOL, dtype=float)
    u = (cols - NCOL / 2) / (NCOL / 2)
    shift_px = perturb[0] + perturb[1] * u + perturb[2] * u**2
    prior = np.interp(cols + shift_px, cols, true)
    x_obs = np.asarray(x, float) + rng.normal(0, err_px, len(x))
    return true, prior, x_obs, np.interp(x, cols, true)


def velocity_error(wave, true):
    return C * (wave - true) / true


def test_lines_on_part_of_a_row_do_not_bend_the_rest():
    """Lines over 60% of a row: the prior carries the line-free end (a degree-5 series of
    lambda itself, as before, was wrong there by 100-150 m/s on a full-size night)."""
    x = np.linspace(300, 2750, 24)
    true, prior, x_obs, lam = row_with_lines(x)
    sol = wls.solve_row(x_obs, np.full(len(x), 0.002), lam, prior, wls.SolveSettings())
    v = velocity_error(sol.wave, true)
    assert sol.status == "fit" and sol.degree < 5  # lowered by the guard
    assert np.sqrt(np.mean(v[2750:] ** 2)) < 10.0, np.sqrt(np.mean(v[2750:] ** 2))
    assert np.sqrt(np.mean(v[300:2750] ** 2)) < 3.0
    # the degree the guard leaves can still describe the lines: never a straight line
    # through a curved correction
    assert sol.degree >= 2


def test_an_outlier_at_the_end_of_a_row_is_left_out():
    """A bad line at the last column the lines reach: a degree-5 series bends to it (its
    plain residual is small), its studentised one is not."""
    x = np.linspace(80, 3930, 23)
    true, prior, x_obs, lam = row_with_lines(x, seed=2)
    x_obs[-1] += 0.5  # half a pixel: 435 m/s
    settings = wls.SolveSettings(wave_error_ms=3.0)
    sol = wls.solve_row(x_obs, np.full(len(x), 0.002), lam, prior, settings)
    assert not sol.used[-1] and sol.used[:-1].all()
    assert np.sqrt(np.mean(velocity_error(sol.wave, true)[80:3930] ** 2)) < 3.0


def test_catalogue_error_joins_the_weights_and_the_sem():
    """Lines measured to 0.1 m/s on a list good to 3 m/s: RMS_MS and SEM_MS are the list's
    (the SEM is the fit's zero-point error, RMS / sqrt(n) for even lines and weights)."""
    x = np.linspace(20, 4060, 80)
    true, prior, x_obs, lam = row_with_lines(x, err_px=1e-4, seed=3)
    rng = np.random.default_rng(4)
    listed = lam * (1 + rng.normal(0, 3.0, len(x)) / C)
    plain = wls.solve_row(x_obs, np.full(len(x), 1e-4), listed, prior, wls.SolveSettings())
    settings = wls.SolveSettings(wave_error_ms=3.0)
    sol = wls.solve_row(x_obs, np.full(len(x), 1e-4), listed, prior, settings)
    assert 2.4 < sol.rms_ms < 3.6
    assert sol.sem_ms == pytest.approx(sol.rms_ms / np.sqrt(sol.used.sum()), rel=0.25)
    zero_point = np.mean(velocity_error(sol.wave, true)[20:4060])
    assert abs(zero_point) < 3 * sol.sem_ms
    assert plain.rms_ms == pytest.approx(sol.rms_ms, rel=0.1)  # equal weights either way


def test_guarded_degree_keeps_full_coverage_and_adequacy():
    t = np.linspace(-1, 1, 50)
    y = legendre.legval(t, [0.0, 1e-3, 5e-4, 2e-4])
    w = np.full(50, 1e4)
    cols = np.linspace(-1, 1, 400)
    assert wls.guarded_degree(t, y, w, cols, 5, 2.0) == 5  # lines reach both ends
    part = t < 0.3
    got = wls.guarded_degree(t[part], y[part], w[part], cols, 5, 2.0)
    assert 3 <= got < 5  # lowered, but not below the cubic the lines need


def test_qa_warns_on_prior_fallback_and_rms_jump():
    from kpfmasters.qa.wls_figures import wls_warnings

    now = {"file": "a.fits", "orders_at_prior": ["GREEN SKY order 0"], "monotonic": True,
           "median_rms_ms": {"GREEN": 9.0, "RED": 3.0}}  # fmt: skip
    before = {"file": "b.fits", "median_rms_ms": {"GREEN": 3.0, "RED": 2.9}}
    warnings = wls_warnings(now, before, 2.0)
    assert len(warnings) == 2
    assert "1 orders x orderlets kept the prior (GREEN SKY order 0)" in warnings[0]
    assert "GREEN median RMS 9.00 m/s is 3.0 x the previous solution's (b.fits" in warnings[1]
    assert wls_warnings({**now, "orders_at_prior": []}, before, None) == []
