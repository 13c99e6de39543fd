"""Operators' mistakes, files that change, names that always work, settings that rebuild.

Each test reproduces what an operator met on a small simulated night and asserts the exit
status, the exact line printed, and the files on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.io import fits

from kpfmasters.core.config import load_config
from kpfmasters.core.errors import InputError
from kpfmasters.core.naming import master_name, object_tag
from kpfmasters.plan.plans import Plans
from kpfmasters.qa.records import check_record
from kpfmasters.qa.summary import master_row
from kpfmasters.sim.simulate import simulate_night
from kpfmasters.workflow.jobs import check_planned_header
from kpfmasters.workflow.pipeline import workflow_failure
from tests.smk import REPO, Night, daily_cmd, snakemake

DATE = "20230606"
CLI = [sys.executable, "-m", "kpfmasters.cli"]


def env_without_db(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
    return {**env, "PYTHONPATH": str(REPO), **extra}


# -- names (item 3) ----------------------------------------------------------------------------
def test_long_and_periodic_object_tags_are_hashed_and_short():
    periodic = "autocal-" + "a" * 20
    long = "x" * 210
    assert object_tag(periodic) == "autocal-aa_67d81a81"
    assert object_tag(long) == "xx_aa10a2d2"
    assert object_tag("autocal-thar-all-eve") == "autocal-thar-all-eve"
    # a long value that only differs at its end still gets its own name
    assert object_tag("y" * 100 + "1") != object_tag("y" * 100 + "2")
    for obj in (periodic, long, "lamp " + "ab" * 200, "é" * 300):
        name = master_name(DATE, "arclamp", obj)
        assert len(name.encode()) <= 100 and not re.search(r"(.{1,8}?)\1{7,}", name)


@pytest.mark.slow
def test_a_night_with_such_objects_builds_its_dag(tmp_path):
    objects = {"autocal-" + "a" * 20: 2, "x" * 210: 2}
    counts = {"bias": 2, "dark": 2, "flat": 2, "arclamp": objects}
    simulate_night(tmp_path / "sim", DATE, seed=3, size=48, counts=counts, extras=False)
    proc = snakemake(Night(tmp_path, [DATE]), "--dry-run")
    assert "PeriodicWildcardError" not in proc.stderr
    for tag in ("autocal-aa_67d81a81", "xx_aa10a2d2"):
        assert f"masters/{DATE}/kpf_{DATE}_master_arclamp_{tag}.fits" in proc.stdout + proc.stderr


# -- configuration (items 4, 5, 10) -------------------------------------------------------------
def test_paths_resolve_against_the_callers_directory_and_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(
        overrides={
            "date": DATE,
            "l0_root": "raw #1: L0",
            "work_root": "~/work",
            "masters_root": "out/masters",
            "order_mask": "~/mask.fits",
        }
    )
    assert cfg["l0_root"] == str(tmp_path / "raw #1: L0")
    assert cfg["work_root"] == str(tmp_path / "home" / "work")
    assert cfg["masters_root"] == str(tmp_path / "out" / "masters")
    assert cfg["order_mask"] == str(tmp_path / "home" / "mask.fits")


def test_output_roots_inside_l0_root_are_refused(tmp_path):
    proc = subprocess.run(
        [*CLI, "select", "--date", DATE, "--set", f"l0_root={tmp_path}/L0"]
        + ["--set", f"masters_root={tmp_path}/L0/masters"],
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"kpfmasters select: error: configuration key masters_root: {tmp_path}/L0/masters lies "
        f"inside l0_root {tmp_path}/L0; expected an output directory outside the raw data"
    ]


def test_config_typos_name_the_key_on_one_line(tmp_path):
    daily = subprocess.run(
        [*CLI, "daily", "--set", "dat=20230606"],
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert daily.returncode == 1
    assert daily.stderr.splitlines() == [
        "kpfmasters daily: error: configuration key dat: not a known key; did you mean date?"
    ]
    partial = tmp_path / "partial.yaml"
    partial.write_text("masters:\n  flat:\n    nsigmaa: 3\n")
    sel = subprocess.run(
        [*CLI, "select", "--date", DATE, "--configfile", str(partial)],
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert sel.returncode == 1
    assert sel.stderr.splitlines() == [
        "kpfmasters select: error: configuration key masters.flat.nsigmaa: not a known key; "
        "did you mean nsigma?"
    ]
    smk = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path)]
        + ["--cores", "1", "--dry-run", "--config", f"dat={DATE}", f"l0_root={tmp_path}/L0"],
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert smk.returncode == 1
    said = (smk.stdout + smk.stderr).splitlines()
    errors = [ln for ln in said if not ln.startswith("Config file ")]
    assert errors == [
        "kpfmasters: error: configuration key dat: not a known key; did you mean date?"
    ]


@pytest.fixture(scope="module")
def small_night(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops")
    counts = {"bias": 3, "dark": 2, "flat": 2, "arclamp": {}}
    simulate_night(root / "sim", DATE, seed=21, size=48, counts=counts, extras=False)
    return Night(root, [DATE])


def tree(root: Path) -> list[tuple[str, int, int]]:
    if not root.exists():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


def test_select_writes_nothing_and_survives_a_closed_pipe(small_night, tmp_path):
    work = tmp_path / "work"
    args = [*CLI, "select", "--date", DATE, "--l0-root", str(small_night.l0_root)]
    args += ["--work-root", str(work), "--set", f"masters_root={tmp_path}/masters"]
    full = subprocess.run(args, capture_output=True, text=True, env=env_without_db())
    assert full.returncode == 0, full.stderr
    assert full.stdout.startswith(f"night {DATE}: 7 L0 file(s)\n")
    assert not work.exists() and not (tmp_path / "masters").exists()  # writes nothing
    piped = subprocess.run(
        ["bash", "-c", " ".join(f"'{a}'" for a in args) + " | head -1; echo ${PIPESTATUS[0]}"],
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert piped.stdout.splitlines() == [f"night {DATE}: 7 L0 file(s)", "0"]
    assert piped.stderr == ""


def test_unwritable_work_root_is_one_line(small_night, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        daily_cmd(small_night, "--no-register", "--set", f"work_root={blocker}/work"),
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"kpfmasters daily: error: {blocker}/work/locks: Not a directory"
    ]


def test_full_work_root_is_one_line(small_night, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        try:  # fill it
            with open(full / "filler", "wb") as handle:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
        proc = subprocess.run(
            daily_cmd(small_night, "--no-register", "--set", f"work_root={full}/work")
            + ["--log-dir", str(full / "logs")],
            capture_output=True,
            text=True,
            env=env_without_db(),
        )
    finally:
        subprocess.run(["umount", str(full)])
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr == (
        f"kpfmasters daily: error: {full}/work/locks/kpfmasters_{DATE}.lock: cannot write the "
        "night lock (No space left on device)\n"
    )


def test_lock_and_log_never_follow_a_symlink(small_night, tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    work = tmp_path / "work"
    lock = work / "locks" / f"kpfmasters_{DATE}.lock"
    lock.parent.mkdir(parents=True)
    lock.symlink_to(precious)
    cmd = daily_cmd(small_night, "--no-register", "--set", f"work_root={work}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_without_db())
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"kpfmasters daily: error: {lock} is a symbolic link; expected a regular file the "
        "tool creates (remove the link)"
    ]
    assert precious.read_text() == "keep me\n"

    lock.unlink()
    log = small_night.root / "logs" / f"kpfmasters_{DATE}.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to(precious)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env_without_db())
    finally:
        log.unlink()
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"kpfmasters daily: error: {log} is a symbolic link; expected a regular file the "
        "tool creates (remove the link)"
    ]
    assert precious.read_text() == "keep me\n"
    assert lock.read_text() == ""  # the night lock was taken and released


def test_failure_line_never_advises_unlock_while_a_run_is_alive(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (locks / "kpfmasters_20230605.lock").write_text(f"pid 1 child {other.pid} since now")
        text = (
            "LockException:\nError: Directory cannot be locked. ... If you are sure that no "
            "other instances of snakemake are running on this directory, the remaining lock "
            "was likely caused by a kill signal or a power loss. It can be removed with the "
            "--unlock argument.\n"
        )
        line = workflow_failure(text, tmp_path)
        assert line == (
            "another run is writing in the work root (kpfmasters_20230605.lock (pid 1 child "
            f"{other.pid} since now)); run again once it has ended"
        )
    finally:
        other.kill()
        other.wait()
    assert "--unlock" in workflow_failure(text, tmp_path)  # no live run: Snakemake's words


# -- operators' mistakes (item 5) ---------------------------------------------------------------
@pytest.mark.slow
def test_mistakes_make_what_can_be_made_then_fail_with_one_line(small_night, tmp_path):
    base = tmp_path / "site #1: KPF"  # a path with ' #' and ': ' reaches Snakemake intact
    shutil.copytree(small_night.l0_root, base / "L0")
    env = env_without_db(HOME=str(tmp_path / "home"))
    env.pop("KPFPIPE_TEST_DATA", None)  # the order mask's default comes from it
    cmd = [*CLI, "daily", "--date", DATE, "--no-register", "--set", "l0_root=L0"]
    cmd += ["--set", "work_root=work", "--set", "masters_root=~/masters", "--log-dir", "logs"]

    typo = subprocess.run(
        [*cmd, "--set", "l0_root=L0-typo"], cwd=base, capture_output=True, text=True, env=env
    )
    assert typo.returncode == 1
    assert typo.stderr.splitlines() == [
        f"kpfmasters daily: error: night {DATE}: l0_root {base}/L0-typo does not exist; "
        f"expected the directory holding {DATE}/KP.{DATE}.*.fits; nothing made"
    ]

    proc = subprocess.run(cmd, cwd=base, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    masters = tmp_path / "home" / "masters" / DATE
    mask = "/KPF-Pipeline-TestData/order_mask_3_2_20230502.fits"
    pattern = (
        rf"kpfmasters daily: error: night {DATE}: 2 master\(s\) in {re.escape(str(masters))}, "
        r"no row\(s\) registered, \d+ s; "
        rf"master flat for {DATE} not made: the order mask {mask} does not exist \(expected "
        r"the order-trace mask FITS file of configuration key order_mask\) "
        r"\(KPFPIPE_TEST_DATA is not set\); "
        rf"log {re.escape(str(base))}/logs/kpfmasters_{DATE}.out"
    )
    assert len(proc.stderr.splitlines()) == 1 and re.fullmatch(pattern, proc.stderr.strip())
    assert sorted(p.name for p in masters.glob("*.fits")) == [
        f"kpf_{DATE}_master_bias.fits",
        f"kpf_{DATE}_master_dark.fits",
    ]
    assert (base / "work" / "2D" / DATE).is_dir() and not (base / "L0" / "work").exists()
    passed = json.dumps(
        __import__("yaml").safe_load((base / "work" / "daily" / f"{DATE}.config.yaml").read_text())
    )
    assert f'"l0_root": "{base}/L0"' in passed  # ' #' and ': ' intact


# -- settings and files that change (items 4 and 6) ----------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A night built by a plain Snakemake run (its metadata in another directory)."""
    root = tmp_path_factory.mktemp("built")
    counts = {"bias": 3, "dark": 2, "flat": 0, "arclamp": {}}
    simulate_night(root / "sim", DATE, seed=31, size=48, counts=counts, extras=False)
    night = Night(root, [DATE])
    snakemake(night)
    return night


def state(night: Night) -> dict:
    out = {}
    for folder in (night.masters_root / DATE, night.work_root / "2D" / DATE):
        for p in sorted(folder.glob("*.fits")):
            out[p.name] = p.stat().st_mtime_ns
    return out


@pytest.mark.slow
def test_a_changed_setting_rebuilds_whichever_way_the_night_was_made(built):
    night = built
    bias = night.master(DATE, "bias")
    before = state(night)
    old_hash = fits.getheader(bias)["CFGHASH"]
    proc = subprocess.run(
        daily_cmd(night, "--no-register", "--set", "masters.bias.nsigma=2.5"),
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert proc.returncode == 0, proc.stderr
    header = fits.getheader(bias)
    assert header["NSIGMA"] == 2.5 and header["CFGHASH"] != old_hash
    after = state(night)
    assert after[bias.name] > before[bias.name]
    assert after[f"kpf_{DATE}_master_dark.fits"] > before[f"kpf_{DATE}_master_dark.fits"]
    assert all(after[k] == v for k, v in before.items() if k.endswith("_2D.fits"))

    partial = night.root / "nsigma.yaml"
    partial.write_text("masters:\n  bias:\n    nsigma: 2.5\n")  # the same setting, as a file
    same = subprocess.run(
        daily_cmd(night, "--no-register", "--configfile", str(partial)),
        capture_output=True,
        text=True,
        env=env_without_db(),
    )
    assert same.returncode == 0, same.stderr
    assert state(night) == after
    log = (night.root / "logs" / f"kpfmasters_{DATE}.out").read_text()
    assert "Nothing to be done" in log.split("=== kpfmasters daily")[-1]

    snakemake(night)  # a plain run with the defaults: the bias goes back to nsigma 2.1
    assert fits.getheader(bias)["NSIGMA"] == 2.1
    assert fits.getheader(bias)["CFGHASH"] == old_hash


@pytest.mark.slow
def test_l0_files_that_change_are_converted_again_by_identity(built):
    night = built
    l0 = sorted((night.l0_root / DATE).glob("*.fits"))
    biases = [p for p in l0 if fits.getheader(p)["IMTYPE"] == "Bias"]
    darks = [p for p in l0 if fits.getheader(p)["IMTYPE"] == "Dark"]
    before = state(night)
    # re-delivered with an older time (rsync -t, cp -p): other bytes, an mtime in the past
    redelivered = biases[0]
    old = redelivered.stat().st_mtime_ns - 86400 * 10**9
    data = bytearray(redelivered.read_bytes())
    with fits.open(redelivered) as hdul:
        offset = hdul.fileinfo(1)["datLoc"] + 4 * 200
    data[offset] ^= 0x01
    tmp = redelivered.with_name("incoming.tmp")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(old, old))
    os.replace(tmp, redelivered)
    # a clock ahead: an mtime in the future
    future = darks[0]
    ahead = time.time_ns() + 2 * 86400 * 10**9
    os.utime(future, ns=(ahead, ahead))

    proc = subprocess.run(
        daily_cmd(night, "--no-register"), capture_output=True, text=True, env=env_without_db()
    )
    assert proc.returncode == 0, proc.stderr
    after = state(night)
    two_d = {p.name: f"{p.stem}_2D.fits" for p in l0}
    assert after[two_d[redelivered.name]] > before[two_d[redelivered.name]]
    assert after[two_d[future.name]] > before[two_d[future.name]]
    assert after[two_d[biases[1].name]] == before[two_d[biases[1].name]]
    assert after[f"kpf_{DATE}_master_bias.fits"] > before[f"kpf_{DATE}_master_bias.fits"]
    log = (night.root / "logs" / f"kpfmasters_{DATE}.out").read_text().split("=== kpfmasters")[-1]
    assert f"L0 file {future} has a modification time in the future (" in log
    assert "converted anyway" in log

    again = subprocess.run(
        daily_cmd(night, "--no-register"), capture_output=True, text=True, env=env_without_db()
    )
    assert again.returncode == 0, again.stderr
    assert state(night) == after  # the future time does not fail or rerun the job
    log = (night.root / "logs" / f"kpfmasters_{DATE}.out").read_text().split("=== kpfmasters")[-1]
    assert "Nothing to be done" in log


def test_the_2d_job_fails_a_frame_replaced_after_planning(small_night, tmp_path):
    paths = small_night.config(work_root=tmp_path / "work")
    cfg = load_config(overrides={k: str(v) for k, v in paths.items()})
    plans = Plans(cfg)
    frames = plans.plan(DATE).frames
    bias = next(f for f in frames if f.header["IMTYPE"] == "Bias")
    dark = next(f for f in frames if f.header["IMTYPE"] == "Dark")
    planned = plans.planned_header(DATE, bias.stem)
    copy = tmp_path / bias.name
    shutil.copy(bias.path, copy)
    check_planned_header(copy, planned)  # unchanged: fine
    shutil.copy(dark.path, copy)  # replaced by another exposure between plan and job
    with pytest.raises(InputError) as err:
        check_planned_header(copy, planned)
    assert str(err.value) == (
        f"{copy}: PRIMARY header changed after planning: IMTYPE is 'Dark', the plan read "
        f"'Bias'; EXPTIME is {dark.header['EXPTIME']!r}, the plan read "
        f"{bias.header['EXPTIME']!r}; MJD-OBS is {dark.header['MJD-OBS']!r}, the plan read "
        f"{bias.header['MJD-OBS']!r} (the file was replaced; the next run plans it again)"
    )


# -- the demo's QA (item 11) -----------------------------------------------------------------------
def test_a_flag_that_follows_from_the_frame_count_is_a_note():
    def record(nframes):
        return {
            "master": "dark",
            "type": "dark",
            "date": DATE,
            "nframes": nframes,
            "configuration": {"flag_min_count": 10},
            "ccds": {"GREEN_CCD": {"low_count_fraction": 1.0, "bunit": "electrons/sec"}},
        }

    qa = load_config(overrides={"date": DATE})["qa"]
    notes: list[str] = []
    assert check_record(record(5), qa, 0.01, notes) == []
    assert notes == [
        f"master dark of {DATE} GREEN_CCD: 100.0% of the pixels have a low CNT, more than "
        "flag_fraction = 1% (INFOBITS set): by construction, 5 frame(s) < flag_min_count 10"
    ]
    assert len(check_record(record(12), qa, 0.01, notes)) == 1 and len(notes) == 1


@pytest.mark.slow
def test_readme_one_master_command_works_as_written_and_the_table_agrees(small_night, tmp_path):
    readme = (REPO / "README.md").read_text()
    match = re.search(
        r"^(snakemake --cores 8 \S+master_flat\.fits \\\n\s+--config \S+)", readme, re.M
    )
    assert match, "README's one-master command"
    command = match.group(1).replace("\\\n", " ")
    masters = tmp_path / "masters"
    command = command.replace("/data/kpf/masters", str(masters))
    (tmp_path / "testdata").mkdir()
    shutil.copy(small_night.order_mask, tmp_path / "testdata" / "order_mask_3_2_20230502.fits")
    env = env_without_db(
        KPFPIPE_L0_DIR=str(small_night.l0_root),
        KPFCRONJOB_SBX=str(tmp_path / "sbx"),
        KPFPIPE_MASTERS_BASE_DIR=str(masters),
        KPFPIPE_TEST_DATA=str(tmp_path / "testdata"),
    )
    argv = command.split()
    argv = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *argv[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    flat = masters / DATE / f"kpf_{DATE}_master_flat.fits"
    assert sorted(p.name for p in (masters / DATE).glob("*.fits")) == [
        f"kpf_{DATE}_master_bias.fits",
        f"kpf_{DATE}_master_dark.fits",
        flat.name,
    ]
    assert (tmp_path / "sbx" / "kpfmasters" / ".snakemake").is_dir()  # one metadata place
    assert not (tmp_path / ".snakemake" / "metadata").exists()
    for path in (masters / DATE).glob("*.fits"):
        assert master_row(path)["median"] == fits.getheader(path, "GREEN_CCD")["QCMEDIAN"]


def test_a_stale_master_takes_its_l1_wls_l2_and_traces_with_it(tmp_path):
    """Masters the night's frames no longer make are retired with every file made from them:
    the L1, an arclamp's wavelength solution and L2, the flat's trace files."""
    counts = {"bias": 2, "dark": 0, "flat": 0, "arclamp": {}}
    simulate_night(tmp_path / "sim", DATE, seed=5, size=48, counts=counts, extras=False)
    night = Night(tmp_path, [DATE])
    folder = night.masters_root / DATE
    folder.mkdir(parents=True)
    made = [
        "dark.fits", "dark_L1.fits", "flat.fits", "flat_L1.fits", "flat_GREEN_CCD.csv",
        "flat_RED_CCD.csv", "arclamp_autocal-thar-all-morn.fits",
        "arclamp_autocal-thar-all-morn_L1.fits", "WLS_autocal-thar-all-morn_L1.fits",
        "arclamp_autocal-thar-all-morn_L2.fits",
    ]  # fmt: skip
    for name in made:
        (folder / f"kpf_{DATE}_master_{name}").write_bytes(b"x")
    # a solution whose arclamp master is not on disk is not made from a stale master
    other = folder / f"kpf_{DATE}_master_WLS_autocal-lfc-all-morn_L1.fits"
    other.write_bytes(b"x")
    cfg = load_config(overrides={k: str(v) for k, v in night.config().items()})
    stale = Plans(cfg).stale_masters(DATE)
    assert sorted(Path(p).name for p in stale) == sorted(f"kpf_{DATE}_master_{n}" for n in made)
    assert str(other) not in stale  # not made from a stale master
