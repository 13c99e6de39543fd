"""``kpfmasters daily`` on a simulated night: masters, rows, log file, and the night lock."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest

from kpfmasters.db import init_schema
from kpfmasters.sim.simulate import simulate_night
from tests.smk import REPO, Night, daily_cmd

DATE = "20230606"
COUNTS = {"bias": 3, "dark": 2, "flat": 2, "arclamp": {"autocal-une-sky": 2}}

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("postgres")]


def test_daily_run_registers_and_locks(pg_server, tmp_path):
    night = Night(tmp_path, [DATE])
    simulate_night(tmp_path / "sim", DATE, seed=7, size=48, counts=COUNTS, extras=False)
    with contextlib.closing(pg_server.connect()) as conn:
        conn.autocommit = False
        init_schema(conn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
    env.update(pg_server.env, PYTHONPATH=str(REPO))

    first = subprocess.Popen(
        daily_cmd(night),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = tmp_path / "work" / "locks" / f"kpfmasters_{DATE}.lock"
    deadline = time.monotonic() + 60
    while not (lock.is_file() and lock.read_text().startswith("pid")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.1)
    second = subprocess.run(daily_cmd(night), env=env, capture_output=True, text=True)
    assert second.returncode == 1
    assert f"night {DATE} is already being processed (pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1

    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    masters = sorted(p.name for p in (tmp_path / "masters" / DATE).glob("kpf_*_master_*.fits"))
    assert len(masters) == 4
    log = (tmp_path / "logs" / f"kpfmasters_{DATE}.out").read_text()
    assert f"night {DATE}: 4 master(s)" in out and "4 row(s) registered" in out
    assert "Finished jobid" in log and "register_night" in log
    for name in masters:
        assert name in log
    with contextlib.closing(pg_server.connect()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT caltype, object, nframes FROM calfiles WHERE startdate = %s ORDER BY caltype",
            ("2023-06-06",),
        )
        rows = cur.fetchall()
    assert [r[0] for r in rows] == ["arclamp", "bias", "dark", "flat"]
    assert rows[0][1] == "autocal-une-sky" and rows[1][2] == 3

    # Nothing changed: the rerun is quick and keeps the rows.
    again = subprocess.run(daily_cmd(night), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done" in (tmp_path / "logs" / f"kpfmasters_{DATE}.out").read_text()


def test_daily_failure_is_one_line(tmp_path):
    night = Night(tmp_path, [DATE])
    proc = subprocess.run(
        daily_cmd(night, "--no-register", "--set", "masters.bias.nsigma=-1"),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "kpfmasters daily: error: configuration key masters.bias.nsigma: -1 is less than or "
        "equal to the minimum of 0"
    ]
