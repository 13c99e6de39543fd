"""Raw KPF frames as the telescope writes them: selection on any PRIMARY keyword (KPF's
production rules), frames that do not belong to their night, header cards astropy cannot
parse, duplicated amplifiers and bad gains, transient read failures, and rejects.

The nights are simulated in KPF's encoding (uint32 + BZERO, RICE, GREEN flipped); broken
files are derived from their frames (:mod:`badinputs`) or patched byte for byte.
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters import cli
from kpfmasters.core.config import REPO_ROOT, load_config
from kpfmasters.core.errors import InputError
from kpfmasters.plan import rejects
from kpfmasters.plan.night import INDEX_VERSION, Frame, scan_night
from kpfmasters.plan.plans import Plans
from kpfmasters.plan.selection import check_rule, plan_night
from kpfmasters.qa.records import night_report
from kpfmasters.science.l0to2d import AmpGeometry, convert_l0
from kpfmasters.sim.simulate import simulate_night
from tests.badinputs import derive, float_amps_with, replace_in_header
from tests.smk import Night, snakemake

DATE = "20230606"
OTHER = "20230605"
PRODUCTION = REPO_ROOT / "config" / "kpf_production.yaml"
COUNTS = {"bias": 3, "dark": 2, "flat": 2, "arclamp": {"autocal-thar-all-morn": 2}}
SHUTTERS = ("SCISEL", "SKYSEL", "FFSHTR", "SCRAMSHT", "SIMCALSH")


def config(root: Path, configfile: Path | None = None) -> dict:
    paths = {
        "date": DATE,
        "l0_root": str(root / "sim" / "L0"),
        "work_root": str(root / "work"),
        "masters_root": str(root / "masters"),
        "order_mask": str(root / "sim" / "order_mask.fits"),
    }
    return load_config(configfile, paths)


@pytest.fixture(scope="module")
def manual_night(tmp_path_factory):
    """A small night with the extras and the manual/test frames, 48 x 48."""
    root = tmp_path_factory.mktemp("manual")
    sim = simulate_night(root / "sim", DATE, seed=21, size=48, counts=COUNTS, manual=True)
    return root, sim


def picked(plan, mtype):
    return sorted(p.frame.name for p in plan.get(mtype).picks)


# -- selection on any PRIMARY keyword: KPF's production rules --------------------------------


def test_production_rules_leave_out_manual_and_test_frames(manual_night):
    root, sim = manual_night
    cfg = config(root, PRODUCTION)
    assert [r["keyword"] for r in cfg["masters"]["bias"]["select"]] == [
        "OBJECT",
        "ELAPSED",
        *SHUTTERS,
    ]
    assert cfg["masters"]["bias"]["nsigma"] == 2.1  # everything else keeps its default
    plan = Plans(cfg).plan(DATE)
    by_kind = {}
    for f in sim.frames:
        by_kind.setdefault(f.kind, []).append(f.name)
    manual = set(by_kind["manual"])
    assert len(manual) == 5
    assert picked(plan, "bias") == sorted(by_kind["bias"])
    assert picked(plan, "dark") == sorted(by_kind["dark"])
    # production picks flats by OBJECT only: the 120 s flat too, never the manual one
    assert picked(plan, "flat") == sorted(by_kind["flat"] + by_kind["long_flat"])
    assert not manual & {p.frame.name for s in plan.selections.values() for p in s.picks}
    # the index holds what the rules need (the shutter keywords), version bumped
    index = json.loads(Path(Plans(cfg).index_path(DATE)).read_text())
    assert index["version"] == INDEX_VERSION >= 5
    assert set(SHUTTERS) <= set(index["keys"])
    assert all(set(SHUTTERS) <= set(f["header"]) for f in index["frames"] if not f["problem"])
    # why the shutter-open bias is not picked: a near miss naming the keyword
    lines = "\n".join(plan.log_lines())
    assert "FFSHTR 'open' fails == 'closed'" in lines
    assert "ELAPSED 0.5 fails <= 0.1" in lines
    # the default rules (IMTYPE/EXPTIME) do pick the manual frames
    default = Plans(config(root)).plan(DATE)
    assert manual <= {p.frame.name for s in default.selections.values() for p in s.picks}


def test_production_file_is_shown_in_the_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "--configfile config/kpf_production.yaml" in readme
    assert "kpfmasters daily --configfile config/kpf_production.yaml" in readme


def frame(name, **header):
    return Frame(name=name, path=f"/L0/{DATE}/{name}", size=1, mtime_ns=0, header=header)


def test_strings_compare_without_trailing_blanks_and_groups_ignore_case(base_config):
    f = frame(f"KP.{DATE}.00001.00.fits", SCISEL="closed  ")
    assert check_rule(f, {"keyword": "SCISEL", "op": "==", "value": "closed"}) == ""
    assert check_rule(f, {"keyword": "SCISEL", "op": "==", "value": "closed   "}) == ""
    assert check_rule(f, {"keyword": "SCISEL", "op": "==", "value": " closed"}) != ""
    mjd = 60101.5
    frames = [
        frame(
            f"KP.{DATE}.{100 * i:05d}.00.fits",
            IMTYPE="Arclamp",
            OBJECT=obj,
            EXPTIME=30.0,
            ELAPSED=30.01,
            **{"MJD-OBS": mjd + i / 1000},
        )
        for i, obj in enumerate(
            ["autocal-UNe-all-morn", " autocal-une-all-morn", "autocal-une-all-morn  ", "other"],
            start=1,
        )
    ]
    plan = plan_night(frames, [], DATE, base_config)
    arcs = {s.obj: [p.frame.name[12:17] for p in s.picks] for s in plan.arclamps()}
    # one master for the three spellings, named by the first frame's; not two the database
    # (object compared in lowercase) would then refuse
    assert arcs == {"autocal-UNe-all-morn": ["00100", "00200", "00300"], "other": ["00400"]}


def test_the_first_stamp_asked_for_writes_every_stamp_of_the_night(manual_night, tmp_path):
    """Snakemake lists a folder once and trusts the listing: a settings or identity stamp
    written after the first look would read as missing (targets named one by one)."""
    root, _ = manual_night
    cfg = config(root)
    cfg["work_root"] = str(tmp_path / "work")
    plans = Plans(cfg)
    plan = plans.plan(DATE)
    first = Path(plans.settings_stamp(DATE, "bias"))
    made = {p.name for p in first.parent.iterdir()}
    want = {
        f"{Path(plans.master_path(DATE, s.mtype, s.tag)).stem}.json"
        for s in plan.selections.values()
        if s.buildable
    }
    assert len(want) == 4 and made == want  # bias, dark, flat and the ThAr arclamp
    used = {f.stem for s in plan.selections.values() if s.buildable for f in s.used}
    stamps = Path(cfg["work_root"]) / "2D" / DATE / ".identity"
    assert {p.stem for p in stamps.iterdir()} == used
    # a frame no master uses still gets its stamp when asked for
    unused = next(f for f in plan.frames if f.stem not in used and not f.problem)
    assert Path(plans.identity_stamp(DATE, unused.stem)).is_file()


# -- frames that do not belong ----------------------------------------------------------------


def test_frames_outside_their_night_or_exposing_past_elapsed_are_not_used(tmp_path):
    sim = simulate_night(tmp_path / "sim", DATE, seed=4, size=48, counts=COUNTS, extras=False)
    bias = sim.expected("bias")[0].path
    flat = sim.expected("flat")[0].path
    other_mjd = 60100.25  # 2023-06-05
    copy = derive(bias, DATE, 50000.0, header={"MJD-OBS": other_mjd})
    dated = derive(bias, DATE, 50100.0, header={"DATE-OBS": "2023-06-05T06:00:00.00"})
    long = derive(flat, DATE, 50200.0, header={"EXPTIME": 30.0, "ELAPSED": 29.5})
    plan = Plans(config(tmp_path)).plan(DATE)
    reasons = {p.frame.name: p.reason for s in plan.selections.values() for p in s.picks}
    assert "MJD-OBS 60100.25 lies outside night 20230606" in reasons[copy.name]
    assert "DATE-OBS '2023-06-05T06:00:00.00' lies outside night 20230606" in reasons[dated.name]
    assert reasons[long.name] == "EXPTIME 30.0 s exceeds ELAPSED 29.5 s"
    lines = "\n".join(plan.log_lines())
    for path in (copy, dated, long):
        assert f"{path.name} MJD-OBS=" in lines and "NOT USED" in lines
    assert len(plan.get("bias").used) == 3 and len(plan.get("flat").used) == 2


# -- one bad file never stops a run ---------------------------------------------------------

BAD_CARDS = {
    "EXPTIME = 0.0.0": (b"EXPTIME =                  0.0", b"EXPTIME =                0.0.0"),
    "unquoted string": (b"OBJECT  = 'autocal-bias'", b"OBJECT  = autocal bias  "),
    "control character": (b"'autocal-bias'", b"'autocal\x07bias'"),
    "unclosed quote": (b"'autocal-bias'", b"'autocal-bias "),
}


def bad_card_frames(sim) -> dict[str, Path]:
    source = sim.expected("bias")[0].path
    out = {}
    for i, (label, (old, new)) in enumerate(BAD_CARDS.items()):
        path = derive(source, DATE, 60000.0 + 100 * i)
        replace_in_header(path, old, new)
        out[label] = path
    return out


def test_unparsable_header_cards_make_one_frame_unusable(tmp_path):
    sim = simulate_night(tmp_path / "sim", DATE, seed=5, size=48, counts=COUNTS, extras=False)
    bad = bad_card_frames(sim)
    source = sim.expected("bias")[1].path

    def duplicate_amp(hdul):
        hdul.append(hdul["GREEN_AMP1"].copy())

    def zero_gain(hdul):
        hdul["RED_AMP2"].header["CCDGAIN"] = 0.0

    dup = derive(source, DATE, 61000.0, edit=duplicate_amp)
    gain = derive(source, DATE, 61100.0, edit=zero_gain)
    plan = Plans(config(tmp_path)).plan(DATE)  # no exception: the scan goes on
    problems = {f.name: f.problem for f in plan.frames}
    lines = "\n".join(plan.log_lines())
    for label, path in bad.items():
        problem = problems[path.name]
        assert "PRIMARY header card" in problem and "cannot be parsed" in problem, label
        assert f"unusable {path.name}: PRIMARY header card" in lines
    assert "EXPTIME =                0.0.0" in problems[bad["EXPTIME = 0.0.0"].name]
    assert "\\x07" in problems[bad["control character"].name]
    assert problems[dup.name] == "extension GREEN_AMP1 appears more than once"
    assert problems[gain.name] == (
        "extension RED_AMP2: keyword CCDGAIN is 0.0, expected a positive number (electrons/DN)"
    )
    assert plan.get("bias").buildable and len(plan.get("bias").used) == 3
    # the conversion refuses them too, naming file and card
    geometry = AmpGeometry.from_config(config(tmp_path))
    with pytest.raises(InputError, match=r"PRIMARY header card .*EXPTIME.* cannot be parsed"):
        convert_l0(bad["EXPTIME = 0.0.0"], tmp_path / "x.fits", geometry, 65536)
    with pytest.raises(InputError, match="extension GREEN_AMP1 appears 2 times"):
        convert_l0(dup, tmp_path / "x.fits", geometry, 65536)
    with pytest.raises(InputError, match="CCDGAIN is 0.0"):
        convert_l0(gain, tmp_path / "x.fits", geometry, 65536)


# -- no transient failure becomes permanent ----------------------------------------------------


def test_os_error_while_scanning_is_not_cached(tmp_path, monkeypatch):
    sim = simulate_night(tmp_path / "sim", DATE, seed=6, size=48, counts=COUNTS, extras=False)
    victim = sim.expected("bias")[0].path
    real_open = fits.open

    def failing_open(name, *args, **kwargs):
        if Path(name) == victim:
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    cfg = config(tmp_path)
    plans = Plans(cfg)
    index = Path(plans.index_path(DATE))
    monkeypatch.setattr("kpfmasters.plan.night.fits.open", failing_open)
    frames, _ = scan_night(cfg["l0_root"], DATE, index, plans.amp_geometry())
    hit = next(f for f in frames if f.name == victim.name)
    assert hit.transient and hit.problem == "cannot be read (Permission denied)"
    cached = {f["name"] for f in json.loads(index.read_text())["frames"]}
    assert victim.name not in cached and len(cached) == len(frames) - 1
    monkeypatch.setattr("kpfmasters.plan.night.fits.open", real_open)
    frames, _ = scan_night(cfg["l0_root"], DATE, index, plans.amp_geometry())
    assert next(f for f in frames if f.name == victim.name).problem == ""


def run_l0_script(l0: Path, out: Path, folder: Path) -> None:
    snakemake_obj = SimpleNamespace(
        input=SimpleNamespace(l0=str(l0)),
        output=[str(out)],
        log=[str(out.with_suffix(".log"))],
        params=SimpleNamespace(
            l0=str(l0),
            planned={},
            geometry=Plans(config(out.parent)).amp_geometry(),
            adc_scale=65536,
            rejects_dir=str(folder),
        ),
        threads=1,
    )
    runpy.run_path(
        str(REPO_ROOT / "scripts" / "l0_to_2d.py"), init_globals={"snakemake": snakemake_obj}
    )


def test_os_error_while_converting_is_not_a_reject(tmp_path):
    folder = tmp_path / "rejects" / DATE
    unreadable = tmp_path / "L0" / DATE / f"KP.{DATE}.00001.00.fits"
    unreadable.mkdir(parents=True)  # reading it fails with an OSError (EISDIR)
    with pytest.raises((InputError, OSError, SystemExit)):
        run_l0_script(unreadable, tmp_path / "a_2D.fits", folder)
    try:
        unreadable.read_bytes()
    except OSError as exc:
        cause = exc
    wrapped = InputError(unreadable, "cannot be read")
    wrapped.__cause__ = cause
    assert rejects.is_transient(wrapped)
    assert not folder.exists() or not list(folder.iterdir())


def test_rejects_keyed_on_identity_and_version_listed_and_cleared(tmp_path, monkeypatch, capsys):
    sim = simulate_night(tmp_path / "sim", DATE, seed=7, size=48, counts=COUNTS, extras=False)
    source = sim.expected("flat")[0].path
    bad = derive(source, DATE, 70000.0, edit=float_amps_with({"GREEN_AMP1": [(3, 40, np.nan)]}))
    cfg = config(tmp_path)
    folder = rejects.rejects_dir(cfg["work_root"], DATE)
    with pytest.raises(SystemExit):  # the script's one-line error
        run_l0_script(bad, tmp_path / "bad_2D.fits", folder)
    record = json.loads((folder / f"{bad.stem}.json").read_text())
    stat = bad.stat()
    assert record["identity"] == [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    assert record["version"] == rejects.__version__

    def marked() -> str:
        return next(f.problem for f in Plans(cfg).plan(DATE).frames if f.name == bad.name)

    assert marked().startswith(rejects.PREFIX)
    monkeypatch.setattr(rejects, "__version__", "99.0")  # a release that may read it
    assert marked() == ""
    monkeypatch.undo()
    os.chmod(bad, 0o644)  # a new change time: another file version
    assert marked() == ""

    # listed (stale now), in the QA document, then cleared
    overrides = ["--work-root", cfg["work_root"], "--l0-root", cfg["l0_root"]]
    assert cli.main(["rejects", "--date", DATE, *overrides]) == 0
    out = capsys.readouterr().out
    assert f"night {DATE}: 1 reject(s)" in out and bad.name in out and "NaN" in out
    assert "stale, tried again next run" in out
    doc = night_report(DATE, [], None, 0.01, rejects=Plans(cfg).night_rejects(DATE))
    assert [r["name"] for r in doc["rejects"]] == [bad.name] and "NaN" in doc["rejects"][0][
        "problem"
    ]
    assert cli.main(["rejects", "--date", DATE, "--clear", *overrides]) == 0
    assert "cleared 1 reject(s)" in capsys.readouterr().out
    assert not list(folder.glob("*.json"))
    assert cli.main(["rejects", "--date", DATE, *overrides]) == 0
    assert "no rejects" in capsys.readouterr().out


# -- the workflow on such a night -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("kpf_frames")
def test_workflow_with_production_rules_and_bad_frames(tmp_path):
    root = tmp_path
    sim = simulate_night(root / "sim", DATE, seed=8, size=48, counts=COUNTS, manual=True)
    bad = bad_card_frames(sim)
    other = derive(sim.expected("dark")[0].path, DATE, 62000.0, header={"MJD-OBS": 60100.3})
    night = Night(root, [DATE])
    defaults = REPO_ROOT / "config.yaml"  # --configfile replaces the Snakefile's own
    proc = snakemake(night, "--configfile", str(defaults), str(PRODUCTION))
    assert proc.returncode == 0
    manual = {f.name for f in sim.frames if f.kind == "manual"}
    for kind in ("bias", "dark", "flat", "arclamp_autocal-thar-all-morn"):
        with fits.open(night.master(DATE, kind)) as hdul:
            inputs = {r["L0FILE"]: (bool(r["USED"]), r["REASON"]) for r in hdul["INPUTS"].data}
            assert not manual & set(inputs), kind
            header = hdul[0].header
            assert header["MINMJD"] <= header["MIDMJD"] <= header["MAXMJD"]
    with fits.open(night.master(DATE, "dark")) as hdul:
        rows = {r["L0FILE"]: (bool(r["USED"]), r["REASON"]) for r in hdul["INPUTS"].data}
    assert rows[other.name][0] is False and "outside night" in rows[other.name][1]
    text = (root / "work" / "selection" / f"{DATE}.txt").read_text()
    for path in bad.values():
        assert f"unusable {path.name}: PRIMARY header card" in text
    doc = json.loads((root / "masters" / DATE / f"kpf_{DATE}_masters_qa.json").read_text())
    assert doc["rejects"] == []
