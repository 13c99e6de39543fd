"""The clipped stack (docs/reference.md §4): kernel against a NumPy reference, streaming, CLI."""

from __future__ import annotations

import tracemalloc
import warnings

import numba
import numpy as np
import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters import cli
from kpfmasters.core.errors import InputError
from kpfmasters.science.stack import (
    band_height,
    clip_correction,
    stack_cube,
    stack_files,
)
from kpfmasters.science.stack_kernel import batcher_network, networks, prune_network
from tests.reference import reference_stack

BAND_MB = 64  # band buffer budget of these small stacks (MiB)


def bits(arr: np.ndarray) -> bytes:
    """Exact bytes of an array, to compare results bit for bit (NaN payloads and -0.0 too)."""
    return np.ascontiguousarray(arr).tobytes()


def assert_same_bits(a, b):
    assert a.avg.dtype == np.float64 and a.unc.dtype == np.float32 and a.cnt.dtype == np.int32
    assert bits(a.avg) == bits(b.avg)
    assert bits(a.unc) == bits(b.unc)
    assert bits(a.cnt) == bits(b.cnt)
    assert a.nrejected == b.nrejected


def assert_matches_reference(cube: np.ndarray, k: float):
    got = stack_cube(cube, k, limits=True)
    ref = reference_stack(cube, k)
    # identical clip limits, bit for bit, hence identical keep/reject decisions
    assert np.array_equal(got.low, ref.low, equal_nan=True)
    assert np.array_equal(got.high, ref.high, equal_nan=True)
    x = np.asarray(cube, dtype=np.float64)
    keep_got = (x >= got.low) & (x <= got.high)
    keep_ref = (x >= ref.low) & (x <= ref.high)
    assert np.array_equal(keep_got, keep_ref)
    assert np.array_equal(got.cnt, ref.cnt)
    assert np.array_equal(got.cnt, keep_ref.sum(axis=0))
    assert got.nrejected == ref.nrejected
    np.testing.assert_allclose(got.avg, ref.avg, rtol=1e-12, atol=0, equal_nan=True)
    # UNC is float32: the same float64 value rounded, so at most an ulp or two apart
    np.testing.assert_allclose(got.unc, ref.unc, rtol=2.5e-7, atol=0, equal_nan=True)
    assert np.array_equal(np.isnan(got.avg), got.cnt == 0)
    return got


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_spec_worked_example(dtype):
    frames = np.arange(24).reshape(4, 2, 3).astype(dtype)
    frames[3, 1, 2] = 42
    for result in (stack_cube(frames, 2.5), reference_stack(frames, 2.5)):
        assert result.cnt.tolist() == [[4, 4, 4], [4, 4, 3]]
        assert result.avg.tolist() == [[9, 10, 11], [12, 13, 11]]
        assert result.nrejected == 1
    got = stack_cube(frames, 2.5)
    # UNC of [5, 11, 17] (pixel [1, 2], 42 rejected): var = 24, sqrt(cf * 24 / 3)
    assert got.unc[1, 2] == np.float32(np.sqrt(clip_correction(2.5) * 24.0 / 3))


@pytest.mark.parametrize(
    "k, expected", [(2.1, 1.24289), (2.2, 1.19637), (2.3, 1.15802), (2.4, 1.12646)]
)
def test_clip_correction_values(k, expected):
    assert round(clip_correction(k), 5) == expected


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_correction_rejects_bad_k(bad):
    with pytest.raises(ValueError, match="nsigma"):
        clip_correction(bad)


def random_cube(rng, n, rows=6, cols=25, dtype=np.float64, ties=False, nan_frac=0.08):
    if ties:  # few distinct values: many equal values, zero widths, equality at the limits
        cube = rng.integers(0, 4, (n, rows, cols)).astype(dtype) * 0.5 + 100
    else:
        cube = rng.normal(1000.0, 7.0, (n, rows, cols)).astype(dtype)
    hits = rng.random(cube.shape) < 0.06
    cube[hits] += rng.choice([-1, 1], hits.sum()) * rng.uniform(50, 5000, hits.sum())
    cube[rng.random(cube.shape) < nan_frac] = np.nan
    cube[:, 0, 0] = np.nan  # an all-missing pixel
    cube[1:, 0, 1] = np.nan  # a pixel with a single value
    return cube


@pytest.mark.parametrize("n", list(range(1, 41)))
def test_random_stacks_match_numpy_reference(n):
    rng = np.random.default_rng(1000 + n)
    for k in (2.1, 2.5):
        for dtype in (np.float64, np.float32):
            assert_matches_reference(random_cube(rng, n, dtype=dtype), k)
        assert_matches_reference(random_cube(rng, n, ties=True), k)
        assert_matches_reference(random_cube(rng, n, ties=True, dtype=np.float32), k)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 16, 25, 30, 31, 40, 64, 100])
def test_complete_pixels_match_reference(n):
    """No NaN: the pruned sorting network serves every tile."""
    rng = np.random.default_rng(n)
    cube = rng.normal(0.0, 1.0, (n, 3, 70))
    cube[rng.random(cube.shape) < 0.05] = 30.0
    got = assert_matches_reference(cube, 2.3)
    assert (got.cnt > 0).all()


def test_ties_and_equality_keep_values_on_the_limits():
    # values 0, 0, 1, 1, 1, 2, 2: m = 1, p16 = 0 + ... ; with k making a limit land exactly
    # on a value, equality keeps it
    col = np.array([0, 0, 1, 1, 1, 2, 2], dtype=np.float64)
    cube = np.repeat(col[:, None, None], 3, axis=2)
    ref = reference_stack(cube, 1.0)
    got = stack_cube(cube, 1.0, limits=True)
    assert np.array_equal(got.low, ref.low) and np.array_equal(got.cnt, ref.cnt)
    s = 0.5 * (np.percentile(col, 84) - np.percentile(col, 16))
    expected = np.count_nonzero((col >= 1 - s) & (col <= 1 + s))
    assert got.cnt.tolist() == [[expected] * 3]


def test_nan_counts_as_missing():
    rng = np.random.default_rng(5)
    cube = rng.normal(10.0, 1.0, (9, 1, 1))
    cube[4, 0, 0] = 80.0
    holed = np.concatenate([cube, np.full((3, 1, 1), np.nan)])
    a, b = stack_cube(cube, 2.2), stack_cube(holed[::-1].copy(), 2.2)
    assert a.cnt[0, 0] == b.cnt[0, 0] == 8
    assert a.avg[0, 0] == pytest.approx(b.avg[0, 0], rel=1e-14)
    assert a.unc[0, 0] == pytest.approx(b.unc[0, 0], rel=1e-6)
    assert a.nrejected == b.nrejected == 1


def test_all_nan_pixel_gives_zero_count_and_nan():
    cube = np.ones((5, 2, 2), dtype=np.float32)
    cube[:, 1, 0] = np.nan
    result = stack_cube(cube, 2.1)
    assert result.cnt.tolist() == [[5, 5], [0, 5]]
    assert np.isnan(result.avg[1, 0]) and np.isnan(result.unc[1, 0])
    assert result.avg[0, 0] == 1.0 and result.unc[0, 0] == 0.0


def test_threads_do_not_change_results_and_are_restored():
    rng = np.random.default_rng(7)
    cube = random_cube(rng, 23, rows=9, cols=1100, nan_frac=0.01)
    before = numba.get_num_threads()
    one = stack_cube(cube, 2.1, threads=1)
    assert numba.get_num_threads() == before
    two = stack_cube(cube, 2.1, threads=2)
    assert_same_bits(one, two)
    with pytest.raises(ValueError, match="threads"):
        stack_cube(cube, 2.1, threads=0)


def test_rows_are_independent():
    """A pixel's result depends only on its own values (no tile or block effects)."""
    rng = np.random.default_rng(8)
    cube = random_cube(rng, 12, rows=3, cols=700, nan_frac=0.02)
    full = stack_cube(cube, 2.1)
    part = stack_cube(cube[:, 1:2, 333:650], 2.1)
    assert bits(part.avg) == bits(full.avg[1:2, 333:650])
    assert bits(part.unc) == bits(full.unc[1:2, 333:650])


def test_sorting_networks_sort_every_zero_one_input():
    for n in range(1, 15):
        a, b = batcher_network(n)
        assert (a < b).all() and (b < n).all()
        x = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
        for i, j in zip(a, b, strict=True):
            lo, hi = np.minimum(x[:, i], x[:, j]), np.maximum(x[:, i], x[:, j])
            x[:, i], x[:, j] = lo, hi
        assert (np.diff(x, axis=1) >= 0).all(), n


def test_pruned_network_gives_the_same_order_statistics():
    rng = np.random.default_rng(9)
    for n in (5, 30, 47):
        pa, pb, fa, fb = networks(n)
        assert len(pa) <= len(fa)
        ranks = [0, n // 3, n - 1]
        qa, qb = prune_network(fa, fb, ranks)
        x = rng.normal(size=(200, n))
        y = x.copy()
        for i, j in zip(qa, qb, strict=True):
            y[:, [i, j]] = np.sort(y[:, [i, j]], axis=1)
        assert np.array_equal(y[:, ranks], np.sort(x, axis=1)[:, ranks])


# --------------------------------------------------------------------------------------------
# Streaming from FITS files
# --------------------------------------------------------------------------------------------


def write_frames(tmp_path, cube, name="GREEN_CCD", kind="image", prefix="f"):
    paths = []
    for i, frame in enumerate(cube):
        if kind == "compressed":
            hdu = fits.CompImageHDU(frame, name=name, compression_type="GZIP_2", quantize_level=0)
        elif kind == "int16":
            hdu = fits.ImageHDU(frame.astype(np.int16), name=name)
            hdu.scale("int16", bzero=100)  # scaled integers: read through astropy's section
        else:
            hdu = fits.ImageHDU(frame, name=name)
        path = tmp_path / f"{prefix}{i:02d}.fits"
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        paths.append(path)
    return paths


@pytest.fixture
def small_cube():
    rng = np.random.default_rng(11)
    cube = random_cube(rng, 9, rows=37, cols=45, dtype=np.float32, nan_frac=0.03)
    return cube


@pytest.mark.parametrize("kind", ["image", "compressed", "float64"])
def test_stack_files_equals_stack_cube_for_any_band_and_threads(tmp_path, small_cube, kind):
    cube = small_cube.astype(np.float64) if kind == "float64" else small_cube
    paths = write_frames(tmp_path, cube, kind="compressed" if kind == "compressed" else "image")
    expected = stack_cube(cube, 2.3)
    for band_rows in (1, 7, 64, 0):
        for threads in (1, 2):
            for mmap_ok in (True, False):  # memory-mapped in place, or copied into a buffer
                got = stack_files(
                    paths,
                    "GREEN_CCD",
                    2.3,
                    memory_mb=BAND_MB,
                    band_rows=band_rows,
                    threads=threads,
                    mmap_ok=mmap_ok,
                )
                assert_same_bits(got, expected)


def test_stack_files_reads_scaled_integers(tmp_path):
    rng = np.random.default_rng(12)
    cube = rng.integers(0, 200, (6, 11, 13)).astype(np.float64)
    paths = write_frames(tmp_path, cube, kind="int16")
    assert_same_bits(
        stack_files(paths, "GREEN_CCD", 2.1, memory_mb=BAND_MB, band_rows=4), stack_cube(cube, 2.1)
    )


def test_stack_files_mixed_plain_and_compressed(tmp_path, small_cube):
    plain = write_frames(tmp_path, small_cube[:5], prefix="p")
    packed = write_frames(tmp_path, small_cube[5:], kind="compressed", prefix="c")
    got = stack_files(plain + packed, "GREEN_CCD", 2.2, memory_mb=BAND_MB, band_rows=5)
    assert_same_bits(got, stack_cube(small_cube, 2.2))


def test_preprocess_is_applied_per_frame_and_band(tmp_path, small_cube):
    paths = write_frames(tmp_path, small_cube)
    rng = np.random.default_rng(13)
    bias = rng.normal(50.0, 1.0, small_cube.shape[1:])
    exptime = np.linspace(1.0, 3.0, len(paths))
    seen = []

    def in_place(i, rows, band):
        assert band.dtype == np.float64 and band.shape == (rows.stop - rows.start, 45)
        seen.append((i, rows.start))
        band -= bias[rows]
        band /= exptime[i]

    def returns_new(i, rows, band):
        return (band - bias[rows]) / exptime[i]

    calibrated = (small_cube.astype(np.float64) - bias) / exptime[:, None, None]
    expected = stack_cube(calibrated, 2.2)
    for pre in (in_place, returns_new):
        for band_rows in (1, 10, 0):
            for threads in (1, 2, 3):  # the frames of a band are gathered by that many threads
                got = stack_files(
                    paths,
                    "GREEN_CCD",
                    2.2,
                    memory_mb=BAND_MB,
                    preprocess=pre,
                    band_rows=band_rows,
                    threads=threads,
                )
                assert_same_bits(got, expected)
    seen.clear()
    stack_files(
        paths, "GREEN_CCD", 2.2, memory_mb=BAND_MB, preprocess=in_place, band_rows=10, threads=3
    )
    rows = small_cube.shape[1]
    assert sorted(seen) == [(i, r) for i in range(len(paths)) for r in range(0, rows, 10)]

    def wrong_shape(i, rows, band):
        return band[:, :3]

    with pytest.raises(ValueError, match="preprocess returned shape"):
        stack_files(paths, "GREEN_CCD", 2.2, memory_mb=BAND_MB, preprocess=wrong_shape)


def test_memory_does_not_grow_with_the_number_of_frames(tmp_path):
    rng = np.random.default_rng(14)
    rows, cols = 120, 256
    outputs = rows * cols * 16
    for n in (20, 60):
        cube = rng.normal(5.0, 1.0, (n, rows, cols)).astype(np.float32)
        paths = write_frames(tmp_path, cube, prefix=f"n{n}_")
        del cube
        band = band_height(n, cols, 4, 1, rows)
        assert band * n * cols * 4 <= 2**20
        tracemalloc.start()
        try:
            stack_files(paths, "GREEN_CCD", 2.1, memory_mb=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # band buffer (1 MiB) + outputs + headers and bookkeeping; the cube would be 2.5-7 MiB
        assert peak < 2**20 + outputs + 1.5 * 2**20, (n, peak)


# --------------------------------------------------------------------------------------------
# Errors name the file, the extension and what was expected
# --------------------------------------------------------------------------------------------


@pytest.fixture
def good_paths(tmp_path, small_cube):
    return write_frames(tmp_path, small_cube[:3])


def test_missing_extension(good_paths):
    with pytest.raises(InputError) as err:
        stack_files(good_paths, "RED_CCD", 2.1, memory_mb=BAND_MB)
    assert str(good_paths[0]) in str(err.value) and "RED_CCD" in str(err.value)
    assert "GREEN_CCD" in str(err.value)  # what the file has


def test_shape_differs_from_first_file(tmp_path, good_paths):
    odd = tmp_path / "odd.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((36, 45), np.float32), name="GREEN_CCD")]
    ).writeto(odd)
    with pytest.raises(InputError) as err:
        stack_files([*good_paths, odd], "GREEN_CCD", 2.1, memory_mb=BAND_MB)
    message = str(err.value)
    assert message.startswith(str(odd)) and "GREEN_CCD" in message
    assert "(36, 45)" in message and "(37, 45)" in message


def test_non_image_extension(tmp_path, good_paths):
    table = tmp_path / "table.fits"
    cols = [fits.Column("X", "E", array=np.zeros(3))]
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="GREEN_CCD")]
    ).writeto(table)
    with pytest.raises(InputError) as err:
        stack_files([good_paths[0], table], "GREEN_CCD", 2.1, memory_mb=BAND_MB)
    assert str(table) in str(err.value) and "BinTableHDU" in str(err.value)
    assert "expected a 2-D image" in str(err.value)


def test_truncated_data(tmp_path, good_paths):
    cut = tmp_path / "cut.fits"
    data = good_paths[1].read_bytes()
    cut.write_bytes(data[: len(data) - 3000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        with pytest.raises(InputError) as err:
            stack_files([good_paths[0], cut], "GREEN_CCD", 2.1, memory_mb=BAND_MB)
    assert str(cut) in str(err.value) and "GREEN_CCD" in str(err.value)
    assert "truncated" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"this is not FITS" * 300])
def test_unreadable_file(tmp_path, good_paths, content):
    bad = tmp_path / "bad.fits"
    bad.write_bytes(content)
    with pytest.raises(InputError) as err:
        stack_files([good_paths[0], bad], "GREEN_CCD", 2.1, memory_mb=BAND_MB)
    assert str(err.value).startswith(str(bad))


def test_missing_file(tmp_path, good_paths):
    with pytest.raises(InputError, match="cannot be opened"):
        stack_files([*good_paths, tmp_path / "nope.fits"], "GREEN_CCD", 2.1, memory_mb=BAND_MB)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_cli_writes_the_expected_hdus(tmp_path, small_cube):
    paths = []
    for i, frame in enumerate(small_cube[:6]):
        hdus = [
            fits.PrimaryHDU(),
            fits.ImageHDU(frame, name="GREEN_CCD"),
            fits.ImageHDU(frame[:5] * 2, name="CA_HK"),
            fits.ImageHDU(frame + 1, name="RED_CCD"),
        ]
        hdus[1].header["BUNIT"] = "electrons"
        path = tmp_path / f"m{i}.fits"
        fits.HDUList(hdus).writeto(path)
        paths.append(str(path))
    out = tmp_path / "out" / "stack.fits"
    assert cli.main(["stack", *paths, "--nsigma", "2.4", "--band-rows", "5", "-o", str(out)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)  # checksum failures are errors
        with fits.open(out, checksum=True) as hdul:
            names = [h.name for h in hdul]
            assert names == [
                "PRIMARY",
                "GREEN_CCD",
                "RED_CCD",
                "CA_HK",
                "GREEN_CCD_UNC",
                "GREEN_CCD_CNT",
                "RED_CCD_UNC",
                "RED_CCD_CNT",
                "CA_HK_UNC",
                "CA_HK_CNT",
            ]
            assert hdul[0].header["NFRAMES"] == 6 and hdul[0].header["NSIGMA"] == 2.4
            assert "CHECKSUM" in hdul["GREEN_CCD"].header
            assert hdul["GREEN_CCD"].header["BUNIT"] == "electrons"
            assert hdul["GREEN_CCD"].data.dtype == np.dtype(">f8")
            assert hdul["GREEN_CCD_UNC"].data.dtype == np.dtype(">f4")
            assert hdul["GREEN_CCD_CNT"].data.dtype == np.dtype(">i4")
            expected = stack_cube(small_cube[:6] + 1, 2.4)
            assert np.array_equal(hdul["RED_CCD"].data, expected.avg, equal_nan=True)
            assert np.array_equal(hdul["RED_CCD_UNC"].data, expected.unc, equal_nan=True)
            assert np.array_equal(hdul["RED_CCD_CNT"].data, expected.cnt)
            assert hdul["CA_HK"].data.shape == (5, 45)
    assert not list(out.parent.glob(".*tmp*"))  # atomic write left no temporary behind


def test_cli_ext_option_and_errors(tmp_path, good_paths, capsys):
    out = tmp_path / "one.fits"
    files = [str(p) for p in good_paths]
    assert cli.main(["stack", *files, "--nsigma", "2.1", "--ext", "GREEN_CCD", "-o", str(out)]) == 0
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "GREEN_CCD", "GREEN_CCD_UNC", "GREEN_CCD_CNT"]
    assert cli.main(["stack", *files, "--nsigma", "2.1", "--ext", "RED_CCD", "-o", "x.fits"]) == 1
    assert "RED_CCD" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["stack", *files, "--nsigma", "-1", "-o", str(out)])
    assert exc.value.code == 2


def test_numba_cache_falls_back_to_a_private_temporary_directory(monkeypatch, tmp_path):
    from kpfmasters.science import stack_kernel

    writable = {"pkg": False, "user": False}

    def fake_writable(path):
        if path.startswith(str(tmp_path / "pkg")):
            return writable["pkg"]
        if path.startswith(str(tmp_path / "home")):
            return writable["user"]
        return True  # the system temporary directory

    monkeypatch.setattr(stack_kernel, "_writable_dir", fake_writable)
    env = {"HOME": str(tmp_path / "home")}
    fallback = stack_kernel.cache_fallback(str(tmp_path / "pkg"), env)
    assert fallback is not None and "kpfmasters-numba-" in fallback
    writable["user"] = True
    assert stack_kernel.cache_fallback(str(tmp_path / "pkg"), env) is None
    writable["pkg"] = True
    assert stack_kernel.cache_fallback(str(tmp_path / "pkg"), env) is None
    assert stack_kernel.cache_fallback("/x", {"NUMBA_CACHE_DIR": "/somewhere"}) is None
