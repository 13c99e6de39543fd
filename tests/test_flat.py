"""Master-flat normalisation (docs/reference.md §5, "Master flat, after stacking")."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy.ndimage import gaussian_filter

from kpfmasters.core.config import load_config
from kpfmasters.core.errors import InputError
from kpfmasters.science.flat import (
    FlatResult,
    load_order_mask,
    normalize_flat,
    orderlet_modes,
    rounded_mode,
)

_SETTINGS = load_config(overrides={"date": "20230606"})["masters"]["flat"]
FLAT = {k: _SETTINGS[k] for k in ("smooth_sigma", "low_light_limit")}  # the shipped values

SHAPE = (64, 96)


def designed_stack():
    """Blur-invariant design: L = 1100 everywhere away from the left/right edges.

    Bottom half (rows < 32) is 1100 (U = 1.00); the top half alternates columns 1000 / 1200
    (U = 0.91 / 1.09), whose blur is 1100 too.
    """
    stack = np.full(SHAPE, 1100.0)
    stack[32:, 0::2] = 1000.0
    stack[32:, 1::2] = 1200.0
    return stack


def designed_mask():
    """Orderlets in the interior (8+ pixels from the edges, where reflection alters L)."""
    mask = np.zeros(SHAPE, dtype=np.int16)
    mask[4:28, 10:86] = 1  # U = 1.00
    mask[36:60, 10:54] = 2  # 22 even + 22 odd columns: tie 0.91 / 1.09 -> 0.91
    mask[36:60, 55:86] = 3  # 16 odd (1.09) + 15 even (0.91) columns -> 1.09
    return mask


def reference_lamp(stack, sigma=2.0):
    return gaussian_filter(np.nan_to_num(stack, nan=0.0), sigma, mode="reflect", truncate=4.0)


def test_rounded_mode_ties_go_to_the_smaller_value():
    values = np.array([1.004, 0.996, 1.0, 1.006, 1.012, 1.014, 0.5])
    assert rounded_mode(values) == 1.0  # keys 100 x3, 101 x3, 50 x1
    assert rounded_mode(np.append(values, 1.0149)) == 1.01
    assert rounded_mode(np.array([-0.2, -0.2, 3.0])) == -0.2
    # a huge outlier takes the sorting path; same answer
    assert rounded_mode(np.append(values, 1e12)) == 1.0
    assert rounded_mode(np.append(values, [1e300, -1e300])) == 1.0


def test_designed_modes_per_orderlet_and_flat_values():
    stack, mask = designed_stack(), designed_mask()
    unc = np.full(SHAPE, 5.0)
    res = normalize_flat(stack, unc, mask, **FLAT)
    assert isinstance(res, FlatResult)
    assert res.norms == {1: 1.0, 2: 0.91, 3: 1.09}
    assert res.problems == []
    assert res.flat.dtype == np.float64 and res.unc.dtype == np.float32
    assert res.lamp.dtype == np.float64
    lamp = reference_lamp(stack)
    np.testing.assert_array_equal(res.lamp, lamp)
    ratio = stack / lamp
    for value, norm in res.norms.items():
        sel = mask == value
        np.testing.assert_array_equal(res.flat[sel], ratio[sel] / norm)
        np.testing.assert_allclose(res.unc[sel], (5.0 / lamp[sel] / norm), rtol=1e-7)
    # the top-half values are 1000/1100/0.91 and 1200/1100/1.09 (the blur leaves a ~1e-6 ripple)
    assert res.flat[40, 20] == pytest.approx(1000 / 1100 / 0.91, rel=1e-5)
    assert res.flat[40, 61] == pytest.approx(1200 / 1100 / 1.09, rel=1e-5)
    off = mask == 0
    assert np.all(res.flat[off] == 1.0) and np.all(res.unc[off] == 0.0)


def test_low_light_pixels_are_excluded_and_set_to_one():
    stack, mask = designed_stack(), designed_mask()
    unc = np.full(SHAPE, 5.0)
    # limit 1100: the 1000 columns are 'low light'; only 1200 columns count in orderlet 2
    res = normalize_flat(stack, unc, mask, **{**FLAT, "low_light_limit": 1100.0})
    assert res.norms == {1: 1.0, 2: 1.09, 3: 1.09}
    low = stack < 1100.0
    assert np.all(res.flat[low] == 1.0) and np.all(res.unc[low] == 0.0)
    bright2 = (mask == 2) & ~low
    assert np.allclose(res.flat[bright2], 1200 / 1100 / 1.09)


def test_orderlet_without_usable_pixel_is_a_problem():
    stack, mask = designed_stack(), designed_mask()
    mask[0:2, 10:20] = 5
    stack[0:2, 10:20] = 20.0  # below the limit of 50
    res = normalize_flat(stack, np.ones(SHAPE), mask, **FLAT)
    assert 5 not in res.norms and set(res.norms) == {1, 2, 3}
    assert len(res.problems) == 1 and "orderlet 5" in res.problems[0]
    assert np.all(res.flat[mask == 5] == 1.0) and np.all(res.unc[mask == 5] == 0.0)
    assert 4 not in res.norms  # absent values are simply not there


def test_nan_stack_pixels_count_as_zero_in_the_blur_and_get_flat_one():
    stack, mask = designed_stack(), designed_mask()
    stack[15, 40] = np.nan
    stack[45, 30] = np.nan
    unc = np.full(SHAPE, 3.0)
    res = normalize_flat(stack, unc, mask, **FLAT)
    lamp = reference_lamp(stack)
    np.testing.assert_array_equal(res.lamp, lamp)
    assert lamp[15, 41] < 1100 - 10  # the NaN pulled its neighbours' L down
    assert res.flat[15, 40] == 1.0 and res.unc[15, 40] == 0.0
    assert res.flat[45, 30] == 1.0 and res.unc[45, 30] == 0.0
    assert np.isfinite(res.flat).all() and np.isfinite(res.unc).all()
    sel = (mask == 1) & np.isfinite(stack)
    np.testing.assert_array_equal(res.flat[sel], (stack / lamp)[sel] / res.norms[1])


def test_mask_none_is_one_orderlet_over_the_whole_ccd():
    stack = designed_stack()
    stack[0, 0] = 10.0  # low light, even without a mask
    unc = np.full(SHAPE, 2.0)
    res = normalize_flat(stack, unc, None, **FLAT)
    # 32 x 96 pixels at U = 1.00 outnumber the 0.91 and 1.09 halves of the top
    assert res.norms == {1: 1.0}
    lamp = reference_lamp(stack)
    good = stack >= 50
    np.testing.assert_array_equal(res.flat[good], (stack / lamp)[good])
    np.testing.assert_allclose(res.unc[good], (2.0 / lamp)[good], rtol=1e-7)
    assert res.flat[0, 0] == 1.0 and res.unc[0, 0] == 0.0


def test_unc_is_scaled_like_the_flat():
    rng = np.random.default_rng(2)
    stack = 1000.0 * (1.0 + 0.02 * rng.standard_normal(SHAPE))
    unc = rng.uniform(1.0, 9.0, SHAPE)
    res = normalize_flat(stack, unc, None, **{**FLAT, "smooth_sigma": 3.0})
    lamp = gaussian_filter(stack, 3.0, mode="reflect", truncate=4.0)
    keys = np.rint(100 * stack / lamp)
    uniq, counts = np.unique(keys, return_counts=True)
    norm = uniq[counts == counts.max()].min() / 100
    assert res.norms == {1: norm}
    np.testing.assert_array_equal(res.flat, stack / lamp / norm)
    np.testing.assert_allclose(res.unc, unc / lamp / norm, rtol=1e-7)
    assert np.allclose(res.unc / res.flat, unc / stack, rtol=1e-6)  # same relative error


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="mask shape"):
        normalize_flat(np.ones((4, 4)), np.ones((4, 4)), np.ones((4, 5), dtype=int), **FLAT)
    with pytest.raises(ValueError, match="unc"):
        normalize_flat(np.ones((4, 4)), np.ones((3, 4)), None, **FLAT)


# -- order mask file ------------------------------------------------------------------------


def write_mask(path, green, red=None):
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(green, name="GREEN_CCD")]
    if red is not None:
        hdus.append(fits.ImageHDU(red, name="RED_CCD"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_load_order_mask_reads_and_returns_none_when_absent(tmp_path):
    green = designed_mask()
    path = write_mask(tmp_path / "mask.fits", green, red=green.astype(np.float32))
    got = load_order_mask(path, "GREEN_CCD", SHAPE)
    np.testing.assert_array_equal(got, green)
    assert got.dtype.kind == "i"
    np.testing.assert_array_equal(load_order_mask(path, "RED_CCD", SHAPE), green)
    assert load_order_mask(path, "CA_HK", (255, 1024)) is None


@pytest.mark.parametrize(
    "data, phrases",
    [
        (np.zeros((10, 12), np.int16), ["shape (10, 12)", "expected (64, 96)"]),
        (np.full(SHAPE, 1.5, np.float32), ["not integers"]),
        (np.full(SHAPE, np.nan, np.float32), ["not integers"]),
        (np.full(SHAPE, 6, np.int16), ["values 6..6", "expected 0..5"]),
        (np.full(SHAPE, -1, np.int16), ["values -1..-1", "expected 0..5"]),
    ],
    ids=["shape", "fraction", "nan", "six", "negative"],
)
def test_load_order_mask_rejects_bad_masks(tmp_path, data, phrases):
    path = write_mask(tmp_path / "mask.fits", data)
    with pytest.raises(InputError) as info:
        load_order_mask(path, "GREEN_CCD", SHAPE)
    message = str(info.value)
    assert message.startswith(f"{path}: order mask extension GREEN_CCD")
    for phrase in phrases:
        assert phrase in message


def test_load_order_mask_unreadable_file(tmp_path):
    bad = tmp_path / "mask.fits"
    bad.write_text("not FITS at all\n" * 100)
    with pytest.raises(InputError, match="GREEN_CCD cannot be read") as info:
        load_order_mask(bad, "GREEN_CCD", SHAPE)
    assert str(info.value).startswith(str(bad))
    with pytest.raises(InputError, match="RED_CCD cannot be read"):
        load_order_mask(tmp_path / "missing.fits", "RED_CCD", SHAPE)


def test_orderlet_modes_both_counting_paths_agree():
    labels = np.array([1, 1, 1, 2, 2, 2, 2, 3], dtype=np.uint8)
    keys = np.array([100.0, 100, 101, 109, 91, 109, 91, 120])
    expected = {1: 1.0, 2: 0.91, 3: 1.2}  # orderlet 2: tie 0.91 / 1.09 -> the smaller
    assert orderlet_modes(labels, keys, [1, 2, 3, 4]) == expected  # one bincount
    wide = orderlet_modes(np.append(labels, 1), np.append(keys, 1e12), [1, 2, 3, 4])
    assert wide == expected  # key range too wide: counted per orderlet
    assert orderlet_modes(labels[:0], keys[:0], [1]) == {}
