"""The simulated night: L0 format (docs/reference.md §1), selection truth, physics, truth I/O."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from kpfmasters.cli import main
from kpfmasters.core.naming import parse_l0_name
from kpfmasters.sim.simulate import (
    Geometry,
    expected_2d,
    load_truth,
    pedestal_raw,
    simulate_night,
)

REPO = Path(__file__).resolve().parents[1]
DATE = "20230606"
TINY = {"bias": 2, "dark": 1, "flat": 1, "arclamp": 1}
CCDS = ("GREEN_CCD", "RED_CCD")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """The default night, small, with noise."""
    return simulate_night(tmp_path_factory.mktemp("noisy"), DATE, seed=3)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """Noise-free, 2 amplifiers, 64 x 64 CCDs."""
    return simulate_night(
        tmp_path_factory.mktemp("quiet"), DATE, seed=4, size=64, noise=False, counts=TINY
    )


@pytest.fixture(scope="module")
def quiet4(tmp_path_factory):
    """Noise-free, 4 amplifiers, 64 x 64 CCDs, odd-sized CA_HK."""
    return simulate_night(
        tmp_path_factory.mktemp("quiet4"),
        DATE,
        seed=5,
        size=64,
        amps=4,
        noise=False,
        counts=TINY,
        cahk_shape=(20, 50),
    )


# ----------------------------------------------------------------- helpers (independent)


def amp_names(amps):
    return [f"{c}_AMP{i}" for c in ("GREEN", "RED") for i in range(1, amps + 1)]


def orient(raw, amp):
    """Flip amplifier ``amp`` (1-based) so it reads prescan | data | overscan, overscan on top."""
    if amp in (2, 4):
        raw = raw[:, ::-1]
    if amp in (3, 4):
        raw = raw[::-1, :]
    return raw


def tiny_2d(path, geom: Geometry):
    """Own L0 -> 2D (docs/reference.md §2) with a plain mean as the overscan level (noise-free)."""
    result = {}
    with fits.open(path) as hdul:
        for ccd in CCDS:
            color = ccd.split("_")[0]
            tiles = []
            for amp in range(1, geom.amps + 1):
                hdu = hdul[f"{color}_AMP{amp}"]
                e = orient(hdu.data.astype(np.float64), amp) / geom.adc_scale
                e *= hdu.header["CCDGAIN"]
                nrows, ncols = e.shape
                ndata = ncols - geom.prescan - geom.serial_overscan
                strip = e[:, geom.prescan + ndata + 5 : ncols - 5]
                data = e[: nrows - geom.parallel_overscan, geom.prescan : geom.prescan + ndata]
                tiles.append(orient(data - strip.mean(), amp))
            if geom.amps == 2:
                result[ccd] = np.hstack(tiles)
                if ccd == "GREEN_CCD":  # KPF: GREEN's two amplifiers read from the other edge
                    result[ccd] = result[ccd][::-1]
            else:
                result[ccd] = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
        result["CA_HK"] = hdul["CA_HK"].data.astype(np.float64)
    return result


def truth_electrons(night, frame, ccd):
    """bias + EXPTIME * (dark + prnu * light) from the truth arrays, float64."""
    truth = night.ccds[ccd]
    image = truth.bias.astype(np.float64)
    if frame.exptime > 0:
        rate = truth.dark.astype(np.float64)
        light = truth.light(frame.light, frame.object)
        if light is not None:
            rate = rate + truth.prnu.astype(np.float64) * light
        image = image + frame.exptime * rate
    return image


def default_selection(header, masters):
    """Which default rule of config.yaml picks ``header`` (own tiny evaluator)."""
    ops = {
        "==": lambda a, b: a == b,
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
    }
    picked = []
    for name, cfg in masters.items():
        ok = True
        for rule in cfg["select"]:
            have, want = header[rule["keyword"]], rule["value"]
            if isinstance(want, str) and rule.get("ignore_case"):
                have, want = str(have).casefold(), want.casefold()
            ok &= ops[rule["op"]](have, want)
        if ok:
            picked.append(name)
    return picked


def robust_std(x):
    p16, p84 = np.percentile(x, [16, 84])
    return 0.5 * (p84 - p16)


# ----------------------------------------------------------------- names and selection


def test_default_night_names_and_selection(night):
    masters = yaml.safe_load((REPO / "config.yaml").read_text())["masters"]
    on_disk = sorted(p.name for p in night.l0_dir.iterdir())
    assert on_disk == sorted(f.name for f in night.frames)
    kinds = [f.kind for f in night.frames]
    assert kinds.count("bias") == 12 and kinds.count("dark") == 5 and kinds.count("flat") == 8
    arcs = [f.object for f in night.frames if f.kind == "arclamp"]
    assert {o: arcs.count(o) for o in set(arcs)} == {
        "autocal-thar-all-morn": 3,
        "autocal-une-all-morn": 3,
        "autocal-lfc-all-morn": 3,
        "autocal-etalon-all-morn": 3,
    }
    extras = {f.kind: f for f in night.frames if f.expected_master is None}
    assert set(extras) == {"short_dark", "long_flat", "science", "redelivered"}

    valid = []
    for frame in night.frames:
        ok, reason = parse_l0_name(frame.name, DATE)
        header = fits.getheader(frame.path)
        picked = default_selection(header, masters)
        if frame.kind == "redelivered":
            assert not ok and "-" in frame.name and "re-delivered" in reason
            continue
        assert ok, reason
        valid.append(frame)
        if frame.expected_master is None:
            assert picked == [], frame.kind
        else:
            assert picked == [frame.expected_master], frame.name
    # Distinct times, and file-name order is time order.
    mjds = [f.mjd_obs for f in sorted(valid, key=lambda f: f.name)]
    assert all(b > a for a, b in zip(mjds, mjds[1:], strict=False))
    assert len(night.expected("arclamp", "autocal-lfc-all-morn")) == 3
    assert [f.kind for f in night.expected("bias")] == ["bias"] * 12


def test_redelivered_file_is_a_copy_of_a_bias(night):
    copy = next(f for f in night.frames if f.kind == "redelivered")
    source = night.l0_dir / (copy.name.replace("-2.fits", ".fits"))
    assert night.frame(source.name).kind == "bias"
    assert copy.path.read_bytes() == source.read_bytes()


def test_headers_are_consistent(night):
    mjd0 = (dt.date(2023, 6, 6) - dt.date(1858, 11, 17)).days
    for frame in night.frames:
        with fits.open(frame.path) as hdul:
            head = hdul[0].header
            assert head["INSTRUME"] == "KPF"
            assert head["IMTYPE"] == frame.imtype and head["OBJECT"] == frame.object
            assert head["EXPTIME"] == frame.exptime
            assert head["ELAPSED"] >= head["EXPTIME"]
            assert head["MJD-OBS"] == pytest.approx(frame.mjd_obs, abs=1e-9)
            seconds = float(frame.name.split(".")[2] + "." + frame.name.split(".")[3][:2])
            assert (head["MJD-OBS"] - mjd0) * 86400 == pytest.approx(seconds, abs=0.002)
            when = dt.datetime.fromisoformat(head["DATE-OBS"])
            midnight = dt.datetime(2023, 6, 6)
            assert (when - midnight).total_seconds() == pytest.approx(seconds, abs=1e-6)
            names = [h.name for h in hdul]
            assert names == ["PRIMARY", *amp_names(2), "CA_HK", "TELEMETRY"]
            assert isinstance(hdul["TELEMETRY"], fits.BinTableHDU)
            gains = [hdul[n].header["CCDGAIN"] for n in amp_names(2)]
            assert all(4.5 <= g <= 5.5 for g in gains) and len(set(gains)) == 4
            assert hdul["CA_HK"].data.shape == (32, 128)


# ----------------------------------------------------------------- geometry


@pytest.mark.parametrize("which", ["quiet", "quiet4"])
def test_amplifier_shapes_mirroring_and_overscan(which, request):
    sim = request.getfixturevalue(which)
    geom = sim.geometry
    amps, size = geom.amps, geom.size
    rows = size if amps == 2 else size // 2
    shape = (rows + 30, 4 + size // 2 + 50)
    for frame in sim.frames:
        with fits.open(frame.path) as hdul:
            for ccd in CCDS:
                truth = sim.ccds[ccd]
                for i in range(amps):
                    hdu = hdul[f"{ccd.split('_')[0]}_AMP{i + 1}"]
                    raw = hdu.data
                    # KPF's encoding: unsigned 32-bit via BZERO, RICE-compressed
                    assert isinstance(hdu, fits.CompImageHDU)
                    assert hdu.header["BITPIX"] == 32 and hdu.header["BZERO"] == 2**31
                    assert raw.dtype == np.dtype("uint32") and raw.shape == shape
                    ped = truth.pedestal[i] * geom.adc_scale
                    assert ped == int(ped) == pedestal_raw(truth, i, geom)
                    # The oriented block: everything outside the data is the pedestal.
                    o = orient(raw, i + 1)
                    data = o[:rows, 4 : 4 + size // 2]
                    outside = np.ones(o.shape, bool)
                    outside[:rows, 4 : 4 + size // 2] = False
                    assert np.all(o[outside] == ped)
                    assert np.all(data != ped) and np.unique(data).size > 100
                    # As stored: AMP2/AMP4 prescan on the right, AMP3/AMP4 overscan rows first.
                    pre = raw[:, -4:] if i in (1, 3) else raw[:, :4]
                    assert np.all(pre == ped)
                    top = raw[:30] if i in (2, 3) else raw[-30:]
                    assert np.all(top == ped)
            assert hdul["CA_HK"].data.shape == sim.ccds["CA_HK"].shape


def test_expected_2d_matches_tiny_inverse_and_truth(quiet, quiet4):
    for sim in (quiet, quiet4):
        for frame in sim.frames:
            mine = tiny_2d(frame.path, sim.geometry)
            expected = expected_2d(sim, frame)
            for ccd in CCDS:
                assert expected[ccd].shape == (sim.geometry.size,) * 2
                np.testing.assert_allclose(expected[ccd], mine[ccd], rtol=0, atol=1e-8)
                # The 2D image is the truth up to the raw quantisation (gain / adc_scale).
                diff = expected[ccd] - truth_electrons(sim, frame, ccd)
                assert np.abs(diff).max() <= 6 / sim.geometry.adc_scale
            np.testing.assert_array_equal(expected["CA_HK"], mine["CA_HK"])
            cahk = sim.ccds["CA_HK"]
            if frame.light == "lamp":
                assert expected["CA_HK"].max() > cahk.bias.max() + 100


def test_noise_matches_read_noise_and_shot_noise(night):
    bias = night.expected("bias")[0]
    mine = tiny_2d(bias.path, night.geometry)
    expected = expected_2d(night, bias)
    for ccd in CCDS:
        res = mine[ccd] - expected[ccd]
        half = night.geometry.size // 2
        for amp, cols in enumerate((slice(0, half), slice(half, None))):
            rn = night.ccds[ccd].read_noise[amp]
            assert np.std(res[:, cols]) == pytest.approx(rn, rel=0.08)
            assert abs(np.mean(res[:, cols])) < 0.3
    flat = night.expected("flat")[0]
    mine = tiny_2d(flat.path, night.geometry)
    expected = expected_2d(night, flat)
    for ccd in CCDS:
        truth = night.ccds[ccd]
        charge = expected[ccd] - truth.bias
        bright = charge > 5000
        rn = max(truth.read_noise)
        z = (mine[ccd] - expected[ccd])[bright] / np.sqrt(charge[bright] + rn**2)
        assert bright.sum() > 1000
        assert robust_std(z) == pytest.approx(1.0, rel=0.1)
        assert abs(np.median(z)) < 0.1
    cosmics = [sum(f.cosmics.values()) for f in night.frames]
    assert sum(c for c, f in zip(cosmics, night.frames, strict=True) if f.exptime == 0) == 0
    assert sum(c for c, f in zip(cosmics, night.frames, strict=True) if f.exptime >= 600) > 0


def test_truth_levels_are_realistic(night):
    for ccd in CCDS:
        truth = night.ccds[ccd]
        assert truth.bias.shape == (128, 128) and truth.unit == "electrons"
        assert np.abs(truth.bias).max() < 10
        assert 0.001 <= np.median(truth.dark) <= 0.01
        hot = truth.dark > 0.5
        assert 0 < hot.sum() <= 20 and truth.dark.max() <= 5
        assert truth.prnu.mean() == pytest.approx(1.0, abs=0.002)
        assert truth.prnu.std() == pytest.approx(0.01, rel=0.1)
        assert 20000 <= 30 * (truth.prnu * truth.lamp).max() <= 60000
        off = truth.order_mask == 0
        on = truth.order_mask > 0
        scattered = np.median(truth.lamp[off])
        assert 0.002 * truth.lamp.max() < scattered < 0.02 * truth.lamp.max()
        assert np.median(truth.lamp[on]) > 20 * scattered
        une, thar = truth.arc["autocal-une-all-morn"], truth.arc["autocal-thar-all-morn"]
        assert not np.allclose(une, thar)
        assert 100_000 >= 30 * thar.max() >= 20000
        # The "-all-" lamps light all five orderlets.
        for lamp in (une, thar):
            assert min(lamp[truth.order_mask == v].max() for v in range(1, 6)) > 0.3 * lamp.max()
        assert all(4.5 <= g <= 5.5 for g in truth.gain)
        assert all(3 <= r <= 5 for r in truth.read_noise)


# ----------------------------------------------------------------- files and truth I/O


def test_order_mask_file(night):
    with fits.open(night.order_mask_path) as hdul:
        for ccd in CCDS:
            mask = hdul[ccd].data
            assert mask.shape == (128, 128) and mask.dtype.kind == "i"
            assert set(np.unique(mask)) == {0, 1, 2, 3, 4, 5}
            np.testing.assert_array_equal(mask, night.ccds[ccd].order_mask)
            # Orderlets are ordered SKY..CAL upwards in every column of every order.
            col = mask[:, 64]
            runs = [v for i, v in enumerate(col) if v and (i == 0 or col[i - 1] != v)]
            assert runs[:5] == [1, 2, 3, 4, 5] and len(runs) % 5 == 0


def test_load_truth_round_trip(night):
    loaded = load_truth(night.truth_dir)
    assert loaded.date == DATE and loaded.geometry == night.geometry
    assert loaded.order_mask_path == night.order_mask_path
    assert [f.record(loaded.out) for f in loaded.frames] == [
        f.record(night.out) for f in night.frames
    ]
    assert all(f.path.exists() for f in loaded.frames)
    for name, truth in night.ccds.items():
        other = loaded.ccds[name]
        for key in ("bias", "dark", "prnu", "lamp"):
            np.testing.assert_array_equal(getattr(other, key), getattr(truth, key))
        assert set(other.arc) == set(truth.arc)
        for obj in truth.arc:
            np.testing.assert_array_equal(other.arc[obj], truth.arc[obj])
        if truth.order_mask is not None:
            np.testing.assert_array_equal(other.order_mask, truth.order_mask)
        assert (other.gain, other.pedestal, other.read_noise) == (
            truth.gain,
            truth.pedestal,
            truth.read_noise,
        )
    frame = night.expected("arclamp")[0]
    a, b = expected_2d(night, frame), expected_2d(loaded, frame.name)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_compressed_files_read_back_identical(tmp_path):
    kwargs = dict(seed=7, size=64, counts=TINY, extras=False)
    plain = simulate_night(tmp_path / "plain", DATE, compress=False, **kwargs)
    packed = simulate_night(tmp_path / "packed", DATE, **kwargs)
    for a, b in zip(plain.frames, packed.frames, strict=True):
        assert a.name == b.name
        with fits.open(a.path) as ha, fits.open(b.path) as hb:
            assert [h.name for h in ha] == [h.name for h in hb]
            for name in amp_names(2):
                assert isinstance(hb[name], fits.CompImageHDU)
                assert not isinstance(ha[name], fits.CompImageHDU)
                assert hb[name].header["CCDGAIN"] == ha[name].header["CCDGAIN"]
                np.testing.assert_array_equal(hb[name].data, ha[name].data)
            np.testing.assert_array_equal(hb["CA_HK"].data, ha["CA_HK"].data)


def _content(path):
    """Headers without checksum cards (their comments carry the write time) and data."""
    out = []
    with fits.open(path) as hdul:
        for hdu in hdul:
            head = hdu.header.copy()
            datasum = head.pop("DATASUM", None)
            head.pop("CHECKSUM", None)
            data = None if hdu.data is None else np.asarray(hdu.data).tobytes()
            out.append((str(head), datasum, data))
    return out


def test_same_seed_same_files_other_seed_differs(tmp_path):
    kwargs = dict(size=64, counts={"bias": 1, "dark": 1, "flat": 1, "arclamp": 0})
    one = simulate_night(tmp_path / "a", DATE, seed=11, **kwargs)
    two = simulate_night(tmp_path / "b", DATE, seed=11, **kwargs)
    other = simulate_night(tmp_path / "c", DATE, seed=12, **kwargs)
    assert [f.name for f in one.frames] == [f.name for f in two.frames]
    for a, b in zip(one.frames, two.frames, strict=True):
        assert _content(a.path) == _content(b.path)
    assert [f.name for f in one.frames] != [f.name for f in other.frames]
    first, second = one.expected("flat")[0], other.expected("flat")[0]
    with fits.open(first.path) as ha, fits.open(second.path) as hb:
        assert not np.array_equal(ha["GREEN_AMP1"].data, hb["GREEN_AMP1"].data)
    assert not np.array_equal(one.ccds["RED_CCD"].bias, other.ccds["RED_CCD"].bias)


def test_zero_counts_and_invalid_arguments(tmp_path):
    empty = simulate_night(
        tmp_path / "e", DATE, size=64, counts={"bias": 0, "dark": 0, "flat": 0, "arclamp": 0}
    )
    assert sorted(f.kind for f in empty.frames) == ["long_flat", "science", "short_dark"]
    assert empty.arc_objects == []
    with pytest.raises(ValueError, match="even"):
        simulate_night(tmp_path / "x", DATE, size=65)
    with pytest.raises(ValueError, match="amps"):
        simulate_night(tmp_path / "x", DATE, amps=3)
    with pytest.raises(ValueError, match="unknown frame type"):
        simulate_night(tmp_path / "x", DATE, counts={"biases": 3})
    with pytest.raises(ValueError):
        simulate_night(tmp_path / "x", "20230231")


# ----------------------------------------------------------------- command line


def test_cli_writes_a_night_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["simulate", "--date", "20230607", "--out", str(out), "--size", "64", "--no-noise"]
    argv += ["--counts", "bias=2,dark=0,flat=1,arclamp:autocal-thar-all-eve=1", "--no-extras"]
    argv += ["--amps", "4", "--compress", "--seed", "9"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "wrote 4 L0 files" in text and str(out / "L0" / "20230607") in text
    loaded = load_truth(out / "truth" / "20230607")
    assert loaded.arc_objects == ["autocal-thar-all-eve"]
    assert loaded.geometry.amps == 4 and loaded.compress and not loaded.noise
    with fits.open(loaded.frames[0].path) as hdul:
        assert [h.name for h in hdul][1:9] == amp_names(4)

    assert main(["simulate", "--date", "2023-06-07", "--out", str(out)]) == 1
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--date", DATE, "--out", str(out), "--counts", "bias=-1"])
    with pytest.raises(SystemExit):
        main(["simulate", "--date", DATE, "--out", str(out), "--size", "huge"])


def test_rerun_replaces_a_simulated_night_but_not_foreign_files(tmp_path):
    small = {"bias": 2, "dark": 0, "flat": 1, "arclamp": 0}
    simulate_night(tmp_path, DATE, size=64, counts=TINY)
    again = simulate_night(tmp_path, DATE, seed=1, size=64, counts=small, extras=False)
    assert sorted(p.name for p in again.l0_dir.iterdir()) == sorted(f.name for f in again.frames)
    assert len(again.frames) == 3
    assert not list(again.truth_dir.glob("*.arc.*.npy"))
    foreign = again.l0_dir / f"KP.{DATE}.00001.00.fits"
    fits.PrimaryHDU().writeto(foreign)
    with pytest.raises(ValueError, match="not written by the simulator"):
        simulate_night(tmp_path, DATE, size=64, counts=small)
    assert foreign.exists() and len(list(again.l0_dir.iterdir())) == 4


# ----------------------------------------------------------------- KPF's keywords and encoding


def test_kpf_keywords_elapsed_shutters_and_comb(night):
    shutters = ("SCISEL", "SKYSEL", "FFSHTR", "SCRAMSHT", "SIMCALSH")
    seen = set()
    for frame in night.frames:
        head = fits.getheader(frame.path)
        states = {k: head[k] for k in shutters}
        if frame.kind == "bias":
            assert 0.019 <= head["ELAPSED"] <= 0.024 and head["EXPTIME"] == 0.0
        if frame.light == "none":
            assert set(states.values()) == {"closed"}, frame.kind
        else:
            assert "open" in states.values()
        comb = frame.object == "autocal-lfc-all-morn"
        assert ("LFCCEOFR" in head) is comb and ("LFCFRREF" in head) is comb
        if comb:
            assert head["LFCCEOFR"] == pytest.approx(5.22e9) and head["LFCFRREF"] == 2.0e10
        seen.add(frame.object)
    assert {"autocal-bias", "autocal-dark", "autocal-flat-all"} <= seen
    with fits.open(night.frames[0].path, disable_image_compression=True) as hdul:
        table = hdul["GREEN_AMP1"].header
        assert table["ZCMPTYPE"] == "RICE_1" and table["ZBITPIX"] == 32
    with fits.open(night.frames[0].path, do_not_scale_image_data=True) as hdul:
        assert hdul["GREEN_AMP1"].header["BZERO"] == 2**31
        assert hdul["CA_HK"].header["BITPIX"] == 16 and hdul["CA_HK"].header["BZERO"] == 32768


def test_saturated_pixel_reads_65535_dn(tmp_path):
    """The ADC saturates at 65535 DN = 65535 * 65536 raw (beyond int32), read back from the
    file and through the L0 -> 2D step."""
    from kpfmasters.science.l0to2d import convert_l0
    from kpfmasters.sim.simulate import amp_raw, frame_hdul, render_frame

    sim = simulate_night(tmp_path / "sim", DATE, seed=6, size=64, noise=False, counts=TINY)
    flat = sim.expected("flat")[0]
    truth = sim.ccds["RED_CCD"]
    raw, _ = amp_raw(truth, sim.geometry, 0, truth.lamp * np.float32(1000), flat.exptime)
    assert raw.dtype == np.uint32 and raw.max() == 65535 * 65536
    images = render_frame(sim, flat, noise=False)
    images["RED_AMP1"] = raw
    path = tmp_path / flat.name
    frame_hdul(sim, flat, images, compress=True).writeto(path)
    with fits.open(path) as hdul:
        stored = hdul["RED_AMP1"].data
        assert stored.max() == 65535 * 65536 and stored.max() / 65536 == 65535
    out = tmp_path / "2D.fits"
    report = convert_l0(path, out, kpf_geometry(), 65536)
    image = fits.getdata(out, "RED_CCD")
    level = report["overscan"]["RED"][0]
    assert image[:, :32].max() == np.float32(65535 * truth.gain[0] - level)


def test_manual_frames_are_marked(tmp_path):
    sim = simulate_night(
        tmp_path / "sim", DATE, seed=2, size=48, counts=TINY, extras=False, manual=True
    )
    manual = [f for f in sim.frames if f.kind == "manual"]
    assert [(f.imtype, f.object) for f in manual] == [
        ("Bias", "bias"),
        ("Bias", "autocal-bias"),
        ("Bias", "autocal-bias"),
        ("Dark", "test-dark"),
        ("Flatlamp", "manual-flat"),
    ]
    heads = [fits.getheader(f.path) for f in manual]
    assert heads[1]["FFSHTR"] == "open" and heads[2]["ELAPSED"] == 0.5


def test_trace_lands_where_kpf_orientation_puts_it(quiet, tmp_path):
    """In 2-amplifier mode KPF's GREEN amplifiers read from the other edge: a trace at 2D
    row y (truth and order mask) is stored at amplifier row N - 1 - y, and the L0 -> 2D step
    puts it back at y; RED is stored as it lies."""
    from kpfmasters.science.l0to2d import convert_l0

    flat = quiet.expected("flat")[0]
    out = tmp_path / "flat_2D.fits"
    convert_l0(flat.path, out, kpf_geometry(), quiet.geometry.adc_scale)
    n = quiet.geometry.size
    column = 10  # a column of AMP1
    with fits.open(flat.path) as l0, fits.open(out) as two_d:
        for ccd in CCDS:
            truth = quiet.ccds[ccd]
            y = int(np.argmax(truth.lamp[:, column]))  # brightest trace row in 2D orientation
            assert truth.order_mask[y, column] > 0
            stored = l0[f"{ccd.split('_')[0]}_AMP1"].data[:n, 4 + column].astype(np.int64)
            expected_row = n - 1 - y if ccd == "GREEN_CCD" else y
            assert int(np.argmax(stored)) == expected_row, ccd
            assert int(np.argmax(two_d[ccd].data[:, column])) == y, ccd


def kpf_geometry():
    """The amplifier geometry of config.yaml (KPF's)."""
    from kpfmasters.core.config import load_config
    from kpfmasters.science.l0to2d import AmpGeometry

    return AmpGeometry.from_config(load_config(overrides={"date": DATE}))


def test_kpf_geometry_corner_keeps_whole_orders_from_zero():
    """A medium night in KPF's geometry: the bottom-left corner of its CCDs, whole orders
    (every trace inside, half the width at least), numbered from 0, KPF's own shapes."""
    from kpfmasters.science.traces import read_traces
    from kpfmasters.sim import spectrograph as sg

    for name in ("GREEN_CCD", "RED_CCD"):
        full = read_traces(sg.kpf_trace_file(name), order_base=1)
        spec = sg.kpf(name, np.random.default_rng(1), 1024)
        assert spec.size == 1024 and spec.order.min() == 0
        assert spec.centres.min() >= 4 and spec.centres.max() <= 1019
        assert np.all(spec.x2 <= 1023) and np.all(spec.x2 - spec.x1 + 1 >= 512)
        for o in np.unique(spec.order):
            assert len(spec.fiber) and sum(spec.order == o) in (4, 5)
        # the traces are KPF's own
        rows = full.centres(1024)
        assert all(np.min(np.abs(rows - c).max(axis=1)) < 1e-9 for c in spec.centres)
    with pytest.raises(ValueError, match="64 to 4080"):
        sg.kpf("GREEN_CCD", np.random.default_rng(1), 32)


def test_comb_lights_red_throughout_and_leaves_the_bluest_green_dark():
    from kpfmasters.sim import lamps
    from kpfmasters.sim import spectrograph as sg

    for name, dark_rows in (("GREEN_CCD", True), ("RED_CCD", False)):
        spec = sg.kpf(name, np.random.default_rng(2))
        light, _ = lamps.lamp_light("autocal-lfc-all-morn", spec.wave, spec.order,
                                    np.random.default_rng(3))  # fmt: skip
        dark = ~np.any(light > 1e-3, axis=1)
        assert dark.any() == dark_rows, name
        if dark_rows:  # KPF: the 12 bluest of GREEN's 35 orders
            assert set(spec.order[dark]) == set(range(12))
