"""The calibration database in operations: what was made is registered when a master fails,
stale masters lose their rows, one predecessor rule, time limits, a lost server, and a libpq
URI's password never shown."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters import cli
from kpfmasters.db import connect, init_schema
from kpfmasters.db.register import _LOCK_CLASS
from kpfmasters.plan.plans import database_lookup
from kpfmasters.sim.simulate import simulate_night
from tests.smk import REPO, Night, daily_cmd

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("postgres")]

DATE = "20230606"


@pytest.fixture
def db(pg_server, monkeypatch):  # noqa: F811
    """A fresh database with the schema; libpq's variables point at it."""
    name = f"ops_{secrets.token_hex(4)}"
    pg_server.create_database(name)
    with contextlib.closing(pg_server.connect(dbname=name)) as conn:
        conn.autocommit = False
        init_schema(conn)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
    env.update(pg_server.env, PGDATABASE=name, PYTHONPATH=str(REPO))
    for key in [k for k in os.environ if k.startswith(("PG", "KPFDB"))]:
        monkeypatch.delenv(key)
    for key, value in {**pg_server.env, "PGDATABASE": name}.items():
        monkeypatch.setenv(key, value)
    return type("DB", (), {"server": pg_server, "name": name, "env": env})


def rows(db) -> list[tuple]:
    with contextlib.closing(db.server.connect(dbname=db.name)) as conn, conn.cursor() as cur:
        cur.execute("SELECT caltype, object, nframes, filename FROM calfiles ORDER BY caltype")
        return cur.fetchall()


@pytest.mark.slow
def test_a_failing_master_does_not_block_registering_the_others_then_stale_ones_go(db, tmp_path):
    counts = {"bias": 2, "dark": 2, "flat": 2, "arclamp": {}}
    simulate_night(tmp_path / "sim", DATE, seed=41, size=48, counts=counts, extras=False)
    night = Night(tmp_path, [DATE])
    good_mask = night.order_mask.read_bytes()
    wrong = fits.ImageHDU(np.ones((10, 10), dtype=np.uint8), name="GREEN_CCD")
    fits.HDUList([fits.PrimaryHDU(), wrong]).writeto(night.order_mask, overwrite=True)

    proc = subprocess.run(daily_cmd(night), capture_output=True, text=True, env=db.env)
    assert proc.returncode == 1
    flat = night.master(DATE, "flat")
    flat_log = night.work_root / "logs" / DATE / "master_flat.log"
    cause = [ln for ln in flat_log.read_text().splitlines() if " ERROR " in ln][-1]
    cause = cause.split(": ", 1)[1]
    assert cause == (
        f"{night.order_mask}: order mask extension GREEN_CCD has shape (10, 10), expected (48, 48)"
    )
    pattern = (
        rf"kpfmasters daily: error: night {DATE}: 2 master\(s\) in "
        rf"{re.escape(str(night.masters_root))}/{DATE}, 2 row\(s\) registered, \d+ s; "
        rf"job master_flat \({flat.name}\) failed: {re.escape(cause)}; "
        rf"not made: {flat.name}; log {re.escape(str(tmp_path))}/logs/kpfmasters_{DATE}.out"
    )
    assert len(proc.stderr.splitlines()) == 1 and re.fullmatch(pattern, proc.stderr.strip())
    assert "Traceback" not in flat_log.read_text()  # a known error: one line in the job log
    assert not flat.exists()
    assert [r[:3] for r in rows(db)] == [("bias", "autocal-bias", 2), ("dark", "autocal-dark", 2)]
    receipt = json.loads((night.work_root / "registered" / f"{DATE}.json").read_text())
    assert receipt["not_made"] == [flat.name] and len(receipt["rows"]) == 2

    # The mask fixed, the darks reclassified: the dark master can no longer be made, so it
    # is moved aside and loses its row; the flat, which needs a dark, is not made and says so.
    night.order_mask.write_bytes(good_mask)
    dark = night.master(DATE, "dark")
    for path in sorted((night.l0_root / DATE).glob("*.fits")):
        if fits.getheader(path)["IMTYPE"] == "Dark":
            with fits.open(path, mode="update") as hdul:
                hdul[0].header["IMTYPE"] = "Science"
    again = subprocess.run(daily_cmd(night), capture_output=True, text=True, env=db.env)
    assert again.returncode == 1
    pattern = (
        rf"kpfmasters daily: error: night {DATE}: 1 master\(s\) in "
        rf"{re.escape(str(night.masters_root))}/{DATE}, 1 row\(s\) registered, \d+ s; "
        rf"master flat for {DATE} not made: no usable master dark \(level 0\) for {DATE}: "
        rf"none is registered; log {re.escape(str(tmp_path))}/logs/kpfmasters_{DATE}.out"
    )
    assert re.fullmatch(pattern, again.stderr.strip()), again.stderr
    assert not dark.exists()
    retired = list((night.work_root / "retired" / DATE).glob(f"{dark.name}.*"))
    assert len(retired) == 1 and fits.getheader(retired[0])["IMTYPE"] == "Dark"
    assert [r[0] for r in rows(db)] == ["bias"]


def _register_row(db, date: str, caltype: str, nframes: int, path: Path) -> None:
    import hashlib

    with contextlib.closing(db.server.connect(dbname=db.name)) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO calfiles (level, caltype, object, contentbits, nframes, minmjd, maxmjd,"
            " infobits, startdate, enddate, filename, checksum, status, createdby) VALUES "
            "(0, %s, %s, 3, %s, 60000, 60000, 0, %s, %s::date + 1, %s, %s, 1, 'test')",
            (
                caltype,
                f"autocal-{caltype}",
                nframes,
                date,
                date,
                str(path),
                hashlib.md5(path.read_bytes()).hexdigest(),
            ),
        )


def test_the_database_lookup_applies_min_frames_like_the_disk_lookup(db, tmp_path):
    master = tmp_path / "kpf_20230601_master_bias.fits"
    fits.writeto(master, np.zeros((2, 2)))
    _register_row(db, "2023-06-01", "bias", 3, master)
    # min_frames 2 (the configuration's): a 3-frame bias qualifies, on disk as in the database
    assert database_lookup(DATE, "bias", 30, 2) == master
    with pytest.raises(Exception, match=r"nframes 3 < 4"):
        database_lookup(DATE, "bias", 30, 4)
    out = subprocess.run(
        [sys.executable, "-m", "kpfmasters.cli", "db", "nearest", "--date", DATE]
        + ["--caltype", "bias", "--set", "min_frames=2"],
        capture_output=True,
        text=True,
        env=db.env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == str(master)


def test_sessions_have_time_limits_and_keepalives(db):
    with contextlib.closing(connect()) as conn, conn.cursor() as cur:
        cur.execute("SHOW lock_timeout")
        assert cur.fetchone() == ("1min",)
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == ("10min",)
        params = conn.get_dsn_parameters()
        assert params["keepalives"] == "1" and params["keepalives_idle"] == "30"


def test_a_lock_held_elsewhere_ends_in_lock_timeout_not_a_hang(db, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=500ms")
    (tmp_path / DATE).mkdir()
    with contextlib.closing(db.server.connect(dbname=db.name)) as other:
        other.autocommit = False
        with other.cursor() as cur:
            cur.execute("LOCK TABLE calfiles IN ACCESS EXCLUSIVE MODE")
            cur.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_CLASS, int(DATE)))
        began = time.monotonic()
        status = cli.main(["db", "nearest", "--date", DATE, "--caltype", "bias"])
        nearest_err = capsys.readouterr().err
        status2 = cli.main(["db", "register", "--date", DATE, "--masters-root", str(tmp_path)])
        register_err = capsys.readouterr().err
        took = time.monotonic() - began
        other.rollback()
    assert status == 1 and status2 == 1 and took < 20
    reason = "(another session holds a lock this needs; lock_timeout reached)"
    assert nearest_err.splitlines() == [
        "kpfmasters db: error: nearest-master query failed: canceling statement due to lock "
        f"timeout {reason}"
    ]
    assert len(register_err.splitlines()) == 1 and register_err.endswith(f"{reason}\n")
    assert register_err.startswith("kpfmasters db: error: ")


def test_a_server_lost_mid_registration_is_reported_as_such(db, capsys, tmp_path):
    (tmp_path / DATE).mkdir()
    done = {}
    with contextlib.closing(db.server.connect(dbname=db.name)) as other, other.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s, %s)", (_LOCK_CLASS, int(DATE)))

        def register():
            done["status"] = cli.main(
                ["db", "register", "--date", DATE, "--masters-root", str(tmp_path)]
            )

        worker = threading.Thread(target=register)
        worker.start()
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:  # registration waits on the lock
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'kpfmasters' "
                "AND wait_event_type = 'Lock'"
            )
            found = cur.fetchone()
            pid = found[0] if found else None
            time.sleep(0.05)
        assert pid, "registration never waited on the lock"
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))  # its server process dies
        worker.join(30)
    err = capsys.readouterr().err
    assert done["status"] == 1
    assert len(err.splitlines()) == 1
    assert err.startswith(
        f"kpfmasters db: error: registering night {DATE} failed, nothing changed: "
        "server closed the connection unexpectedly"
    )
    assert "(the server went away: stopped, restarted or unreachable)" in err
    assert "connection already closed" not in err


def test_a_libpq_uri_password_is_never_shown(db, capsys, caplog, monkeypatch):
    secret = "S3cret-" + secrets.token_hex(6)
    port = db.server.port + 1 if db.server.port < 65000 else db.server.port - 1
    uri = f"postgresql://someone:{secret}@{db.server.host}:{port}/{db.name}"
    monkeypatch.setenv("KPFDBNAME", uri)
    with caplog.at_level("INFO"):
        status = cli.main(["db", "list"])
    err = capsys.readouterr().err
    assert status == 1
    assert secret not in err and secret not in caplog.text
    assert "postgresql://someone:***@" in err and "postgresql://someone:***@" in caplog.text
