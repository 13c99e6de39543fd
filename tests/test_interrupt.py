"""Interrupted runs and verified masters.

A job killed with SIGKILL while it writes a master leaves nothing under the final name and
the next run rebuilds it (removing the stale temporary); a ``daily`` run killed as a whole
does not block the next one; a master whose checksum fails is never used downstream.

To kill a writer mid-write deterministically, the runs get a ``sitecustomize`` module on
their ``PYTHONPATH`` (written by the fixture, active only with ``KPFM_TEST_PAUSE_WRITE``
set) that pauses the process writing that product after its first two HDUs, with the hidden
temporary file half written, and says so in a marker file. The test then sends SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from astropy.io import fits

from kpfmasters.core.errors import InputError
from kpfmasters.science.master import read_verified
from kpfmasters.sim.simulate import simulate_night
from kpfmasters.workflow.pipeline import group_alive, snakemake_argv, snakemake_locks
from tests.smk import REPO, Night, daily_cmd, snakemake
from tests.verifyfits import assert_verified, needs_fitsverify

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("interrupt")]

DATE = "20230606"
COUNTS = {"bias": 3, "dark": 2, "flat": 0, "arclamp": {}}

PAUSE_HOOK = """
import os

_TARGET = os.environ.get("KPFM_TEST_PAUSE_WRITE")
if _TARGET:
    import time

    from astropy.io.fits.hdu import base as _base

    _write = _base._BaseHDU._writeto
    _written = [0]

    def _paused_writeto(self, fileobj, *args, **kwargs):
        result = _write(self, fileobj, *args, **kwargs)
        name = os.path.basename(str(getattr(fileobj, "name", "")))
        if name.startswith("." + _TARGET + ".tmp-"):
            _written[0] += 1
            if _written[0] == 2:
                fileobj.flush()
                with open(os.environ["KPFM_TEST_PAUSE_MARK"], "w") as mark:
                    mark.write(str(os.getpid()))
                time.sleep(600)
        return result

    _base._BaseHDU._writeto = _paused_writeto
"""


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    simulate_night(root / "sim", DATE, seed=11, size=48, counts=COUNTS, extras=False)
    n = Night(root, [DATE])
    snakemake(n)
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_HOOK)
    n.hook = hook
    return n


def paused_env(night: Night, product: Path, mark: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(night.hook), str(REPO)]),
        "KPFM_TEST_PAUSE_WRITE": product.name,
        "KPFM_TEST_PAUSE_MARK": str(mark),
    }


def wait_for_pause(mark: Path, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Pid of the writer once it has paused mid-write."""
    deadline = time.monotonic() + timeout
    while not (mark.is_file() and mark.read_text().strip()):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended ({proc.returncode}) before the write paused:\n{err}")
        assert time.monotonic() < deadline, "the writer never paused"
        time.sleep(0.05)
    return int(mark.read_text())


def assert_half_written(temporary: Path, final: Path) -> None:
    """The hidden temporary holds the first HDUs only; nothing is under the final name."""
    assert not final.exists()
    with fits.open(temporary) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "GREEN_CCD"]


def assert_valid_master(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdul:
            assert hdul[-1].name == "INPUTS" and len(hdul) == 11
    assert read_verified(path, "GREEN_CCD").shape == (48, 48)


def test_job_killed_mid_write_leaves_no_master_and_the_next_run_rebuilds_it(night, tmp_path):
    bias = night.master(DATE, "bias")
    bias.unlink()
    mark = tmp_path / "paused"
    target = ["--rerun-incomplete", str(bias)]  # the flag ends --config's list
    cmd = snakemake_argv(night.config(), workdir=night.root, cores=2, extra=target)
    proc = subprocess.Popen(
        cmd, env=paused_env(night, bias, mark), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pid = wait_for_pause(mark, proc)
    temporary = bias.with_name(f".{bias.name}.tmp-{pid}")
    assert_half_written(temporary, bias)

    os.kill(pid, signal.SIGKILL)  # the job only; Snakemake sees it fail
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 1
    assert "Error in rule master_bias" in err
    assert not bias.exists()
    assert temporary.is_file()  # stale, hidden: never taken for a master

    rerun = snakemake(night, *target)
    assert f"reason: Missing output files: {bias}" in rerun.stderr
    assert_valid_master(bias)
    assert not temporary.exists()  # removed by the successful write of the same product
    assert not list(bias.parent.glob(".*"))


def test_daily_run_killed_as_a_whole_does_not_block_the_next(night, tmp_path):
    bias = night.master(DATE, "bias")
    bias.unlink()
    mark = tmp_path / "paused"
    proc = subprocess.Popen(
        daily_cmd(night, "--no-register", log_dir=night.root / "cron"),
        env=paused_env(night, bias, mark),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pid = wait_for_pause(mark, proc)
    assert_half_written(bias.with_name(f".{bias.name}.tmp-{pid}"), bias)
    lock = night.work_root / "locks" / f"kpfmasters_{DATE}.lock"
    child = int(lock.read_text().split(" child ")[1].split()[0])  # the workflow's group
    os.killpg(proc.pid, signal.SIGKILL)  # daily, Snakemake and the job: a power cut
    os.killpg(child, signal.SIGKILL)
    proc.communicate(timeout=60)
    while group_alive(child):
        time.sleep(0.05)
    assert not bias.exists()
    assert snakemake_locks(night.work_root)  # what would block a plain rerun

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    again = subprocess.run(
        daily_cmd(night, "--no-register", log_dir=night.root / "cron"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"night {DATE}: 2 master(s)")
    log = (night.root / "cron" / f"kpfmasters_{DATE}.out").read_text()
    assert "removing a Snakemake lock left by a killed run: 0.input.lock, 0.output.lock" in log
    assert_valid_master(bias)
    assert not list(bias.parent.glob(".*"))
    assert not snakemake_locks(night.work_root)


@needs_fitsverify
def test_rebuilt_masters_pass_fitsverify(night):
    for kind in ("bias", "dark"):
        assert_verified(night.master(DATE, kind))


def test_master_failing_its_checksum_is_never_used(night):
    """Runs last: it leaves a damaged bias behind."""
    bias, dark = night.master(DATE, "bias"), night.master(DATE, "dark")
    with fits.open(bias) as hdul:
        offset = hdul.fileinfo(hdul.index_of("GREEN_CCD"))["datLoc"] + 8 * 100
    before = bias.stat()
    data = bytearray(bias.read_bytes())
    data[offset] ^= 0x40  # one bit of one pixel: still a FITS file of the same size
    bias.write_bytes(bytes(data))
    os.utime(bias, ns=(before.st_atime_ns, before.st_mtime_ns))  # Snakemake sees no change
    with pytest.raises(InputError, match="fails checksum verification"):
        read_verified(bias, "GREEN_CCD")

    proc = snakemake(night, "--forcerun", "master_dark", check=False)
    assert proc.returncode == 1
    problem = f"{bias}: fails checksum verification (Checksum verification failed for HDU"
    log = (night.work_root / "logs" / DATE / "master_dark.log").read_text()
    assert problem in log and problem in proc.stderr
    assert not dark.exists()  # Snakemake removed the failed job's output; nothing replaced it
    assert not list(dark.parent.glob(".*"))
