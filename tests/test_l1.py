"""Order traces and L1 spectra of a small simulated night, made by a real Snakemake run."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters.science.extract import aperture_weights, box_extract
from kpfmasters.science.l1 import L1_ORDERLETS, L1Job, build_l1, ext_name, l1_extension_names
from kpfmasters.science.stack import stack_cube
from kpfmasters.science.traces import ORDERLETS, read_traces
from kpfmasters.sim.simulate import expected_2d, simulate_night
from tests.smk import Night, snakemake

DATE = "20230606"
SIZE = 128
COUNTS = {"bias": 12, "dark": 5, "flat": 8, "arclamp": 3}
KINDS = ("bias", "dark", "flat", "arclamp_autocal-une-all-morn", "arclamp_autocal-thar-all-morn")
CCDS = ("GREEN_CCD", "RED_CCD")
UNITS = {"bias": "electrons", "dark": "electrons/sec", "flat": "dimensionless"}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("l1")]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("l1")
    night = Night(root, [DATE])
    night.sim = simulate_night(root / "sim", DATE, seed=11, size=SIZE, counts=COUNTS)
    night.extra_config = {"wls": {"reference": str(night.sim.wls_reference_path)}}
    snakemake(night)
    return night


def l1_path(night, kind):
    return night.masters_root / DATE / f"kpf_{DATE}_master_{kind}_L1.fits"


def trace_path(night, ccd):
    return night.masters_root / DATE / f"kpf_{DATE}_master_flat_{ccd}.csv"


def straight_box(image, unc, traces):
    """The box definition written plainly, one trace, column and row at a time."""
    nrows, ncols = image.shape
    flux = np.full((len(traces), ncols), np.nan)
    var = np.full((len(traces), ncols), np.nan)
    for i in range(len(traces)):
        for x in range(int(traces.x1[i]), int(traces.x2[i]) + 1):
            yc = sum(c * float(x) ** k for k, c in enumerate(traces.coeffs[i]))
            lo, hi = yc - traces.bottom[i], yc + traces.top[i]
            f = v = lost = 0.0
            for r in range(math.floor(lo) - 1, math.ceil(hi) + 2):
                w = max(0.0, min(hi, r + 0.5) - max(lo, r - 0.5))
                if w == 0.0:
                    continue
                if not (0 <= r < nrows) or not (
                    np.isfinite(image[r, x]) and np.isfinite(unc[r, x])
                ):
                    lost += w
                    continue
                f += w * float(image[r, x])
                v += w * w * float(unc[r, x]) ** 2
            if lost <= 0.5 * (hi - lo):
                flux[i, x], var[i, x] = f, v
    return flux, var


def by_trace(hdul, chip, traces, kind):
    """Rows of the L1 images in trace order (n_traces, ncols)."""
    return np.array(
        [
            hdul[ext_name(chip, fiber, kind)].data[order]
            for fiber, order in zip(traces.fiber, traces.order, strict=True)
        ]
    )


# --------------------------------------------------------------------------- traces


@pytest.mark.parametrize("ccd", CCDS)
def test_traces_have_the_right_orderlet_order_and_centre(night, ccd):
    """Every true trace is found once, with its orderlet and order; the fitted centres are
    within 0.05 px rms of the truth, and near the photon limit of the lamp stack."""
    traces = read_traces(trace_path(night, ccd))
    spec = night.sim.ccds[ccd].spectrograph
    assert len(traces) == len(spec.fiber)
    assert sorted(zip(traces.fiber, traces.order.tolist(), strict=True)) == sorted(
        zip(spec.fiber, spec.order.tolist(), strict=True)
    )
    assert traces.fiber[:5] == list(ORDERLETS)  # bottom to top
    fitted = traces.centres(SIZE)
    errors = np.array(
        [
            fitted[traces.find(f, o)] - spec.centres[i]
            for i, (f, o) in enumerate(zip(spec.fiber, spec.order, strict=True))
        ]
    )
    rms = float(np.sqrt(np.mean(errors**2)))
    assert rms < 0.05
    # Photon limit: the centroid error per column from the stack's noise (Poisson light and
    # read noise over the frames), then the fit of degree 3 over the columns.
    truth = night.sim.ccds[ccd]
    frames = night.sim.expected("flat")
    t = frames[0].exptime
    n = len(frames)
    light = np.asarray(truth.prnu) * np.asarray(truth.lamp)
    rn = max(truth.read_noise)
    rows, w = aperture_weights(spec.centres, traces.bottom, traces.top)
    value = light[np.clip(rows, 0, SIZE - 1), np.arange(SIZE)]
    var = (value * t + rn**2) / t**2 / n
    dy = rows - spec.centres[:, None, :]
    sigma_c = np.sqrt((w * w * dy * dy * var).sum(axis=1)) / (w * value).sum(axis=1)
    limit = float(np.sqrt(np.mean(sigma_c**2) * 4 / SIZE))
    print(f"{ccd}: centre rms {rms:.4f} px, photon limit {limit:.4f} px")
    assert rms < 0.05 and limit < rms


def test_trace_file_is_kpf_csv(night):
    text = trace_path(night, "GREEN_CCD").read_text().splitlines()
    assert text[0] == ",Coeff0,Coeff1,Coeff2,Coeff3,BottomEdge,TopEdge,X1,X2,Fiber,Order"
    first = text[1].split(",")
    assert first[0] == "0" and first[-2] == "SKY" and first[-1] == "0"
    traces = read_traces(trace_path(night, "GREEN_CCD"))
    assert (traces.bottom > 0).all() and (traces.top > 0).all()
    assert (traces.x1 == 0).all() and (traces.x2 == SIZE - 1).all()


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("kind", KINDS)
def test_l1_layout_units_and_keywords(night, kind):
    path = l1_path(night, kind)
    traces = {c: read_traces(trace_path(night, c)) for c in CCDS}
    with fits.open(path, checksum=True) as hdul, fits.open(night.master(DATE, kind)) as m:
        names = [h.name for h in hdul]
        images = l1_extension_names(blaze=kind == "flat")
        assert names == ["PRIMARY", *images, "TRACE", "INPUTS"]
        unit = UNITS.get(kind, "electrons/sec")
        for name in images:
            hdu = hdul[name]
            chip = name.split("_")[0]
            assert hdu.data.dtype == np.dtype(">f8")
            assert hdu.data.shape == (traces[f"{chip}_CCD"].n_orders, SIZE)
            expected = {
                "FLUX": unit,
                "VAR": {"electrons": "electrons**2", "dimensionless": "dimensionless"}.get(
                    unit, f"({unit})**2"
                ),
                "WAVE": "Angstrom",
                "BLAZE": "electrons/sec",
            }
            assert hdu.header["BUNIT"] == next(v for k, v in expected.items() if k in name)
        head = hdul[0].header
        own = {"SOFTVER", "CFGHASH", "DATE", "CHECKSUM", "DATASUM", "EXTEND"}
        for key in set(m[0].header) - own - {"COMMENT", "HISTORY", ""}:
            assert head[key] == m[0].header[key], key  # the 2D master's PRIMARY, copied
        assert head["TRACFGRN"] == trace_path(night, "GREEN_CCD").name
        assert head["TRACFRED"] == trace_path(night, "RED_CCD").name
        assert head["EXTMETH"] == "box"
        assert head["WLSFILE"] == "wls_reference.fits"
        assert head["SOFTVER"] and head["CFGHASH"]
        table = hdul["TRACE"].data
        assert len(table) == sum(len(t) for t in traces.values())
        assert list(table["CHIP"][:1]) == ["GREEN"]
        inputs = {r["ROLE"]: (r["FILENAME"], r["MD5"]) for r in hdul["INPUTS"].data}
        files = {
            "master2d": night.master(DATE, kind),
            "trace_GREEN_CCD": trace_path(night, "GREEN_CCD"),
            "trace_RED_CCD": trace_path(night, "RED_CCD"),
            "wls": night.sim.wls_reference_path,
        }
        assert set(inputs) == set(files)
        for role, path in files.items():
            assert inputs[role] == (path.name, hashlib.md5(path.read_bytes()).hexdigest())
        # WAVE is the reference's
        with fits.open(night.sim.wls_reference_path) as ref:
            for chip in ("GREEN", "RED"):
                for o in L1_ORDERLETS:
                    name = ext_name(chip, o, "WAVE")
                    np.testing.assert_array_equal(hdul[name].data, ref[name].data)


def test_wave_reference_is_truth_plus_a_smooth_perturbation(night):
    with fits.open(night.sim.wls_reference_path) as ref:
        for ccd in CCDS:
            spec = night.sim.ccds[ccd].spectrograph
            truth = spec.by_order(np.asarray(spec.wave))
            for o in L1_ORDERLETS:
                got = ref[ext_name(ccd.split("_")[0], o, "WAVE")].data
                dv = 299792.458 * (got / truth[o] - 1)  # km/s
                assert np.nanmax(np.abs(dv)) < 3 * 0.5 * 0.87 + 1e-9
                assert np.nanmax(np.abs(np.diff(dv, 2, axis=1))) < 1e-3  # smooth
            wave = np.asarray(spec.wave)
            assert (np.diff(wave, axis=1) < 0).all()  # decreasing with x
            step = -np.diff(wave, axis=1) / wave[:, 1:] * 299792.458
            assert 0.85 < step.min() and step.max() < 0.89  # ~0.87 km/s per pixel
            first = {"GREEN_CCD": 137, "RED_CCD": 102}[ccd]
            assert spec.echelle[0] == first
            mid = wave[:, SIZE // 2] * spec.echelle
            assert np.allclose(mid, 6.140e5, rtol=2e-3)
            # per-orderlet offsets: the orderlets of an order differ
            assert np.ptp(wave[:5, SIZE // 2]) > 0.1 * wave[0, 1] - 0.1 * wave[0, 2]


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("kind", ["bias", "flat", "arclamp_autocal-thar-all-morn"])
def test_extraction_equals_the_box_definition(night, kind):
    """FLUX and VAR equal the plain implementation on the product's own 2D master and traces
    (to 1e-10 relative), and the flat's BLAZE is the same extraction of the stack."""
    with fits.open(l1_path(night, kind)) as hdul, fits.open(night.master(DATE, kind)) as m:
        for ccd in CCDS:
            chip = ccd.split("_")[0]
            traces = read_traces(trace_path(night, ccd))
            flux, var = straight_box(m[ccd].data, m[f"{ccd}_UNC"].data, traces)
            got_f = by_trace(hdul, chip, traces, "FLUX")
            got_v = by_trace(hdul, chip, traces, "VAR")
            np.testing.assert_array_equal(np.isnan(got_f), np.isnan(flux))
            np.testing.assert_allclose(got_f, flux, rtol=1e-10, atol=0)
            np.testing.assert_allclose(got_v, var, rtol=1e-10, atol=0)
            if kind == "flat":
                stack = m[f"{ccd}_STACK"].data
                blaze, _ = straight_box(stack, np.zeros_like(stack), traces)
                got = by_trace(hdul, chip, traces, "BLAZE")
                np.testing.assert_allclose(got, blaze, rtol=1e-10, atol=0)


def test_nan_pixels_and_lost_aperture(night, tmp_path):
    """NaN pixels are left out; a column losing more than half of its aperture is NaN."""
    src = night.master(DATE, "bias")
    bad = tmp_path / f"kpf_{DATE}_master_bias.fits"
    traces = read_traces(trace_path(night, "GREEN_CCD"))
    yc = traces.centres(SIZE)
    with fits.open(src) as hdul:
        image = hdul["GREEN_CCD"].data
        centre = int(np.floor(yc[7, 40] + 0.5))
        image[centre, 40] = np.nan  # one pixel of a column: kept, with less weight
        image[centre - 3 : centre + 4, 60] = np.nan  # the whole aperture of column 60
        hdul["GREEN_CCD_UNC"].data[centre, 80] = np.nan  # a NaN UNC too
        hdul.writeto(bad, checksum=True)
        unc = hdul["GREEN_CCD_UNC"].data
        flux, var = straight_box(image, unc, traces)
    out = tmp_path / "l1.fits"
    build_l1(
        L1Job(
            str(bad),
            str(out),
            {c: str(trace_path(night, c)) for c in CCDS},
            str(night.sim.wls_reference_path),
        )
    )
    with fits.open(out) as hdul:
        got = by_trace(hdul, "GREEN", traces, "FLUX")
        np.testing.assert_allclose(got, flux, rtol=1e-10, atol=0)
        np.testing.assert_allclose(by_trace(hdul, "GREEN", traces, "VAR"), var, rtol=1e-10)
        assert np.isfinite(got[7, 40]) and np.isnan(got[7, 60]) and np.isfinite(got[7, 80])


def pull_scatter_expected(nframes, nsigma, weights, rng, samples=20000):
    """Robust scatter of (sum w AVG) / sqrt(sum w^2 UNC^2) for unit Gaussian frames stacked
    by the product's own clipped stack (the stack UNC is low for few frames)."""
    k = weights.shape[1]
    pick = weights[rng.integers(0, len(weights), samples)]
    cube = rng.standard_normal((nframes, samples, k))
    res = stack_cube(cube, nsigma)
    pulls = (pick * res.avg).sum(axis=1) / np.sqrt((pick**2 * res.unc.astype(float) ** 2).sum(1))
    return robust_scatter(pulls)


def robust_scatter(x):
    p16, p84 = np.nanpercentile(x, [16, 84])
    return 0.5 * (p84 - p16)


@pytest.mark.parametrize("kind", ["bias", "dark"])
def test_bias_and_dark_agree_with_the_truth_within_var(night, kind):
    frames = night.sim.expected(kind)
    expected = expected_2d(night.sim, frames[0])
    nsigma = {"bias": 2.1, "dark": 2.2}[kind]
    rng = np.random.default_rng(1)
    with fits.open(l1_path(night, kind)) as hdul:
        pulls, weights = [], []
        for ccd in CCDS:
            chip = ccd.split("_")[0]
            traces = read_traces(trace_path(night, ccd))
            truth = expected[ccd]
            if kind == "dark":
                with fits.open(night.master(DATE, "bias")) as b:
                    truth = (truth - b[ccd].data) / frames[0].exptime
            want, _ = box_extract(traces, truth)
            flux = by_trace(hdul, chip, traces, "FLUX")
            var = by_trace(hdul, chip, traces, "VAR")
            pulls.append(((flux - want) / np.sqrt(var)).ravel())
            _, w = aperture_weights(traces.centres(SIZE), traces.bottom, traces.top)
            weights.append(np.moveaxis(w, 1, 2).reshape(-1, w.shape[1]))
    pulls = np.concatenate(pulls)
    expect = pull_scatter_expected(len(frames), nsigma, np.concatenate(weights), rng)
    got = robust_scatter(pulls)
    print(
        f"{kind}: {len(frames)} frames, pull median {np.median(pulls):.3f}, scatter {got:.3f}"
        f" (expected {expect:.3f} from the stack's UNC)"
    )
    assert abs(np.median(pulls)) < 0.1
    assert expect > 1.0  # the UNC of a few frames runs low
    assert abs(got / expect - 1) < 0.08


def test_flat_blaze_matches_the_true_lamp(night):
    """BLAZE (the extracted lamp stack, e-/s) against the true lamp light in the same
    apertures: median ratio within 0.5 % where the lamp is bright."""
    with fits.open(l1_path(night, "flat")) as hdul:
        for ccd in CCDS:
            chip = ccd.split("_")[0]
            traces = read_traces(trace_path(night, ccd))
            truth = night.sim.ccds[ccd]
            want, _ = box_extract(traces, np.asarray(truth.lamp, dtype=np.float64))
            got = by_trace(hdul, chip, traces, "BLAZE")
            bright = want > 0.2 * np.nanmax(want)
            ratio = float(np.median(got[bright] / want[bright]))
            spec = truth.spectrograph
            own = np.empty_like(got)
            for i, (f, o) in enumerate(zip(spec.fiber, spec.order, strict=True)):
                own[traces.find(f, o)] = spec.lamp[i]
            own_ratio = float(np.median(got[bright] / own[bright]))
            print(
                f"{ccd}: BLAZE / true lamp in aperture = {ratio:.4f}; "
                f"/ the orderlet's whole light = {own_ratio:.4f}"
            )
            assert abs(ratio - 1) < 0.005
