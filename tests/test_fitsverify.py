"""Every FITS product passes HEASARC's ``fitsverify`` with 0 warnings and 0 errors.

Products: 2D files (2 and 4 amplifiers, RICE-compressed input, a CCD absent, NaN pixels),
the four master types (made in-process, exactly as the rules' scripts make them, from the
workflow's own selection) and the ``kpfmasters stack`` output. fitsverify also checks
CHECKSUM/DATASUM, which every product must carry. The whole workflow's products are checked
on a broken night in test_robustness.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters import cli
from kpfmasters.core.config import load_config
from kpfmasters.core.products import product
from kpfmasters.plan.plans import Plans
from kpfmasters.science.l0to2d import AmpGeometry, convert_l0
from kpfmasters.science.master import MasterJob, build_master
from kpfmasters.sim.simulate import simulate_night
from tests.verifyfits import assert_verified, fitsverify, needs_fitsverify

pytestmark = [needs_fitsverify, pytest.mark.xdist_group("fitsverify")]

DATE = "20230606"
COUNTS = {"bias": 2, "dark": 2, "flat": 2, "arclamp": {"autocal-une-sky": 2}}


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> dict[str, Path]:
    """Every product type, made once: name -> path."""
    root = tmp_path_factory.mktemp("fitsverify")
    simulate_night(root / "sim", DATE, seed=2, size=48, counts=COUNTS, extras=False)
    cfg = load_config(
        overrides={
            "date": DATE,
            "l0_root": str(root / "sim" / "L0"),
            "work_root": str(root / "work"),
            "masters_root": str(root / "masters"),
            "order_mask": str(root / "sim" / "order_mask.fits"),
        }
    )
    plans = Plans(cfg, main_process=False)
    geometry = AmpGeometry.from_config(cfg)
    out: dict[str, Path] = {}
    for mtype in ("bias", "dark", "flat", "arclamp"):
        tag = "autocal-une-sky" if mtype == "arclamp" else None
        for frame in plans.selection(DATE, mtype, tag).used:
            convert_l0(frame.path, plans.twod_path(DATE, frame.name), geometry, cfg["adc_scale"])
            l0 = frame.path
        params = plans.master_params(DATE, mtype, tag)
        job = MasterJob(
            mtype=mtype,
            date=DATE,
            output=plans.master_path(DATE, mtype, tag),
            frames=plans.frames_2d(DATE, mtype, tag),
            rows=params["rows"],
            settings=params["settings"],
            obj=params["obj"],
            predecessors={m: plans.predecessor(DATE, m) for m in product(mtype).predecessors},
            order_mask=cfg["order_mask"] if mtype == "flat" else None,
            stack=cfg["stack"],
            flag_fraction=params["flag_fraction"],
            cfghash=params["cfghash"],
        )
        build_master(job)
        out[f"master {mtype}"] = Path(job.output)
    out["2D, 2 amplifiers"] = Path(job.frames[0])

    variants = root / "variants"
    counts = {"bias": 1, "dark": 0, "flat": 0, "arclamp": {}}
    four = simulate_night(
        variants / "four", DATE, seed=3, size=48, amps=4, counts=counts, extras=False, compress=True
    )
    source = four.frames[0].path
    out["2D, 4 RICE-compressed amplifiers"] = variants / "four_2D.fits"
    convert_l0(source, out["2D, 4 RICE-compressed amplifiers"], geometry, cfg["adc_scale"])

    with fits.open(l0) as hdul:
        kept = [h.copy() for h in hdul if not h.name.startswith("RED_") and h.name != "CA_HK"]
        green_only = variants / "green_only.fits"
        fits.HDUList(kept).writeto(green_only)
        nan = [h.copy() for h in hdul]
    out["2D, RED CCD and CA_HK absent"] = variants / "green_only_2D.fits"
    convert_l0(green_only, out["2D, RED CCD and CA_HK absent"], geometry, cfg["adc_scale"])

    amp = nan[[h.name for h in nan].index("GREEN_AMP1")]
    data = amp.data.astype(np.float64)
    data[5, 10], data[6, 11] = np.nan, np.inf
    nan[[h.name for h in nan].index("GREEN_AMP1")] = fits.ImageHDU(data, amp.header, "GREEN_AMP1")
    fits.HDUList(nan).writeto(variants / "nan.fits")
    out["2D, NaN pixels"] = variants / "nan_2D.fits"
    convert_l0(variants / "nan.fits", out["2D, NaN pixels"], geometry, cfg["adc_scale"])

    out["kpfmasters stack"] = variants / "stack.fits"
    argv = ["stack", *plans.frames_2d(DATE, "bias"), "--nsigma", "2.1", "-o"]
    assert cli.main([*argv, str(out["kpfmasters stack"])]) == 0
    return out


PRODUCTS = [
    "master bias",
    "master dark",
    "master flat",
    "master arclamp",
    "2D, 2 amplifiers",
    "2D, 4 RICE-compressed amplifiers",
    "2D, RED CCD and CA_HK absent",
    "2D, NaN pixels",
    "kpfmasters stack",
]


@pytest.mark.parametrize("product", PRODUCTS)
def test_product_passes_fitsverify(products, product):
    path = products[product]
    with fits.open(path) as hdul:
        assert all("CHECKSUM" in h.header and "DATASUM" in h.header for h in hdul)
        if product == "2D, RED CCD and CA_HK absent":
            assert [h.name for h in hdul] == ["PRIMARY", "GREEN_CCD"]
        if product == "2D, NaN pixels":
            assert np.isnan(hdul["GREEN_CCD"].data).sum() == 2
    assert_verified(path)


def test_fitsverify_catches_a_damaged_product(products, tmp_path):
    """The check is not vacuous: one flipped bit in a master's data is reported."""
    damaged = tmp_path / "damaged.fits"
    data = bytearray(products["master bias"].read_bytes())
    with fits.open(products["master bias"]) as hdul:
        data[hdul.fileinfo(1)["datLoc"] + 3] ^= 0x01
    damaged.write_bytes(bytes(data))
    warnings, errors, report = fitsverify(damaged)
    assert warnings == 2 and errors == 0
    assert "Data checksum is not consistent with  the DATASUM keyword" in report
