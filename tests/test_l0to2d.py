"""L0 -> 2D (docs/reference.md §2): small hand-built L0 files with a known image, gains, pedestals.

The builders here place every pixel with explicit stored-coordinate arithmetic (never with
the code under test's ``orient``), so orientation and tiling are checked independently.
"""

from __future__ import annotations

import logging
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from astropy.io import fits

from kpfmasters import cli
from kpfmasters.core.config import DEFAULT_CONFIG_PATH, load_config
from kpfmasters.core.errors import ConfigError, InputError
from kpfmasters.science.l0to2d import (
    AmpGeometry,
    clipped_mean,
    convert_l0,
    orient,
    robust_std,
    strip_statistics,
)
from kpfmasters.sim.simulate import expected_2d, simulate_night

REPO = Path(__file__).resolve().parents[1]
ADC = 65536
KPF_GEOMETRY = AmpGeometry.from_config(load_config(DEFAULT_CONFIG_PATH, {"date": "20230606"}))
# KPF's orientation: GREEN flipped up-down after tiling in 2-amplifier mode
KPF_FLIPS = {"flip_2amp": ("GREEN",), "flip_4amp": ()}
SMALL = AmpGeometry(
    prescan=3, serial_overscan=12, parallel_overscan=5, edge_skip=2, nsigma=2.1, **KPF_FLIPS
)
GAINS = {"GREEN": [1.5, 2.0, 0.75, 1.25], "RED": [1.25, 0.75, 2.0, 1.5]}
PEDESTALS = {"GREEN": [1000, 1200, 900, 1100], "RED": [800, 950, 1050, 1150]}  # DN
GARBAGE = 2_000_000_000  # prescan, parallel-overscan data columns, skipped edge columns


def stored_layout(number: int, geo: AmpGeometry, nrows: int, ncols: int):
    """Stored-coordinate (rows, data cols, strip cols) of amplifier ``number``, by hand.

    AMP1 stores prescan | data | overscan with parallel overscan last; AMP2 mirrors columns
    (overscan | data | prescan), AMP3 mirrors rows (parallel overscan first), AMP4 both.
    """
    drows = nrows - geo.parallel_overscan
    dcols = ncols - geo.prescan - geo.serial_overscan
    so, skip = geo.serial_overscan, geo.edge_skip
    rows = slice(0, drows) if number in (1, 2) else slice(geo.parallel_overscan, nrows)
    if number in (1, 3):
        data = slice(geo.prescan, geo.prescan + dcols)
        strip = slice(geo.prescan + dcols + skip, ncols - skip)
    else:
        data = slice(so, so + dcols)
        strip = slice(skip, so - skip)
    return rows, data, strip


def tile_of(number: int, namps: int, drows: int, dcols: int):
    """CCD (rows, cols) of amplifier ``number``: AMP1 bottom-left ... AMP4 top-right."""
    cols = slice(0, dcols) if number in (1, 3) else slice(dcols, 2 * dcols)
    rows = slice(0, drows) if (namps == 2 or number in (1, 2)) else slice(drows, 2 * drows)
    return rows, cols


def build_amps(truth, namps, geo, gains, pedestals, strip_noise=None, dtype=np.int32):
    """Stored amplifiers for a CCD image ``truth`` given in scaled DN (integers).

    Data pixels = truth + pedestal * ADC; the overscan strip = pedestal * ADC (+ noise),
    with two hot pixels; everything the conversion must ignore is GARBAGE.
    """
    drows = truth.shape[0] if namps == 2 else truth.shape[0] // 2
    dcols = truth.shape[1] // 2
    nrows, ncols = drows + geo.parallel_overscan, dcols + geo.prescan + geo.serial_overscan
    amps = []
    for number in range(1, namps + 1):
        ped = pedestals[number - 1] * ADC
        amp = np.full((nrows, ncols), GARBAGE, dtype=np.int64)
        rows, data, strip = stored_layout(number, geo, nrows, ncols)
        trows, tcols = tile_of(number, namps, drows, dcols)
        block = truth[trows, tcols]
        # stored data = the tile as it lies on the detector (no flip on the detector)
        amp[rows, data] = block + ped
        amp[:, strip] = ped
        if strip_noise is not None:
            amp[:, strip] += strip_noise[number - 1]
        amp[1, strip.start] += 50_000 * ADC  # hot pixels in the strip: clipped
        amp[-2, strip.stop - 1] -= 40_000 * ADC
        amps.append(amp.astype(dtype))
    return amps


def truth_image(shape, seed=0):
    """Known CCD image in scaled DN: integers < 2**22, so e-values are exact in float32."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**22, size=shape).astype(np.int64)


def write_l0(
    path,
    ccds: dict,
    compress=False,
    gains=GAINS,
    drop=(),
    header_edits=None,
    ca_hk=True,
):
    """Write an L0 file: ``ccds`` maps 'GREEN'/'RED' to lists of stored amplifier arrays."""
    primary = fits.PrimaryHDU()
    primary.header["IMTYPE"] = "Bias"
    primary.header["OBJECT"] = "autocal-bias"
    primary.header["EXPTIME"] = 0.0
    primary.header["MJD-OBS"] = 60000.25
    hdus = [primary]
    for ccd, amps in ccds.items():
        for number, amp in enumerate(amps, start=1):
            name = f"{ccd}_AMP{number}"
            if name in drop:
                continue
            if compress:
                hdu = fits.CompImageHDU(amp, name=name, compression_type="RICE_1")
            else:
                hdu = fits.ImageHDU(amp, name=name)
            hdu.header["CCDGAIN"] = gains[ccd][number - 1]
            for key, value in (header_edits or {}).get(name, {}).items():
                if value is None:
                    del hdu.header[key]
                else:
                    hdu.header[key] = value
            hdus.append(hdu)
    if ca_hk:
        hk = fits.ImageHDU(np.arange(12 * 16, dtype=np.int32).reshape(12, 16), name="CA_HK")
        hk.header["HKNOTE"] = "kept"
        hdus.append(hk)
    hdus.append(fits.BinTableHDU.from_columns([fits.Column("X", "J", array=[1])], name="OTHER"))
    fits.HDUList(hdus).writeto(path)
    return Path(path)


def make_case(tmp_path, namps=2, drows=20, dcols=16, geo=SMALL, name="KP.20240101.00001.00"):
    """An L0 file with both CCDs and its truth (electrons, per CCD, as the 2D image has it:
    in 2-amplifier mode KPF's GREEN image is the tiled amplifiers flipped up-down)."""
    shape = (drows if namps == 2 else 2 * drows, 2 * dcols)
    ccds, truth = {}, {}
    for i, ccd in enumerate(("GREEN", "RED")):
        t = truth_image(shape, seed=i)
        ccds[ccd] = build_amps(t, namps, geo, GAINS[ccd], PEDESTALS[ccd])
        truth[ccd] = electrons_of(t, GAINS[ccd], namps, drows, dcols)
        if ccd == "GREEN" and namps == 2:
            truth[ccd] = truth[ccd][::-1]
    return ccds, truth


def electrons_of(t, gains, namps, drows, dcols):
    """Truth in electrons: each amplifier's tile scaled by its own gain."""
    out = np.empty(t.shape, dtype=np.float64)
    for number in range(1, namps + 1):
        rows, cols = tile_of(number, namps, drows, dcols)
        out[rows, cols] = t[rows, cols] / ADC * gains[number - 1]
    return out


def no_leftovers(directory: Path, out: Path) -> bool:
    """True when neither ``out`` nor a temporary file of it exists in ``directory``."""
    return not out.exists() and not [p for p in directory.iterdir() if out.name in p.name]


# -- clipped mean -------------------------------------------------------------------------


def reference_clipped_mean(x, k):
    x = np.asarray(x, dtype=np.float64).ravel()
    m = np.median(x)
    s = 0.5 * (np.percentile(x, 84) - np.percentile(x, 16))
    return x[(x >= m - k * s) & (x <= m + k * s)].mean()


def test_clipped_mean_matches_direct_numpy_with_outliers():
    rng = np.random.default_rng(3)
    x = rng.normal(100.0, 2.0, size=(500, 7))
    x[::37, 2] += 500.0
    x[5, 5] = -1e4
    got = clipped_mean(x, 2.1)
    assert isinstance(got, float)
    assert got == reference_clipped_mean(x, 2.1)
    assert abs(got - 100.0) < 0.3  # the outliers are gone
    assert abs(x.mean() - 100.0) > 0.5  # ... and they did matter


def test_clipped_mean_hand_examples_and_equality_keeps():
    # median 5.5, p16 = 2.44, p84 = 8.56 -> s = 3.06; k = 1 keeps 3..8, k = 2 keeps 1..9
    x = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 100])
    assert clipped_mean(x, 1.0) == pytest.approx(5.5, abs=1e-14)
    assert clipped_mean(x, 2.0) == pytest.approx(5.0, abs=1e-14)
    # 26 values: p16 = 1 (indices 4, 5), p84 = 3 (21, 22), median 2 -> s = 1
    x = np.array([-5.0, 0, 0.5, 0.9, 1, 1] + [1.5] * 6 + [2.0] * 9 + [3, 3, 3.1, 4, 50])
    assert (np.median(x), np.percentile(x, 16), np.percentile(x, 84)) == (2.0, 1.0, 3.0)
    on_bounds = np.array([1, 1] + [1.5] * 6 + [2.0] * 9 + [3, 3])
    assert clipped_mean(x, 1.0) == pytest.approx(on_bounds.mean(), rel=1e-15)  # 35 / 19
    assert clipped_mean(x, 0.999) == pytest.approx(1.8, rel=1e-15)  # bounds now rejected


def test_strip_statistics_equal_clipped_mean_and_robust_std_bit_for_bit():
    # The one-sort path must give exactly the reference values: odd and even sizes, ties,
    # integer-valued strips like real overscans (DN * gain / 2^16), outliers, the masters' k.
    rng = np.random.default_rng(11)
    cases = [
        rng.normal(1000.0, 5.0, size=4110 * 40),
        rng.normal(1000.0, 5.0, size=4110 * 40 + 1),
        np.round(rng.normal(300.0, 3.0, size=2040 * 40)) * (1.43 * 65536) / 65536,
        np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 100]),
        np.full(17, 3.25),
        np.array([7.5]),
    ]
    cases[0][::101] += 800.0
    for x in cases:
        for k in (2.1, 2.2, 2.3, 2.4, 0.5):
            level, noise = strip_statistics(x, k)
            assert level == clipped_mean(x, k), (x.size, k)
            assert noise == robust_std(x), x.size


# -- geometry -----------------------------------------------------------------------------


def test_geometry_from_config_and_validation():
    geo = AmpGeometry.from_config(load_config(DEFAULT_CONFIG_PATH))
    assert geo == AmpGeometry(
        prescan=4, serial_overscan=50, parallel_overscan=30, edge_skip=5, nsigma=2.1, **KPF_FLIPS
    )
    assert geo.data_size((4110, 2094)) == (4080, 2040)
    assert geo.strip_columns(2094) == slice(2049, 2089)
    with pytest.raises(ConfigError, match="serial_overscan"):
        AmpGeometry(
            prescan=4, serial_overscan=10, parallel_overscan=30, edge_skip=5, nsigma=2, **KPF_FLIPS
        )
    with pytest.raises(ConfigError, match="prescan"):
        AmpGeometry(
            prescan=-1,
            serial_overscan=50,
            parallel_overscan=30,
            edge_skip=5,
            nsigma=2.1,
            **KPF_FLIPS,
        )
    with pytest.raises(ConfigError, match="flip_2amp"):
        AmpGeometry(**{**vars(geo), "flip_2amp": ("BLUE",)})


def test_orient_flips_views():
    a = np.arange(12).reshape(3, 4)
    assert np.array_equal(orient(a, 1), a)
    assert np.array_equal(orient(a, 2), a[:, ::-1])
    assert np.array_equal(orient(a, 3), a[::-1])
    assert np.array_equal(orient(a, 4), a[::-1, ::-1])
    assert all(np.shares_memory(orient(a, n), a) for n in (1, 2, 3, 4))


# -- conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize("namps", [2, 4])
def test_convert_recovers_truth_and_overscan_exactly(tmp_path, namps):
    ccds, truth = make_case(tmp_path, namps)
    l0 = write_l0(tmp_path / "KP.20240101.00001.00.fits", ccds)
    out = tmp_path / "out" / "KP.20240101.00001.00_2D.fits"
    report = convert_l0(l0, out, SMALL, ADC)
    assert report["amps"] == {"GREEN": namps, "RED": namps}
    assert report["ca_hk"] is True
    with fits.open(out, checksum=True) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "GREEN_CCD", "RED_CCD", "CA_HK"]
        assert hdul[0].header["IMTYPE"] == "Bias"
        assert hdul[0].header["OBJECT"] == "autocal-bias"
        assert hdul[0].header["GRNAMPS"] == namps and hdul[0].header["REDAMPS"] == namps
        for ccd in ("GREEN", "RED"):
            hdu = hdul[f"{ccd}_CCD"]
            assert hdu.header["BITPIX"] == -32  # float32
            assert hdu.header["BUNIT"] == "electrons"
            expected = truth[ccd].astype(np.float32)
            assert hdu.data.shape == expected.shape
            np.testing.assert_array_equal(hdu.data, expected)
            for number in range(1, namps + 1):
                level = PEDESTALS[ccd][number - 1] * GAINS[ccd][number - 1]
                assert hdu.header[f"OSCANV{number}"] == level
                assert report["overscan"][ccd][number - 1] == level
                # a constant strip (two hot pixels aside): read noise 0 by the robust std
                assert hdu.header[f"OSCANN{number}"] == 0.0
                assert report["read_noise"][ccd][number - 1] == 0.0
            assert f"OSCANV{namps + 1}" not in hdu.header
            assert f"OSCANN{namps + 1}" not in hdu.header
        hk = hdul["CA_HK"]
        np.testing.assert_array_equal(hk.data, np.arange(192, dtype=np.int32).reshape(12, 16))
        assert hk.data.dtype.kind == "i" and hk.header["HKNOTE"] == "kept"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize("namps", [2, 4])
def test_orientation_markers(tmp_path, namps):
    """A marker next to each amplifier's prescan corner lands in its CCD corner; in
    2-amplifier mode KPF's GREEN image is then flipped up-down (its amplifiers read from the
    other edge), so GREEN's markers land on the top row and RED's on the bottom row."""
    geo, drows, dcols = SMALL, 20, 16
    nrows, ncols = drows + geo.parallel_overscan, dcols + geo.prescan + geo.serial_overscan
    ped = 1000 * ADC
    amps = []
    for number in range(1, namps + 1):
        amp = np.full((nrows, ncols), ped, dtype=np.int32)
        first_row = 0 if number in (1, 2) else nrows - 1  # the row read out first
        first_col = geo.prescan if number in (1, 3) else ncols - 1 - geo.prescan
        amp[first_row, first_col] += number * ADC  # marker: `number` DN
        amps.append(amp)
    gains = {"GREEN": [1.0] * 4, "RED": [1.0] * 4}
    l0 = write_l0(tmp_path / "l0.fits", {"GREEN": amps, "RED": amps}, gains=gains)
    out = tmp_path / "l0_2D.fits"
    convert_l0(l0, out, geo, ADC)
    for ccd in ("GREEN", "RED"):
        image = fits.getdata(out, f"{ccd}_CCD")
        top, right = image.shape[0] - 1, image.shape[1] - 1
        corners = {1: (0, 0), 2: (0, right), 3: (top, 0), 4: (top, right)}
        expected = np.zeros(image.shape, dtype=np.float32)
        for number in range(1, namps + 1):
            expected[corners[number]] = number
        if namps == 2:  # AMP1/AMP2 read from the bottom row, full height
            assert image.shape == (drows, 2 * dcols)
        flipped = ccd == "GREEN" and namps == 2
        assert fits.getheader(out, f"{ccd}_CCD")["FLIPUD"] is flipped
        np.testing.assert_array_equal(image, expected[::-1] if flipped else expected)
    # the flip is configuration: none in 2-amplifier mode gives the tiled image as it is
    plain = AmpGeometry(**{**vars(geo), "flip_2amp": ()})
    convert_l0(l0, tmp_path / "plain_2D.fits", plain, ADC)
    red = fits.getdata(out, "RED_CCD")
    np.testing.assert_array_equal(fits.getdata(tmp_path / "plain_2D.fits", "GREEN_CCD"), red)


def test_threads_give_the_same_file_content(tmp_path):
    ccds, truth = make_case(tmp_path, 4)
    l0 = write_l0(tmp_path / "l0.fits", ccds)
    one = convert_l0(l0, tmp_path / "one.fits", SMALL, ADC, threads=1)
    four = convert_l0(l0, tmp_path / "four.fits", SMALL, ADC, threads=4)
    assert one["overscan"] == four["overscan"]
    for ccd in ("GREEN", "RED"):
        a = fits.getdata(tmp_path / "one.fits", f"{ccd}_CCD")
        np.testing.assert_array_equal(a, fits.getdata(tmp_path / "four.fits", f"{ccd}_CCD"))
        np.testing.assert_array_equal(a, truth[ccd].astype(np.float32))


def test_compressed_equals_plain(tmp_path):
    ccds, _ = make_case(tmp_path, 4)
    plain = write_l0(tmp_path / "plain.fits", ccds)
    packed = write_l0(tmp_path / "packed.fits", ccds, compress=True)
    with fits.open(packed) as hdul:
        assert isinstance(hdul["GREEN_AMP3"], fits.CompImageHDU)
    rp = convert_l0(plain, tmp_path / "plain_2D.fits", SMALL, ADC)
    rc = convert_l0(packed, tmp_path / "packed_2D.fits", SMALL, ADC)
    assert rp["overscan"] == rc["overscan"]
    for ext in ("GREEN_CCD", "RED_CCD", "CA_HK"):
        a = fits.getdata(tmp_path / "plain_2D.fits", ext)
        b = fits.getdata(tmp_path / "packed_2D.fits", ext)
        np.testing.assert_array_equal(a, b)


def test_noisy_overscan_and_full_geometry(tmp_path):
    """Real widths (4, 50, 30, 5): the level is the clipped mean of the strip's electrons."""
    geo = KPF_GEOMETRY
    drows, dcols = 40, 24
    t = truth_image((drows, 2 * dcols), seed=5)
    rng = np.random.default_rng(9)
    nrows = drows + 30
    noise = [rng.integers(-20 * ADC, 20 * ADC, size=(nrows, 40)) for _ in range(2)]
    amps = build_amps(t, 2, geo, GAINS["GREEN"], PEDESTALS["GREEN"], strip_noise=noise)
    l0 = write_l0(tmp_path / "l0.fits", {"GREEN": amps, "RED": amps})
    out = tmp_path / "l0_2D.fits"
    report = convert_l0(l0, out, geo, ADC)
    image = fits.getdata(out, "GREEN_CCD")[::-1]  # KPF's GREEN, 2 amplifiers: flipped
    assert image.shape == (40, 48)
    for number in (1, 2):
        gain = GAINS["GREEN"][number - 1]
        stored_strip = amps[number - 1][:, stored_layout(number, geo, nrows, dcols + 54)[2]]
        level = reference_clipped_mean(stored_strip / ADC * gain, 2.1)
        assert report["overscan"]["GREEN"][number - 1] == level
        # read noise: 1.4826 * MAD of the same strip, in electrons (hot pixels do not count)
        e = stored_strip / ADC * gain
        mad = 1.4826 * np.median(np.abs(e - np.median(e)))
        assert report["read_noise"]["GREEN"][number - 1] == pytest.approx(mad, rel=1e-12)
        assert fits.getheader(out, "GREEN_CCD")[f"OSCANN{number}"] == pytest.approx(mad, rel=1e-12)
        # uniform integers in +-20 DN: std 20 / sqrt(3) DN, MAD-based 1.4826 * 10 DN
        assert abs(mad / (1.4826 * 10 * gain) - 1) < 0.05
        assert abs(level - PEDESTALS["GREEN"][number - 1] * gain) < 20 * gain
        rows, cols = tile_of(number, 2, drows, dcols)
        raw_data = t[rows, cols] + PEDESTALS["GREEN"][number - 1] * ADC
        expected = (raw_data / ADC * gain - level).astype(np.float32)
        np.testing.assert_array_equal(image[rows, cols], expected)


def test_absent_ccd_is_left_out_and_logged(tmp_path, caplog):
    ccds, truth = make_case(tmp_path, 2)
    l0 = write_l0(tmp_path / "l0.fits", {"GREEN": ccds["GREEN"]}, ca_hk=False)
    out = tmp_path / "l0_2D.fits"
    with caplog.at_level(logging.INFO, logger="kpfmasters"):
        report = convert_l0(l0, out, SMALL, ADC)
    assert report["amps"] == {"GREEN": 2, "RED": 0}
    assert "no RED amplifier extensions" in caplog.text
    assert "no CA_HK" in caplog.text
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "GREEN_CCD"]
        assert hdul[0].header["REDAMPS"] == 0
        np.testing.assert_array_equal(hdul["GREEN_CCD"].data, truth["GREEN"].astype(np.float32))


# -- bad input ----------------------------------------------------------------------------


def good_ccds(tmp_path):
    return make_case(tmp_path, 2)[0]


def case_empty(tmp_path):
    path = tmp_path / "empty.fits"
    path.write_bytes(b"")
    return path, ["empty", "0 bytes"]


def case_not_fits(tmp_path):
    path = tmp_path / "text.fits"
    path.write_text("this is not a FITS file\n" * 200)
    return path, ["not a readable FITS file"]


def case_truncated(tmp_path):
    path = write_l0(tmp_path / "full.fits", good_ccds(tmp_path))
    data = path.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(data[: len(data) - 2880 * 2 - 100])
    return cut, ["truncated", "bytes"]


def case_cut_in_header(tmp_path):
    path = write_l0(tmp_path / "full.fits", good_ccds(tmp_path))
    with fits.open(path) as hdul:
        start = hdul.fileinfo(hdul.index_of("RED_AMP1"))["hdrLoc"]
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[: start + 1000])  # GREEN complete, RED's header cut
    return cut, ["truncated or damaged", "HDU #3"]


def case_damaged_header(tmp_path):
    path = write_l0(tmp_path / "l0.fits", good_ccds(tmp_path))
    data = path.read_bytes()
    with fits.open(path) as hdul:
        start = hdul.fileinfo(hdul.index_of("RED_AMP1"))["hdrLoc"]
    header = data[start : start + 2880].replace(b"NAXIS1  =", b"NAXIS1  = 'x'")[:2880]
    path.write_bytes(data[:start] + header + data[start + 2880 :])
    return path, ["truncated or damaged", "HDU #3", "NAXIS1"]


def case_missing_amp(tmp_path):
    path = write_l0(tmp_path / "l0.fits", good_ccds(tmp_path), drop=("GREEN_AMP2",))
    return path, ["GREEN_AMP2 missing", "GREEN_AMP1"]


def case_amp1_and_amp3(tmp_path):
    ccds = good_ccds(tmp_path)
    ccds["RED"] = ccds["RED"] * 2  # AMP1..AMP4, then drop 2 and 4
    path = write_l0(tmp_path / "l0.fits", ccds, drop=("RED_AMP2", "RED_AMP4"))
    return path, ["RED_AMP2, RED_AMP4 missing", "4-amplifier"]


def case_no_gain(tmp_path):
    edits = {"RED_AMP2": {"CCDGAIN": None}}
    path = write_l0(tmp_path / "l0.fits", good_ccds(tmp_path), header_edits=edits)
    return path, ["RED_AMP2", "CCDGAIN missing"]


def case_text_gain(tmp_path):
    edits = {"GREEN_AMP1": {"CCDGAIN": "fast"}}
    path = write_l0(tmp_path / "l0.fits", good_ccds(tmp_path), header_edits=edits)
    return path, ["GREEN_AMP1", "CCDGAIN is 'fast'", "expected a positive number"]


def case_shapes_differ(tmp_path):
    ccds = good_ccds(tmp_path)
    ccds["GREEN"][1] = ccds["GREEN"][1][:, :-1]
    path = write_l0(tmp_path / "l0.fits", ccds)
    return path, ["GREEN_AMP2", "(25, 30)", "expected (25, 31)"]


def case_too_small(tmp_path):
    amp = np.zeros((25, 3 + 12), dtype=np.int32)  # no data column left
    path = write_l0(tmp_path / "l0.fits", {"GREEN": [amp, amp]})
    return path, ["GREEN_AMP1", "too small", "more than 15 columns"]


def case_nan_overscan(tmp_path):
    ccds = good_ccds(tmp_path)
    ccds = {ccd: [a.astype(np.float32) for a in amps] for ccd, amps in ccds.items()}
    ccds["RED"][1][3, 5] = np.nan  # AMP2 stored strip: columns [2, 10)
    path = write_l0(tmp_path / "l0.fits", ccds)
    return path, ["RED_AMP2", "NaN/Inf", "overscan strip (stored columns 2..9)"]


def case_not_image(tmp_path):
    ccds = good_ccds(tmp_path)
    path = write_l0(tmp_path / "l0.fits", ccds, drop=("GREEN_AMP2",))
    with fits.open(path, mode="append") as hdul:
        table = fits.BinTableHDU.from_columns([fits.Column("A", "J", array=[1])])
        table.name = "GREEN_AMP2"
        hdul.append(table)
    return path, ["GREEN_AMP2", "expected an image"]


def case_corrupt_tiles(tmp_path):
    path = write_l0(tmp_path / "l0.fits", good_ccds(tmp_path), compress=True)
    with fits.open(path) as hdul:
        start = hdul.fileinfo(hdul.index_of("RED_AMP1"))["datLoc"]
    data = bytearray(path.read_bytes())
    data[start + 16 : start + 400] = b"\xff" * 384  # tile pointers and bytes: garbage
    path.write_bytes(bytes(data))
    return path, ["RED_AMP1", "image data cannot be read"]


def case_no_amps(tmp_path):
    path = write_l0(tmp_path / "l0.fits", {})
    return path, ["no amplifier extension"]


BAD_CASES = [
    case_empty,
    case_not_fits,
    case_truncated,
    case_cut_in_header,
    case_damaged_header,
    case_missing_amp,
    case_amp1_and_amp3,
    case_no_gain,
    case_text_gain,
    case_shapes_differ,
    case_too_small,
    case_nan_overscan,
    case_not_image,
    case_corrupt_tiles,
    case_no_amps,
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda f: f.__name__[5:])
def test_bad_input_raises_and_writes_nothing(tmp_path, case):
    path, phrases = case(tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "x_2D.fits"
    with pytest.raises(InputError) as info:
        convert_l0(path, out, SMALL, ADC)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    for phrase in phrases:
        assert phrase in message
    assert no_leftovers(outdir, out)
    assert list(outdir.iterdir()) == []


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        convert_l0(tmp_path / "nope.fits", tmp_path / "o.fits", SMALL, ADC)


# -- command line and Snakemake script ----------------------------------------------------


def small_config(tmp_path) -> Path:
    cfg = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    cfg["work_root"] = str(tmp_path / "work")
    cfg["amplifier"].update(
        prescan=3, serial_overscan=12, parallel_overscan=5, overscan_edge_skip=2
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_default_output_and_explicit_output(tmp_path, capsys):
    ccds, truth = make_case(tmp_path, 2)
    l0 = write_l0(tmp_path / "KP.20240101.00001.00.fits", ccds)
    config = small_config(tmp_path)
    assert cli.main(["l0to2d", str(l0), "--config", str(config)]) == 0
    default = tmp_path / "work" / "2D" / "20240101" / "KP.20240101.00001.00_2D.fits"
    np.testing.assert_array_equal(fits.getdata(default, "RED_CCD"), truth["RED"].astype(np.float32))
    assert "wrote" in capsys.readouterr().out
    explicit = tmp_path / "elsewhere.fits"
    args = ["l0to2d", str(l0), "-o", str(explicit), "--config", str(config), "-j", "2"]
    assert cli.main(args) == 0
    assert explicit.exists()


def test_cli_bad_input_exits_1(tmp_path, capsys):
    bad = tmp_path / "KP.20240101.00002.00.fits"
    bad.write_bytes(b"")
    out = tmp_path / "o.fits"
    config = small_config(tmp_path)
    assert cli.main(["l0to2d", str(bad), "-o", str(out), "--config", str(config)]) == 1
    assert f"{bad}: is empty" in capsys.readouterr().err
    assert not out.exists()
    odd = write_l0(tmp_path / "odd-name.fits", make_case(tmp_path, 2)[0])
    assert cli.main(["l0to2d", str(odd), "--config", str(config)]) == 1
    assert "-o OUT" in capsys.readouterr().err


def test_snakemake_script(tmp_path):
    ccds, truth = make_case(tmp_path, 4)
    l0 = write_l0(tmp_path / "l0.fits", ccds)
    out, log = tmp_path / "2D" / "l0_2D.fits", tmp_path / "logs" / "l0.log"
    geometry = {
        "prescan": 3,
        "serial_overscan": 12,
        "parallel_overscan": 5,
        "edge_skip": 2,
        "nsigma": 2.1,
        "flip_2amp": ["GREEN"],
        "flip_4amp": [],
    }
    planned = {k: fits.getheader(l0).get(k) for k in ("IMTYPE", "EXPTIME", "MJD-OBS")}
    snakemake = SimpleNamespace(
        output=[str(out)],
        log=[str(log)],
        params=SimpleNamespace(
            l0=str(l0), geometry=geometry, adc_scale=ADC, planned=planned, rejects_dir=""
        ),
        threads=2,
    )
    runpy.run_path(str(REPO / "scripts" / "l0_to_2d.py"), init_globals={"snakemake": snakemake})
    np.testing.assert_array_equal(fits.getdata(out, "GREEN_CCD"), truth["GREEN"].astype(np.float32))
    text = log.read_text()
    assert "wrote" in text and "GREEN 4 amps" in text and "2 thread(s)" in text


# -- a simulated night (kpfmasters.sim.simulate) ----------------------------------------------

FEW = {"bias": 1, "dark": 1, "flat": 1, "arclamp": {"autocal-une-sky": 1}}


@pytest.mark.parametrize("amps, compress", [(2, False), (4, True)])
def test_simulated_night_noise_free_matches_expected_2d(tmp_path, amps, compress):
    night = simulate_night(
        tmp_path / "sim",
        "20240101",
        seed=1,
        amps=amps,
        size=64,
        noise=False,
        counts=FEW,
        extras=False,
        compress=compress,
    )
    assert len(night.frames) == 4
    for frame in night.frames:
        out = tmp_path / "2D" / frame.path.name.replace(".fits", "_2D.fits")
        report = convert_l0(frame.path, out, KPF_GEOMETRY, ADC)
        expected = expected_2d(night, frame)
        for ccd in ("GREEN", "RED"):
            truth = night.ccds[f"{ccd}_CCD"]
            levels = [p * g for p, g in zip(truth.pedestal, truth.gain, strict=True)]
            np.testing.assert_allclose(report["overscan"][ccd], levels, rtol=1e-15)
            got = fits.getdata(out, f"{ccd}_CCD")
            want = expected[f"{ccd}_CCD"]
            assert got.shape == want.shape == (64, 64)
            np.testing.assert_allclose(got, want, rtol=2**-23, atol=1e-9)
        np.testing.assert_array_equal(fits.getdata(out, "CA_HK"), expected["CA_HK"])


def test_simulated_night_with_noise_within_read_noise(tmp_path):
    night = simulate_night(
        tmp_path / "sim",
        "20240101",
        seed=2,
        amps=2,
        size=128,
        noise=True,
        counts={"bias": 1, "dark": 0, "flat": 1, "arclamp": 0},
        extras=False,
    )
    assert [f.kind for f in night.frames] == ["bias", "flat"]
    halves = ((slice(None), slice(0, 64)), (slice(None), slice(64, 128)))
    for frame in night.frames:
        out = tmp_path / "2D" / frame.path.name
        report = convert_l0(frame.path, out, KPF_GEOMETRY, ADC)
        expected = expected_2d(night, frame)
        for ccd in ("GREEN", "RED"):
            truth = night.ccds[f"{ccd}_CCD"]
            got = fits.getdata(out, f"{ccd}_CCD").astype(np.float64)
            want = expected[f"{ccd}_CCD"]
            for amp, (rows, cols) in enumerate(halves):
                rn = truth.read_noise[amp]
                # overscan strip: 158 rows x 40 columns of read noise -> level good to ~rn / 80
                level = truth.pedestal[amp] * truth.gain[amp]
                assert abs(report["overscan"][ccd][amp] - level) < 5 * rn / 80
                # read noise of the strip (6320 values): robust std good to ~2%
                assert abs(report["read_noise"][ccd][amp] / rn - 1) < 0.08
                assert fits.getheader(out, f"{ccd}_CCD")[f"OSCANN{amp + 1}"] == pytest.approx(
                    report["read_noise"][ccd][amp]
                )
                diff = got[rows, cols] - want[rows, cols]
                sigma = np.sqrt(rn**2 + np.clip(want[rows, cols], 0, None) * (frame.exptime > 0))
                z = diff / sigma
                robust_std = 1.4826 * np.median(np.abs(z - np.median(z)))
                assert 0.9 < robust_std < 1.1, (frame.kind, ccd, amp, robust_std)
                assert abs(np.median(z)) < 0.1
