"""``kpfmasters daily`` stopped by a signal, or killed outright, mid-write.

SIGTERM to ``daily`` reaches its workflow's whole process group (Snakemake and the job
writing a master); ``daily`` waits for it, exits 143 with one line, and leaves no process
behind, so the next ``daily`` is the only writer. A ``daily`` killed outright leaves its
Snakemake running: that run keeps the night (its lock is inherited), so a second ``daily``
refuses the night, naming the live workflow, and leaves the Snakemake lock alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
import warnings

import pytest
from astropy.io import fits

from kpfmasters.science.master import read_verified
from kpfmasters.sim.simulate import simulate_night
from kpfmasters.workflow.pipeline import group_alive, snakemake_locks
from tests.pausehook import install, paused_env, wait_for_pause
from tests.smk import REPO, Night, daily_cmd

pytestmark = [pytest.mark.slow]  # each test has its own night: they spread over workers

DATE = "20230606"
COUNTS = {"bias": 3, "dark": 2, "flat": 0, "arclamp": {}}


@pytest.fixture
def night(tmp_path):
    simulate_night(tmp_path / "sim", DATE, seed=12, size=48, counts=COUNTS, extras=False)
    n = Night(tmp_path, [DATE])
    n.hook = install(tmp_path / "hook")
    return n


def plain_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
    return {**env, "PYTHONPATH": str(REPO)}


def child_of(lock) -> int:
    match = re.match(r"pid \d+ child (\d+) since ", lock.read_text())
    assert match, lock.read_text()
    return int(match.group(1))


def snapshot(folder) -> dict:
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size, hashlib.md5(p.read_bytes()).hexdigest())
        for p in sorted(folder.iterdir())
    }


def assert_consistent(night: Night) -> None:
    for kind in ("bias", "dark"):
        path = night.master(DATE, kind)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with fits.open(path, checksum=True) as hdul:
                assert hdul[-1].name == "INPUTS"
        assert read_verified(path, "GREEN_CCD").shape == (48, 48)
    dark = fits.getheader(night.master(DATE, "dark"))
    assert dark["INPBIAS"] == night.master(DATE, "bias").name
    assert not list(night.master(DATE, "bias").parent.glob(".*"))  # no temporaries


def test_sigterm_stops_the_whole_run_and_the_next_daily_is_the_only_writer(night, tmp_path):
    bias = night.master(DATE, "bias")
    mark, release = tmp_path / "paused", tmp_path / "release"
    lock = night.work_root / "locks" / f"kpfmasters_{DATE}.lock"
    first = subprocess.Popen(
        daily_cmd(night, "--no-register"),
        env=paused_env(night.hook, REPO, bias, mark, release),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = wait_for_pause(mark, first)
    child = child_of(lock)
    assert group_alive(child) and os.getpgid(writer) == child  # the job is in the group
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert err.splitlines() == [
        f"kpfmasters daily: error: stopped by SIGTERM: the workflow (process group {child}) "
        "was sent SIGTERM and has ended; run again to finish the night"
    ]
    assert out == ""
    assert not group_alive(child)  # Snakemake and the paused writer are gone
    with pytest.raises(ProcessLookupError):
        os.kill(writer, 0)
    assert not bias.exists()
    assert lock.read_text() == ""  # released

    second = subprocess.run(
        daily_cmd(night, "--no-register"), env=plain_env(), capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"night {DATE}: 2 master(s) in {night.masters_root}/{DATE}")
    assert second.stderr == ""
    log = (night.root / "logs" / f"kpfmasters_{DATE}.out").read_text()
    assert "rerun-incomplete" not in log.split("=== kpfmasters daily")[-1].replace(
        "rerun-incomplete: true", ""
    )
    assert_consistent(night)
    before = snapshot(bias.parent)
    time.sleep(2)
    assert snapshot(bias.parent) == before  # nobody else writes
    assert not snakemake_locks(night.work_root)


def test_daily_killed_outright_keeps_its_night_until_its_workflow_ends(night, tmp_path):
    bias = night.master(DATE, "bias")
    mark, release = tmp_path / "paused", tmp_path / "release"
    lock = night.work_root / "locks" / f"kpfmasters_{DATE}.lock"
    first = subprocess.Popen(
        daily_cmd(night, "--no-register"),
        env=paused_env(night.hook, REPO, bias, mark, release),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = wait_for_pause(mark, first)
    child = child_of(lock)
    os.kill(first.pid, signal.SIGKILL)  # daily only: its Snakemake goes on writing
    first.communicate(timeout=60)
    assert group_alive(child)
    locks = snakemake_locks(night.work_root)
    assert locks

    second = subprocess.run(
        daily_cmd(night, "--no-register"), env=plain_env(), capture_output=True, text=True
    )
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"kpfmasters daily: error: night {DATE} is already being processed (pid {first.pid} "
        f"child {child} since {lock.read_text().split(' since ')[1]}); lock file {lock}"
    ]
    assert snakemake_locks(night.work_root) == locks  # the live run's lock is kept
    assert group_alive(child) and not bias.exists()

    release.write_text("")  # the orphaned run finishes the night by itself
    deadline = time.monotonic() + 300
    while group_alive(child):
        assert time.monotonic() < deadline, "the orphaned workflow never ended"
        time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(writer, 0)
    assert_consistent(night)
    before = snapshot(bias.parent)

    third = subprocess.run(
        daily_cmd(night, "--no-register"), env=plain_env(), capture_output=True, text=True
    )
    assert third.returncode == 0, third.stderr
    assert snapshot(bias.parent) == before  # nothing rebuilt: one writer, consistent masters
    log = (night.root / "logs" / f"kpfmasters_{DATE}.out").read_text()
    assert "Nothing to be done" in log.split("=== kpfmasters daily")[-1]


def test_a_night_needing_another_nights_master_waits_for_its_run(tmp_path):
    """Night A rebuilds its bias (Snakemake removes the old one first); night B, which has
    no bias of its own, waits for A's run instead of making nothing and exiting 0."""
    a, b = "20230605", "20230606"
    night_a = Night(tmp_path, [a])
    night_b = Night(tmp_path, [b])
    for i, (date, counts) in enumerate(
        ((a, {"bias": 3, "dark": 0, "flat": 0, "arclamp": {}}), (b, {**COUNTS, "bias": 0}))
    ):
        sim = simulate_night(tmp_path / f"s{i}", date, seed=50 + i, size=48, counts=counts)
        night_a.l0_root.mkdir(parents=True, exist_ok=True)
        sim.l0_dir.rename(night_a.l0_root / date)
        if i == 0:
            sim.order_mask_path.rename(night_a.order_mask)
    first = subprocess.run(
        daily_cmd(night_a, "--no-register"), env=plain_env(), capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    bias = night_a.master(a, "bias")
    hook = install(tmp_path / "hook")
    mark, release = tmp_path / "paused", tmp_path / "release"
    rebuild = subprocess.Popen(  # a changed setting: A's bias is rebuilt, paused mid-write
        daily_cmd(night_a, "--no-register", "--set", "masters.bias.nsigma=2.5"),
        env=paused_env(hook, REPO, bias, mark, release),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_pause(mark, rebuild)
    assert not bias.exists()
    other = subprocess.Popen(
        daily_cmd(night_b, "--no-register"),
        env=plain_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log_b = night_b.root / "logs" / f"kpfmasters_{b}.out"
    deadline = time.monotonic() + 60
    waiting = f"waiting for night {a}'s run (pid {rebuild.pid} child "
    while not (log_b.is_file() and waiting in log_b.read_text()):
        assert other.poll() is None, other.communicate()
        assert time.monotonic() < deadline, "night B never waited"
        time.sleep(0.1)
    time.sleep(1)
    assert other.poll() is None and not night_b.master(b, "dark").exists()
    release.write_text("")
    out_a, err_a = rebuild.communicate(timeout=300)
    out_b, err_b = other.communicate(timeout=300)
    assert rebuild.returncode == 0, err_a
    assert other.returncode == 0, err_b
    assert out_b.startswith(f"night {b}: 1 master(s) in {night_b.masters_root}/{b}")
    dark = fits.getheader(night_b.master(b, "dark"))
    assert dark["INPBIAS"] == bias.name  # A's rebuilt bias
    assert fits.getheader(bias)["NSIGMA"] == 2.5
    assert f"night {a}'s run has ended; going on" in log_b.read_text()


def test_a_file_replaced_between_planning_and_its_job_fails_that_frame(night, tmp_path):
    """With one core, the run pauses inside the first 2D job; another L0 file, not yet
    converted, is then replaced by an exposure with another MJD-OBS. Its job reads the new
    header, sees it is not the one the night was planned with, and fails the frame; the next
    run plans the file as it now is and converts it."""
    l0 = sorted((night.l0_root / DATE).glob("*.fits"))
    first_2d = night.work_root / "2D" / DATE / f"{l0[0].stem}_2D.fits"
    mark, release = tmp_path / "paused", tmp_path / "release"
    run = subprocess.Popen(
        daily_cmd(night, "--no-register", "--cores", "1"),
        env=paused_env(night.hook, REPO, first_2d, mark, release),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_pause(mark, run)
    converted = {p.name for p in (night.work_root / "2D" / DATE).glob("*_2D.fits")}
    target = next(p for p in l0[1:] if f"{p.stem}_2D.fits" not in converted)
    planned = fits.getheader(target)["MJD-OBS"]
    replacement = target.with_name("incoming.tmp")
    with fits.open(target) as hdul:  # re-delivered with a corrected time
        hdul[0].header["MJD-OBS"] = planned + 0.001
        hdul.writeto(replacement, output_verify="silentfix")
    os.replace(replacement, target)
    release.write_text("")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 1
    now = fits.getheader(target)["MJD-OBS"]
    cause = (
        f"{target}: PRIMARY header changed after planning: MJD-OBS is {now!r}, the plan read "
        f"{planned!r} (the file was replaced; the next run plans it again)"
    )
    assert f"job l0_to_2d ({target.stem}_2D.fits) failed: {cause}" in err
    assert len(err.splitlines()) == 1
    assert not (night.work_root / "2D" / DATE / f"{target.stem}_2D.fits").exists()

    again = subprocess.run(
        daily_cmd(night, "--no-register"), env=plain_env(), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert (night.work_root / "2D" / DATE / f"{target.stem}_2D.fits").is_file()
