"""The four masters of a simulated night, made by the real workflow, against the truth.

One Snakemake run (module fixture) on a small noisy night; every test reads its products
back with astropy. Tolerances are derived from the simulated noise and stated where used.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters import __version__
from kpfmasters.core.config import load_config
from kpfmasters.science.flat import normalize_flat
from kpfmasters.science.master import MasterJob, build_master
from kpfmasters.sim.simulate import simulate_night
from tests.smk import Night, snakemake

DATE = "20230606"
COUNTS = {
    "bias": 14,
    "dark": 5,
    "flat": 8,
    "arclamp": {"autocal-une-sky": 5, "autocal-thar-all-eve": 5},
}
# One-pass clipping of N Gaussian samples at k ~ 2 with sample percentiles inflates the
# scatter of the clipped mean over sigma/sqrt(N) by ~12% for N = 12..14 (measured on 10^5
# pixels of pure Gaussian noise with the reference implementation).
CLIP_INFLATION = 1.12

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("masters")]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("night")
    n = Night(root, [DATE])
    sim = simulate_night(root / "sim", DATE, seed=3, size=128, counts=COUNTS)
    snakemake(n)
    n.sim = sim
    return n


def hdul(night, kind):
    return fits.open(night.master(DATE, kind), checksum=True)


def amp_noise(truth, shape):
    """Per-pixel read noise image (electrons) from the per-amplifier values (2-amp mode)."""
    rn = np.full(shape, truth.read_noise[0], dtype=np.float64)
    if len(truth.read_noise) > 1:
        rn[:, shape[1] // 2 :] = truth.read_noise[1]
    return rn


MASTERS = ["bias", "dark", "flat", "arclamp_autocal-une-sky", "arclamp_autocal-thar-all-eve"]


@pytest.mark.parametrize("kind", MASTERS)
def test_layout_dtypes_and_keywords(night, kind):
    with hdul(night, kind) as h:
        names = [x.name for x in h]
        exts = ["GREEN_CCD", "RED_CCD"] + ([] if kind.startswith("arclamp") else ["CA_HK"])
        expected = ["PRIMARY", *exts]
        for e in exts:
            expected += [f"{e}_UNC", f"{e}_CNT"]
        if kind == "flat":
            expected += ["GREEN_CCD_STACK", "GREEN_CCD_LAMP", "RED_CCD_STACK", "RED_CCD_LAMP"]
        assert names == expected + ["INPUTS"]
        for e in exts:
            assert h[e].data.dtype == np.dtype(">f8")
            assert h[f"{e}_UNC"].data.dtype == np.dtype(">f4")
            assert h[f"{e}_CNT"].data.dtype == np.dtype(">i4")
        if kind == "flat":
            assert all(
                h[n].data.dtype == np.dtype(">f4") for n in names if n.endswith(("_STACK", "_LAMP"))
            )
        p = h[0].header
        mtype = kind.split("_")[0]
        assert (
            p["IMTYPE"]
            == {"bias": "Bias", "dark": "Dark", "flat": "Flat", "arclamp": "Arclamp"}[mtype]
        )
        assert p["NSIGMA"] == {"bias": 2.1, "dark": 2.2, "flat": 2.3, "arclamp": 2.4}[mtype]
        assert p["SOFTVER"] == __version__ and len(p["CFGHASH"]) == 16
        units = {
            "bias": ("electrons", "DN"),
            "dark": ("electrons/sec", "DN/sec"),
            "flat": ("dimensionless", "dimensionless"),
            "arclamp": ("electrons/sec", "DN/sec"),
        }[mtype]
        for e in exts:
            x = h[e].header
            assert x["BUNIT"] == (units[1] if e == "CA_HK" else units[0])
            for key in ("NFRAMES", "MINMJD", "MAXMJD", "MIDMJD", "DATE-MID", "INFOBITS"):
                assert x[key] == p[key], (e, key)
            assert "CHECKSUM" in x and "DATASUM" in x
        inputs = {
            "bias": (),
            "dark": ("INPBIAS",),
            "flat": ("INPBIAS", "INPDARK"),
            "arclamp": ("INPBIAS", "INPDARK", "INPFLAT"),
        }[mtype]
        for key, name in zip(
            ("INPBIAS", "INPDARK", "INPFLAT"), ("bias", "dark", "flat"), strict=True
        ):
            if key in inputs:
                assert p[key] == f"kpf_{DATE}_master_{name}.fits"
            else:
                assert key not in p


@pytest.mark.parametrize("kind", MASTERS)
def test_inputs_are_exactly_the_selected_frames(night, kind):
    mtype, _, obj = kind.partition("_")
    expected = night.sim.expected(mtype, obj or None)
    with hdul(night, kind) as h:
        table = h["INPUTS"].data
        assert list(table["L0FILE"]) == [f.name for f in expected]
        assert list(table["FILENAME"]) == [f.name.replace(".fits", "_2D.fits") for f in expected]
        assert all(table["USED"])
        assert np.allclose(table["MJD_OBS"], [f.mjd_obs for f in expected], rtol=0, atol=1e-9)
        assert h[0].header["NFRAMES"] == len(expected)
        assert h[0].header["MINMJD"] == pytest.approx(min(f.mjd_obs for f in expected), abs=1e-9)
        assert h[0].header["MAXMJD"] == pytest.approx(max(f.mjd_obs for f in expected), abs=1e-9)
        mid = 0.5 * (h[0].header["MINMJD"] + h[0].header["MAXMJD"])
        assert h[0].header["MIDMJD"] == mid
        when = dt.datetime(1858, 11, 17) + dt.timedelta(days=mid)
        got = dt.datetime.fromisoformat(h[0].header["DATE-MID"])
        assert abs((got - when).total_seconds()) <= 0.0005
        if obj:
            assert h[0].header["OBJECT"] == obj
    unwanted = [f.name for f in night.sim.frames if f.expected_master is None]
    assert unwanted and not set(unwanted) & set(table["L0FILE"])


@pytest.mark.parametrize("ext", ["GREEN_CCD", "RED_CCD", "CA_HK"])
def test_bias_recovers_truth(night, ext):
    truth = night.sim.ccds[ext]
    n = COUNTS["bias"]
    with hdul(night, "bias") as h:
        resid = h[ext].data - truth.bias
        unc = h[f"{ext}_UNC"].data
    sigma = amp_noise(truth, resid.shape) / np.sqrt(n)  # error of a plain mean, per pixel
    z = resid / sigma
    # Mean level: any bias offset (e.g. a wrong overscan) shows as a shifted median of z;
    # 0.1 sigma of a single pixel is ~2 orders of magnitude above its sampling error here.
    assert abs(np.median(z)) < 0.1
    # Scatter: sigma/sqrt(N) inflated by one-pass clipping; 15% margin for 16k-pixel samples.
    assert 0.9 < np.std(z) < CLIP_INFLATION * 1.15
    # UNC is the documented formula: on pure noise it runs ~10-20% under the true error at N = 14.
    assert 0.75 < np.median(unc / sigma) < 1.05


@pytest.mark.parametrize("ext", ["GREEN_CCD", "RED_CCD"])
def test_dark_recovers_truth(night, ext):
    truth = night.sim.ccds[ext]
    t, n, nb = 600.0, COUNTS["dark"], COUNTS["bias"]
    with hdul(night, "dark") as h:
        master = h[ext].data
    rn = amp_noise(truth, master.shape)
    per_frame = np.sqrt(rn**2 + truth.dark * t) / t
    sigma = np.sqrt((CLIP_INFLATION * per_frame) ** 2 / n + (rn / np.sqrt(nb) / t) ** 2)
    z = (master - truth.dark) / sigma
    assert abs(np.median(z)) < 0.1
    assert 0.85 < np.std(z) < 1.3
    hot = truth.dark > 0.5
    assert hot.sum() >= 1
    # hot pixels (0.5-5 e-/s) come back to within 5 sigma each
    assert np.all(np.abs(z[hot]) < 5)


@pytest.mark.parametrize("ext", ["GREEN_CCD", "RED_CCD"])
def test_flat_recovers_truth(night, ext):
    truth = night.sim.ccds[ext]
    mask = truth.order_mask
    ideal = (truth.prnu * truth.lamp).astype(np.float64)  # noise-free stack, e-/s
    flat_cfg = load_config(overrides={"date": DATE})["masters"]["flat"]
    expected = normalize_flat(
        ideal,
        np.zeros_like(ideal),
        mask,
        smooth_sigma=flat_cfg["smooth_sigma"],
        low_light_limit=flat_cfg["low_light_limit"],
    ).flat
    with hdul(night, "flat") as h:
        flat, stack, unc = h[ext].data, h[f"{ext}_STACK"].data, h[f"{ext}_UNC"].data
    # The unnormalised stack is the lamp times the pixel response: shot noise of 8 x 30 s
    # at >= 200 e-/s is < 0.5% per pixel; allow 2% for the faintest pixels used.
    bright = ideal >= 200
    assert np.median(np.abs(stack[bright] / ideal[bright] - 1)) < 0.005
    assert np.percentile(np.abs(stack[bright] / ideal[bright] - 1), 99) < 0.02
    # Unity outside the traces and below the low-light limit, UNC 0 there.
    unity = (mask == 0) | (stack < 50)
    assert np.all(flat[unity] == 1.0) and np.all(unc[unity] == 0)
    # On the traces: within an orderlet the master is the noise-free answer times one
    # constant (the ratio of the two per-orderlet modes). The mode of stack/blur, taken on a
    # 0.01 grid over a narrow trace profile, is a broad histogram whose peak noise can move
    # by a few bins, so the constant is within 5%; pixel to pixel the match is to the shot
    # noise (< 1% robust scatter).
    for v in range(1, 6):
        sel = (mask == v) & (ideal >= 200) & ~unity
        ratio = flat[sel] / expected[sel]
        med = np.median(ratio)
        assert abs(med - 1) < 0.05, (v, med)
        mad = 1.4826 * np.median(np.abs(ratio / med - 1))
        assert mad < 0.01, (v, mad)


@pytest.mark.parametrize("obj", ["autocal-une-sky", "autocal-thar-all-eve"])
def test_arclamp_recovers_truth(night, obj):
    for ext in ("GREEN_CCD", "RED_CCD"):
        truth = night.sim.ccds[ext]
        with hdul(night, "flat") as h:
            flat = h[ext].data
        with hdul(night, f"arclamp_{obj}") as h:
            arc = h[ext].data
        # Each frame is (x - bias)/t - dark = prnu * arc + noise; the master divides by the
        # master flat. Lines brighter than 300 e-/s (9000 e- a frame) have < 2% shot noise
        # in the 5-frame mean.
        expected = truth.prnu * truth.arc[obj] / flat
        lines = truth.arc[obj] * truth.prnu >= 300
        assert lines.sum() > 20
        ratio = arc[lines] / expected[lines]
        assert abs(np.median(ratio) - 1) < 0.01
        assert np.percentile(np.abs(ratio - 1), 95) < 0.03


def subset_job(night, n, out):
    """A bias MasterJob on the first n bias frames of the built night (2D files exist)."""
    frames = night.sim.expected("bias")[:n]
    rows = [
        {
            "FILENAME": f.name.replace(".fits", "_2D.fits"),
            "L0FILE": f.name,
            "MJD_OBS": f.mjd_obs,
            "EXPTIME": 0.0,
            "USED": True,
            "REASON": "",
        }
        for f in frames
    ]
    paths = [str(night.work_root / "2D" / DATE / r["FILENAME"]) for r in rows]
    from kpfmasters.core.config import load_config

    cfg = load_config(overrides={"date": DATE})
    settings = cfg["masters"]["bias"]
    return MasterJob(
        "bias", DATE, str(out), paths, rows, settings, cfg["stack"], cfg["flag_fraction"]
    )


@pytest.mark.parametrize("n, expect_bits", [(6, 7), (14, 0)])
def test_infobits_follow_low_count_fraction(night, tmp_path, n, expect_bits):
    summary = build_master(subset_job(night, n, tmp_path / "bias.fits"))
    assert summary["infobits"] == expect_bits
    with fits.open(tmp_path / "bias.fits") as h:
        assert h[0].header["INFOBITS"] == expect_bits
        for ext in ("GREEN_CCD", "RED_CCD", "CA_HK"):
            frac = np.mean(h[f"{ext}_CNT"].data < 10)
            assert (frac > 0.01) == bool(
                expect_bits & (1 << ("GREEN_CCD", "RED_CCD", "CA_HK").index(ext))
            )


def test_twelve_frame_bias_follows_the_rule(night, tmp_path):
    """With 12 frames, 3 rejections give CNT < 10. One-pass clipping at 2.1 sample sigma
    rejects ~6.5% of Gaussian samples at N = 12, so ~2.6% of pixels fall below 10: the bit
    is set, as the documented rule says (it clears from ~14 frames)."""
    build_master(subset_job(night, 12, tmp_path / "bias.fits"))
    with fits.open(tmp_path / "bias.fits") as h:
        frac = np.mean(h["GREEN_CCD_CNT"].data < 10)
        assert 0.01 < frac < 0.05
        assert h[0].header["INFOBITS"] & 1


def two_d_paths(night, frames):
    return [
        str(night.work_root / "2D" / DATE / f.name.replace(".fits", "_2D.fits")) for f in frames
    ]


def rows_of(frames):
    return [
        {
            "FILENAME": f.name.replace(".fits", "_2D.fits"),
            "L0FILE": f.name,
            "MJD_OBS": f.mjd_obs,
            "EXPTIME": f.exptime,
            "USED": True,
            "REASON": "",
        }
        for f in frames
    ]


def test_predecessor_without_an_extension_costs_only_that_extension(night, tmp_path):
    """An older bias without CA_HK: the dark is made for GREEN and RED, CA_HK left out and
    the INPUTS table says why."""
    from kpfmasters.io.fits import write_fits

    old_bias = tmp_path / "kpf_20230601_master_bias.fits"
    with fits.open(night.master(DATE, "bias")) as h:
        keep = [x.copy() for x in h if not x.name.startswith("CA_HK")]
        write_fits(fits.HDUList(keep), old_bias)
    darks = night.sim.expected("dark")
    cfg = load_config(overrides={"date": DATE})
    settings = cfg["masters"]["dark"]
    out = tmp_path / "dark.fits"
    job = MasterJob(
        "dark",
        DATE,
        str(out),
        two_d_paths(night, darks),
        rows_of(darks),
        settings,
        cfg["stack"],
        cfg["flag_fraction"],
        predecessors={"bias": str(old_bias)},
    )
    build_master(job)
    with fits.open(out) as h:
        assert [x.name for x in h][:3] == ["PRIMARY", "GREEN_CCD", "RED_CCD"]
        assert "CA_HK" not in h
        comments = " ".join(str(c) for c in h["INPUTS"].header["COMMENT"])
        assert "CA_HK left out" in comments and old_bias.name in comments
        with fits.open(night.master(DATE, "dark")) as made:
            np.testing.assert_array_equal(h["GREEN_CCD"].data, made["GREEN_CCD"].data)


def test_order_mask_with_a_ca_hk_image_is_read_for_green_and_red_only(night, tmp_path):
    """KPF's order masks are copies of a 2D file and may carry a CA_HK image (of another
    shape): it is ignored, the flat is the same."""
    from kpfmasters.io.fits import write_fits

    mask = tmp_path / "mask_with_cahk.fits"
    with fits.open(night.order_mask) as h:
        hdus = [x.copy() for x in h]
    hdus.append(fits.ImageHDU(np.full((7, 9), 3, dtype=np.int16), name="CA_HK"))
    write_fits(fits.HDUList(hdus), mask)
    flats = night.sim.expected("flat")
    cfg = load_config(overrides={"date": DATE})
    settings = cfg["masters"]["flat"]
    out = tmp_path / "flat.fits"
    preds = {m: str(night.master(DATE, m)) for m in ("bias", "dark")}
    job = MasterJob(
        "flat",
        DATE,
        str(out),
        two_d_paths(night, flats),
        rows_of(flats),
        settings,
        cfg["stack"],
        cfg["flag_fraction"],
        predecessors=preds,
        order_mask=str(mask),
    )
    build_master(job)
    with fits.open(out) as h, fits.open(night.master(DATE, "flat")) as made:
        for ext in ("GREEN_CCD", "RED_CCD", "CA_HK"):
            np.testing.assert_array_equal(h[ext].data, made[ext].data)


def test_mid_time_is_the_mean_instant_in_utc():
    from kpfmasters.science.master import mid_time

    assert mid_time(60101.25, 60101.75) == (60101.5, "2023-06-06T12:00:00.000")
    mid, iso = mid_time(60101.0, 60101.0 + 1.0 / 86400 / 1000 * 1.6)  # 1.6 ms apart
    assert iso == "2023-06-06T00:00:00.001"  # 0.8 ms, rounded to the millisecond
