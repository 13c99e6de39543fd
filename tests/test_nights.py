"""Many nights in one DAG: each built, a night without data reported and skipped."""

from __future__ import annotations

import pytest
from astropy.io import fits

from kpfmasters.sim.simulate import simulate_night
from tests.smk import Night, dry_run_outputs, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("nights")]
COUNTS = {"bias": 2, "dark": 2, "flat": 2, "arclamp": {"autocal-une-sky": 2}}


def test_date_range_builds_every_night_and_skips_empty_ones(tmp_path):
    night = Night(tmp_path, ["20230601", "20230603"])
    for i, date in enumerate(("20230601", "20230603")):
        sim = simulate_night(tmp_path / f"s{i}", date, seed=i, size=48, counts=COUNTS, extras=False)
        sim.l0_dir.rename(_mk(night.l0_root) / date)
        if i == 0:
            sim.order_mask_path.rename(night.order_mask)
    config = {"dates": "20230601..20230603"}
    jobs = dry_run_outputs(night, config=config)
    assert sum(name.endswith("_2D.fits") for name in jobs) == 2 * 8
    proc = snakemake(night, config=config)
    text = proc.stdout + proc.stderr
    assert "night 20230602: no L0 files under" in text
    for date in ("20230601", "20230603"):
        made = sorted(p.name for p in (night.masters_root / date).glob("*.fits"))
        assert made == [
            f"kpf_{date}_master_{k}.fits"
            for k in ("arclamp_autocal-une-sky", "bias", "dark", "flat")
        ]
        with fits.open(night.master(date, "flat")) as hdul:
            assert hdul[0].header["INPBIAS"] == f"kpf_{date}_master_bias.fits"
    assert not (night.masters_root / "20230602").exists()


def _mk(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
