"""Incremental rebuilds and missing predecessors, checked with real Snakemake dry runs."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml
from astropy.io import fits
from astropy.time import Time

from kpfmasters.core.config import load_config
from kpfmasters.plan import plans as workflow_support
from kpfmasters.sim.simulate import simulate_night
from tests.smk import REPO, Night, dry_run_outputs, snakemake

DATE = "20230606"
COUNTS = {
    "bias": 3,
    "dark": 2,
    "flat": 2,
    "arclamp": {"autocal-une-sky": 2, "autocal-thar-all-eve": 2},
}
MASTERS = {
    f"kpf_{DATE}_master_{k}.fits"
    for k in ("bias", "dark", "flat", "arclamp_autocal-une-sky", "arclamp_autocal-thar-all-eve")
}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("incremental")]


TRACES = {f"kpf_{DATE}_master_flat_{ccd}.csv" for ccd in ("GREEN_CCD", "RED_CCD")}


def l1(masters: set[str]) -> set[str]:
    """The L1 files of ``masters``."""
    return {m.replace(".fits", "_L1.fits") for m in masters}


def with_qa(masters: set[str]) -> set[str]:
    """Rebuilt masters plus what follows them: their L1 files; when the flat is rebuilt, the
    trace files and every L1 (rules/traces.smk, rules/l1.smk); the quality assessment
    (rules/qa.smk): each master's QA folder and each rebuilt L1's figure folder (both named
    by the master's kind), the night's QA document and statistics page."""
    prefix = f"kpf_{DATE}_master_"
    follow = l1(masters)
    if f"kpf_{DATE}_master_flat.fits" in masters:
        follow |= TRACES | l1(MASTERS)
    kinds = {m[len(prefix) :].removesuffix(".fits").removesuffix("_L1") for m in masters | follow}
    kinds = {k for k in kinds if not k.startswith("flat_")}  # trace files have no QA folder
    return set(masters) | follow | kinds | {f"kpf_{DATE}_masters_qa.json", "statistics.html"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("incr")
    night = Night(root, [DATE])
    night.sim = simulate_night(root / "sim", DATE, seed=5, size=48, counts=COUNTS, extras=False)
    snakemake(night)
    return night


def add_frame_like(night, source_name, seconds):
    """A new L0 file: a copy of ``source_name`` taken ``seconds`` after UT midnight."""
    src = night.l0_root / DATE / source_name
    name = f"KP.{DATE}.{seconds:08.2f}.fits"
    with fits.open(src) as hdul:
        mjd = Time(f"{DATE[:4]}-{DATE[4:6]}-{DATE[6:]}T00:00:00", scale="utc").mjd
        hdul[0].header["MJD-OBS"] = mjd + seconds / 86400
        hdul[0].header["DATE-OBS"] = Time(hdul[0].header["MJD-OBS"], format="mjd").isot
        for hdu in hdul[1:]:
            if hdu.is_image and hdu.data is not None:
                # one DN more (raw DN * 65536 in the amplifiers): a different exposure
                hdu.data = hdu.data + (65536 if "_AMP" in hdu.name else 1)
        hdul.writeto(night.l0_root / DATE / name)
    return name


def override_file(tmp_path, **changes) -> str:
    with open(REPO / "config.yaml") as handle:
        cfg = yaml.safe_load(handle)
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_incremental_rebuilds(built, tmp_path):
    night = built
    # 1. A second run has nothing to do.
    assert dry_run_outputs(night) == []

    # 2. A new bias frame: its own 2D file, then bias -> dark -> flat -> arclamps; no other 2D.
    bias0 = night.sim.expected("bias")[0].name
    new = add_frame_like(night, bias0, 70000.0)
    assert set(dry_run_outputs(night)) == with_qa(MASTERS) | {
        new.replace(".fits", "_2D.fits"),
        f"{DATE}.txt",  # the night's selection report
    }
    snakemake(night)
    with fits.open(night.master(DATE, "bias")) as hdul:
        assert hdul[0].header["NFRAMES"] == COUNTS["bias"] + 1
        assert new in list(hdul["INPUTS"].data["L0FILE"])

    # 3. A new arclamp frame of one OBJECT: only that arclamp master and its L1 (and its 2D
    # file); the traces and the other L1 files stay.
    une = night.sim.expected("arclamp", "autocal-une-sky")[0].name
    new_arc = add_frame_like(night, une, 71000.0)
    assert set(dry_run_outputs(night)) == with_qa(
        {f"kpf_{DATE}_master_arclamp_autocal-une-sky.fits"}
    ) | {new_arc.replace(".fits", "_2D.fits"), f"{DATE}.txt"}
    snakemake(night)

    # 4. A changed order mask: flat and arclamps, the traces and every L1.
    with fits.open(night.order_mask, mode="update") as hdul:
        hdul["GREEN_CCD"].data[0, 0] = 0
    stat = night.order_mask.stat()
    os.utime(night.order_mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    flat_and_arcs = {m for m in MASTERS if "bias" not in m and "dark" not in m}
    assert set(dry_run_outputs(night)) == with_qa(flat_and_arcs)
    snakemake(night)
    assert dry_run_outputs(night) == []

    # 5. A changed parameter (the flat's clip k): flat and arclamps, traces and every L1.
    cfg = override_file(tmp_path, **{"masters.flat.nsigma": 2.5})
    assert set(dry_run_outputs(night, "--configfile", cfg)) == with_qa(flat_and_arcs)
    # ... while a parameter of the arclamps only touches the arclamps and their L1 files.
    cfg = override_file(tmp_path, **{"masters.arclamp.nsigma": 3.0})
    assert set(dry_run_outputs(night, "--configfile", cfg)) == with_qa(
        {m for m in MASTERS if "arclamp" in m}
    )


def test_code_version_is_a_rule_parameter(monkeypatch):
    cfg = load_config(overrides={"date": DATE, "l0_root": "/nonexistent"})
    night = workflow_support.Plans(cfg)
    night._plans[DATE] = workflow_support.plan_night([], [], DATE, cfg)
    a = night.master_params(DATE, "bias")
    monkeypatch.setattr(workflow_support, "__version__", "99.0.0")
    b = night.master_params(DATE, "bias")
    assert a["version"] != b["version"] and a["cfghash"] != b["cfghash"]


def test_missing_predecessors_use_the_nearest_master(built, tmp_path):
    """A night with biases but no darks and no flats calibrates with the built night's."""
    night = built
    later = "20230608"
    sim2 = simulate_night(
        tmp_path / "sim2",
        later,
        seed=6,
        size=48,
        extras=False,
        counts={"bias": 3, "dark": 0, "flat": 0, "arclamp": {"autocal-une-sky": 2}},
    )
    shutil.copytree(sim2.l0_dir, night.l0_root / later)
    proc = snakemake(night, config={"date": later})
    made = sorted(p.name for p in (night.masters_root / later).glob("*.fits"))
    assert made == [
        f"kpf_{later}_master_arclamp_autocal-une-sky.fits",
        f"kpf_{later}_master_arclamp_autocal-une-sky_L1.fits",
        f"kpf_{later}_master_bias.fits",
        f"kpf_{later}_master_bias_L1.fits",
    ]
    # No flat of its own: the L1 files use the earlier night's traces, and say so.
    assert not list((night.masters_root / later).glob("*.csv"))
    for name in made[1::2]:
        with fits.open(night.masters_root / later / name) as hdul:
            assert hdul[0].header["TRACFGRN"] == f"kpf_{DATE}_master_flat_GREEN_CCD.csv"
            assert hdul[0].header["TRACFRED"] == f"kpf_{DATE}_master_flat_RED_CCD.csv"
            table = hdul["INPUTS"].data
            roles = dict(zip(table["ROLE"], table["FILENAME"], strict=True))
            assert roles["trace_GREEN_CCD"] == f"kpf_{DATE}_master_flat_GREEN_CCD.csv"
    text = proc.stdout + proc.stderr
    assert f"master dark for {later} not made: 0 frame(s) matched" in text
    with fits.open(night.masters_root / later / made[0]) as hdul:
        assert hdul[0].header["INPBIAS"] == f"kpf_{later}_master_bias.fits"
        assert hdul[0].header["INPDARK"] == f"kpf_{DATE}_master_dark.fits"
        assert hdul[0].header["INPFLAT"] == f"kpf_{DATE}_master_flat.fits"

    # With a maximum age of one day, the arclamp cannot be calibrated: a clear error for that
    # master only; the night's own bias is still made and the run succeeds.
    shutil.rmtree(night.masters_root / later)
    cfg = override_file(tmp_path, **{"predecessors.max_age_days": 1})
    proc = snakemake(night, "--configfile", cfg, config={"date": later})
    text = proc.stdout + proc.stderr
    assert (
        f"master arclamp 'autocal-une-sky' for {later} not made: night {later} has no master "
        f"dark of its own and the nearest (kpf_{DATE}_master_dark.fits) is 2 days away, more "
        "than the maximum age of 1 days"
    ) in text
    made = sorted(p.name for p in (night.masters_root / later).glob("*.fits"))
    # ... and the earlier night's traces are too old for its L1: none is made, and it says so.
    assert made == [f"kpf_{later}_master_bias.fits"]
    assert f"no L1 products for {later}: night {later} has no master order trace" in text
