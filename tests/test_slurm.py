"""The workflow on a real SLURM cluster, through Snakemake's SLURM executor plugin.

A single-node cluster on localhost (tests/slurm_cluster.py: Debian's slurmctld, slurmd and
munge, started by hand) runs two simulated nights with ``--profile profiles/slurm``; every
job but the local rules must have gone through ``sbatch``, and the masters must be
bit-identical (image data) to those of a run with ``--profile profiles/local``.

Skipped when the packages are missing or the test does not run as root (set
KPF_REQUIRE_SLURM=1 to make that a failure instead).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters.workflow.pipeline import snakemake_argv
from tests.slurm_cluster import SlurmCluster, unavailable_reason

REPO = Path(__file__).resolve().parents[1]
DATES = ["20230601", "20230602"]
# Two frames of each kind (min_frames) and one arc lamp: 8 L0 frames a night, so 16 L0 -> 2D
# jobs and 8 master jobs, all on SLURM.
COUNTS = "bias=2,dark=2,flat=2,arclamp:autocal-thar-all-eve=2"
# The rules that do the work; they must never run on the submit host.
COMPUTE_RULES = {
    "l0_to_2d", "master_bias", "master_dark", "master_flat", "master_arclamp", "order_traces",
    "l1_master",
}  # fmt: skip
# Whole runs, killed (timeout -s KILL) past these: a hang fails the test instead of CI. About
# 110 s and 15 s on 2 idle cores; the margin is for a machine busy with other tests.
SLURM_LIMIT_S = 420
LOCAL_LIMIT_S = 240

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("KPF_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM test cluster required but unavailable: {reason}")
        pytest.skip(f"SLURM test cluster unavailable: {reason}")
    # 4 CPUs declared on a 2-core machine: two 2-thread master jobs (one per night) run at
    # once, so the waits between dependent jobs (status polling) overlap.
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=4) as c:
        yield c


def _env(base: dict) -> dict:
    env = dict(base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_cluster_runs_a_batch_job_with_a_step(cluster, tmp_path):
    """sbatch, srun inside the allocation (as the plugin's job step does), squeue status."""
    out = tmp_path / "job.out"
    # The job step of Snakemake's plugin drops SLURM_CONF before its srun; so do we here.
    script = "env -u SLURM_CONF srun -n1 --cpu-bind=q sh -c 'echo step-on-$SLURMD_NODENAME'"
    proc = cluster.run("sbatch", "--parsable", "-o", str(out), "--wrap", script)
    jobid = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = cluster.run("squeue", "--states=all", "-h", "-j", jobid, "-o", "%T").stdout
        if state.strip() in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}:
            break
        time.sleep(0.3)
    text = out.read_text() if out.exists() else "(no job output)"
    assert state.strip() == "COMPLETED", f"job {jobid}: {state!r}\n{text}\n{cluster.logs()}"
    assert "step-on-localhost" in text


def _simulate(root: Path) -> None:
    for seed, date in enumerate(DATES, start=1):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kpfmasters.cli",
                "simulate",
                "--date",
                date,
                "--out",
                str(root),
                "--size",
                "small",
                "--seed",
                str(seed),
                "--no-extras",
                "--counts",
                COUNTS,
            ],
            check=True,
            capture_output=True,
            text=True,
            env=_env(os.environ),
            timeout=120,
        )


def _targets(run_dir: Path) -> list[str]:
    """The 2D masters of both nights and, for the rules that follow them, the traces and the
    flat's L1 of the first: every kind of compute job, without the dozens of QA and L1
    jobs whose SLURM round trips (seconds each) would only repeat them."""
    masters = run_dir / "masters"
    out = [
        str(masters / date / f"kpf_{date}_master_{kind}.fits")
        for date in DATES
        for kind in ("bias", "dark", "flat", "arclamp_autocal-thar-all-eve")
    ]
    return out + [str(masters / DATES[0] / f"kpf_{DATES[0]}_master_flat_L1.fits")]


def _workflow(profile: str, run_dir: Path, sim: Path, env: dict, limit: int, *extra: str):
    """``snakemake --profile profiles/<profile>`` on both nights' targets (:func:`_targets`);
    (returncode, log text)."""
    config = {
        "dates": f"{DATES[0]}..{DATES[-1]}",
        "l0_root": sim / "L0",
        "order_mask": sim / "order_mask.fits",
        "work_root": run_dir / "work",
        "masters_root": run_dir / "masters",
    }
    profile_dir = REPO / "profiles" / profile
    cmd = ["timeout", "-s", "KILL", str(limit)]
    cmd += snakemake_argv(
        config, workdir=run_dir, profile=profile_dir, extra=[*extra, "--", *_targets(run_dir)]
    )
    log = run_dir / "snakemake.log"
    run_dir.mkdir(parents=True)
    with open(log, "w") as fh:
        proc = subprocess.run(
            cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    return proc.returncode, log.read_text(errors="replace")


def _declared_local_rules() -> set[str]:
    """Rules of the workflow marked ``localrule: True`` (or named in ``localrules:``)."""
    names = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        rule = None
        for line in path.read_text().splitlines():
            m = re.match(r"\s*rule (\w+):", line)
            if m:
                rule = m.group(1)
            elif re.match(r"\s*localrule:\s*True", line) and rule:
                names.add(rule)
            m = re.match(r"\s*localrules:\s*(.+)", line)
            if m:
                names.update(n.strip() for n in m.group(1).split(",") if n.strip())
    return names


def _image_hdus(path: Path) -> list[tuple[str, np.ndarray]]:
    with fits.open(path, memmap=False) as hdul:
        out = []
        for i, hdu in enumerate(hdul):
            if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
                if hdu.data is not None:
                    out.append((hdu.name or str(i), np.array(hdu.data)))
        return out


def test_two_nights_on_slurm_match_a_local_run(cluster, tmp_path):
    sim = tmp_path / "sim"
    _simulate(sim)

    run_s = tmp_path / "slurm"
    slurm_logs = run_s / "slurm_logs"
    rc, log = _workflow(
        "slurm",
        run_s,
        sim,
        _env(cluster.env()),
        SLURM_LIMIT_S,
        "--slurm-logdir",
        str(slurm_logs),
        "--slurm-keep-successful-logs",
    )
    where = f"\n--- snakemake (last 6000 chars)\n{log[-6000:]}\n{cluster.logs()}"
    assert rc != -9 and rc != 137, f"SLURM run killed after {SLURM_LIMIT_S} s (hang?){where}"
    assert rc == 0, f"SLURM run failed ({rc}){where}"

    # Every non-local job was submitted with sbatch, exactly once (no retry was needed) ...
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    remote_rules = re.findall(r"^rule (\w+):$", log, re.M)
    local_rules = re.findall(r"^localrule (\w+):$", log, re.M)
    assert remote_rules, where
    declared_local = _declared_local_rules() | {"all"}  # `all` has no action: never submitted
    assert set(local_rules) <= declared_local, f"ran outside SLURM: {local_rules}{where}"
    assert not set(remote_rules) & declared_local
    assert COMPUTE_RULES <= set(remote_rules)
    assert not COMPUTE_RULES & declared_local
    assert len(submitted) == len(remote_rules), where
    assert len({s for s, _ in submitted}) == len(submitted), f"resubmitted jobs{where}"
    assert remote_rules.count("l0_to_2d") == 16

    # ... and SLURM ran each of them to completion (squeue keeps finished jobs MinJobAge s).
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    rows = cluster.run(
        "squeue", "--states=all", "-h", "--name", run_id, "-o", "%i|%T|%N"
    ).stdout.split()
    states = {row.split("|")[0]: row.split("|")[1:] for row in rows}
    for _, slurm_id in submitted:
        assert states.get(slurm_id) == ["COMPLETED", "localhost"], (slurm_id, states)
    assert len(list(slurm_logs.rglob("*.log"))) == len(submitted)

    # The same nights without SLURM.
    run_l = tmp_path / "local"
    rc, log_l = _workflow("local", run_l, sim, _env(os.environ), LOCAL_LIMIT_S)
    assert rc == 0, f"local run failed ({rc})\n{log_l[-6000:]}"
    assert "submitted with SLURM" not in log_l

    masters_s = sorted(
        p.relative_to(run_s / "masters") for p in (run_s / "masters").rglob("*.fits")
    )
    masters_l = sorted(
        p.relative_to(run_l / "masters") for p in (run_l / "masters").rglob("*.fits")
    )
    assert masters_s == masters_l
    for date in DATES:
        for kind in ("bias", "dark", "flat", "arclamp_autocal-thar-all-eve"):
            assert Path(date, f"kpf_{date}_master_{kind}.fits") in masters_s, masters_s

    for rel in masters_s:
        hdus_s = _image_hdus(run_s / "masters" / rel)
        hdus_l = _image_hdus(run_l / "masters" / rel)
        assert [n for n, _ in hdus_s] == [n for n, _ in hdus_l], rel
        assert hdus_s, f"{rel}: no image data"
        for (name, a), (_, b) in zip(hdus_s, hdus_l, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, (rel, name)
            assert a.tobytes() == b.tobytes(), f"{rel}[{name}] differs between SLURM and local"
