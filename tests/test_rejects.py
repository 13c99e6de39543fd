"""A frame that fails only at L0 -> 2D (NaN in its overscan strip: invisible to the header
scan) is recorded; the next run makes its masters without it, and ``daily`` does that
second pass by itself."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters.sim.simulate import simulate_night
from tests.badinputs import derive, float_amps_with
from tests.smk import REPO, Night, daily_cmd, snakemake

DATE = "20230606"
COUNTS = {"bias": 2, "dark": 2, "flat": 3, "arclamp": {"autocal-une-sky": 2}}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("rejects")]


def night_with_bad_flat(root):
    night = Night(root, [DATE])
    sim = simulate_night(root / "sim", DATE, seed=11, size=48, counts=COUNTS, extras=False)
    source = sim.expected("flat")[0].path
    # Stored AMP1 columns: prescan 4 | data 24 | overscan 50: column 40 is in the strip.
    bad = derive(source, DATE, 70000.0, edit=float_amps_with({"GREEN_AMP1": [(3, 40, np.nan)]}))
    return night, bad


def test_conversion_failure_is_recorded_and_left_out_next_run(tmp_path):
    night, bad = night_with_bad_flat(tmp_path)
    first = snakemake(night, "--keep-going", check=False)
    assert first.returncode != 0
    assert "NaN" in first.stderr and bad.name in first.stderr
    assert night.master(DATE, "bias").exists() and night.master(DATE, "dark").exists()
    assert not night.master(DATE, "flat").exists()
    record = json.loads((night.work_root / "rejects" / DATE / f"{bad.stem}.json").read_text())
    assert record["name"] == bad.name and "NaN" in record["problem"]

    second = snakemake(night)
    assert second.returncode == 0
    with fits.open(night.master(DATE, "flat")) as hdul:
        rows = {r["L0FILE"]: (bool(r["USED"]), r["REASON"]) for r in hdul["INPUTS"].data}
        assert hdul[0].header["NFRAMES"] == 3
    used, reason = rows[bad.name]
    assert not used and reason.startswith("2D conversion failed: ") and "NaN" in reason
    assert night.master(DATE, "arclamp_autocal-une-sky").exists()

    # A replaced L0 file (new size/time) is tried again: the stale record no longer applies.
    os.utime(bad, ns=(bad.stat().st_atime_ns, bad.stat().st_mtime_ns + 10**9))
    third = snakemake(night, "--dry-run")
    assert f"{bad.stem}_2D.fits" in third.stdout


def test_daily_completes_the_night_in_one_call(tmp_path):
    night, bad = night_with_bad_flat(tmp_path)
    cmd = daily_cmd(night, "--no-register", log_dir=tmp_path / "logs")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "logs" / f"kpfmasters_{DATE}.out").read_text()
    assert f"1 frame(s) failed L0 -> 2D ({bad.stem}); running again without them" in log
    assert night.master(DATE, "flat").exists()
