"""Database faults during registration, the pipeline role's limits, and secrets in logs.

The workflow's ``register_night`` rule (``database.enabled: true``) and ``kpfmasters db
register`` meet a server that is down and a wrong password: each says so clearly (where it
tried, and where the password comes from, never the password), the masters on disk stay as
they were, and a later run registers them. The pipeline's role registers but cannot change
the schema or itself; its password (from a pgpass file) appears in no log and no output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import psycopg2.errors
import pytest
import yaml

from kpfmasters import cli
from kpfmasters.core.config import DEFAULT_CONFIG_PATH
from kpfmasters.db import init_schema
from kpfmasters.science.l0to2d import AmpGeometry, convert_l0
from kpfmasters.science.master import MasterJob, build_master, read_verified
from kpfmasters.sim.simulate import simulate_night
from kpfmasters.workflow.pipeline import snakemake_argv
from kpfmasters.workflow.throwaway_pg import free_port
from tests.smk import REPO, Night

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("postgres")]

DATE = "20230606"
COUNTS = {"bias": 2, "dark": 0, "flat": 0, "arclamp": {}}


@pytest.fixture
def database(pg_server):  # noqa: F811
    """A fresh database with the schema, and a pipeline user (member of the pipeline role)
    whose password is only in a pgpass file of its own."""
    name = f"faults_{secrets.token_hex(4)}"
    user = f"pipe_{secrets.token_hex(3)}"
    pg_server.create_database(name)
    password = "Pw-" + secrets.token_urlsafe(16)
    pg_server.create_user(user, password)
    with contextlib.closing(pg_server.connect(dbname=name)) as admin:
        admin.autocommit = False
        init_schema(admin, pipeline_members=[user])
    return SimpleNamespace(server=pg_server, name=name, user=user, password=password)


def pgpass(path: Path, db, password: str) -> Path:
    path.write_text(f"{db.server.host}:{db.server.port}:*:{db.user}:{password}\n")
    path.chmod(0o600)
    return path


def pipeline_env(db, passfile: Path | None, port: int | None = None) -> dict[str, str]:
    """The cron job's environment: libpq variables only, the password in ``passfile`` (or,
    without one, in ``$HOME/.pgpass``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
    env.update(
        PGHOST=db.server.host,
        PGPORT=str(port or db.server.port),
        KPFDBUSER=db.user,
        KPFDBNAME=db.name,
        PYTHONPATH=str(REPO),
    )
    if passfile:
        env["PGPASSFILE"] = str(passfile)
    return env


def rows(db) -> list[tuple]:
    with contextlib.closing(db.server.connect(dbname=db.name)) as conn, conn.cursor() as cur:
        cur.execute("SELECT caltype, filename, checksum FROM calfiles ORDER BY cid")
        return cur.fetchall()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def text_of_every_file(root: Path) -> str:
    parts = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".fits":
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_registration_faults_in_the_workflow_then_a_rerun_registers(database, tmp_path):
    db = database
    simulate_night(tmp_path / "sim", DATE, seed=8, size=48, counts=COUNTS, extras=False)
    night = Night(tmp_path, [DATE])
    override = tmp_path / "database.yaml"
    override.write_text(yaml.safe_dump({"database": {"enabled": True}}))
    cmd = snakemake_argv(
        night.config(), workdir=tmp_path, cores=2, configfiles=[DEFAULT_CONFIG_PATH, override]
    )
    bias = night.master(DATE, "bias")
    receipt = night.work_root / "registered" / f"{DATE}.json"
    log = night.work_root / "logs" / DATE / "register.log"
    right = pgpass(tmp_path / "pgpass", db, db.password)
    wrong_password = "Wrong-" + secrets.token_urlsafe(12)
    wrong = pgpass(tmp_path / "pgpass-wrong", db, wrong_password)
    outputs = []

    def run(env):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    # 1. server down: the master is made, registration fails and says where it tried
    port = free_port()
    down = run(pipeline_env(db, right, port=port))
    assert down.returncode == 1
    where = f"host={db.server.host} port={port} user={db.user} dbname={db.name}"
    message = f"ERROR kpfmasters.register_night: cannot connect to PostgreSQL ({where}): "
    assert message in log.read_text() and message in down.stderr
    assert "Connection refused Is the server running on that host" in log.read_text()
    assert "Error in rule register_night" in down.stderr
    made, mtime = md5(bias), bias.stat().st_mtime_ns
    assert read_verified(bias, "GREEN_CCD").shape == (48, 48)
    assert not receipt.exists() and rows(db) == []

    # 2. wrong password: says which user failed and which pgpass file was used
    denied = run(pipeline_env(db, wrong))
    assert denied.returncode == 1
    text = log.read_text()
    assert f'password authentication failed for user "{db.user}"' in text
    assert f"(the password comes from {wrong})" in text
    assert md5(bias) == made and not receipt.exists() and rows(db) == []

    # 3. a later run registers the masters on disk, unchanged
    ok = run(pipeline_env(db, right))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (md5(bias), bias.stat().st_mtime_ns) == (made, mtime)  # registered, not remade
    assert [r["filename"] for r in json.loads(receipt.read_text())["rows"]] == [str(bias)]
    assert rows(db) == [("bias", str(bias), made)]

    # no password anywhere: logs, receipts, Snakemake's own logs, the runs' output
    everything = text_of_every_file(tmp_path / "work") + text_of_every_file(tmp_path / ".snakemake")
    everything += "\n".join(outputs)
    assert db.user in everything  # the scan does see what was logged
    for secret in (db.password, wrong_password):
        assert secret not in everything


def test_db_register_command_faults_then_a_rerun_registers(
    database, tmp_path, monkeypatch, capsys, caplog
):
    db = database
    masters = tmp_path / "masters"
    simulate_night(tmp_path / "sim", DATE, seed=9, size=48, counts=COUNTS, extras=False)
    frames = sorted((tmp_path / "sim" / "L0" / DATE).glob("KP.*.fits"))
    geometry = AmpGeometry(4, 50, 30, 5, 2.1, ("GREEN",), ())
    paths = []
    for frame in frames:
        paths.append(tmp_path / "2D" / frame.name.replace(".fits", "_2D.fits"))
        convert_l0(frame, paths[-1], geometry, 65536)
    rows_in = [
        {"FILENAME": p.name, "L0FILE": f.name, "MJD_OBS": 60101.1 + i, "EXPTIME": 0.0,
         "USED": True, "REASON": ""}
        for i, (p, f) in enumerate(zip(paths, frames, strict=True))
    ]  # fmt: skip
    settings = {"nsigma": 2.1, "flag_min_count": 10, "extensions": ["GREEN_CCD", "RED_CCD"]}
    bias = masters / DATE / f"kpf_{DATE}_master_bias.fits"
    stack = {"memory_mb": 64, "band_rows": 0}
    job = MasterJob(
        "bias", DATE, str(bias), [str(p) for p in paths], rows_in, settings, stack, 0.01
    )
    build_master(job)
    made = md5(bias)
    argv = ["db", "register", "--date", DATE, "--masters-root", str(masters)]
    right = pgpass(tmp_path / "pgpass", db, db.password)
    wrong_password = "Wrong-" + secrets.token_urlsafe(12)
    wrong = pgpass(tmp_path / "pgpass-wrong", db, wrong_password)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass for the first two tries
    seen = []

    def register(env) -> tuple[int, str, str]:
        for key in [k for k in os.environ if k.startswith(("PG", "KPFDB"))]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith(("PG", "KPFDB", "HOME")):
                monkeypatch.setenv(key, value)
        with caplog.at_level("DEBUG"):
            status = cli.main(argv)
        out, err = capsys.readouterr()
        seen.append(out + err + caplog.text)
        return status, out, err

    port = free_port()
    status, out, err = register(pipeline_env(db, right, port=port))
    assert status == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            "kpfmasters db: error: cannot connect to PostgreSQL "
            f"(host={db.server.host} port={port} user={db.user} dbname={db.name}): "
        )
    )
    status, out, err = register(pipeline_env(db, wrong))
    assert status == 1
    assert f"(the password comes from {wrong})" in err.strip().splitlines()[-1]
    assert md5(bias) == made and rows(db) == []

    home = tmp_path / "home"  # this time the password is in ~/.pgpass
    home.mkdir()
    pgpass(home / ".pgpass", db, db.password)
    status, out, err = register({**pipeline_env(db, None), "HOME": str(home)})
    assert status == 0
    assert out.strip().splitlines()[-1] == (
        f"night {DATE}: 1 master(s) registered (1 new, 0 updated, 0 unchanged), 0 row(s) removed"
    )
    assert rows(db) == [("bias", str(bias), made)] and md5(bias) == made
    for secret in (db.password, wrong_password):
        assert not any(secret in text for text in seen)


def test_pipeline_role_cannot_change_the_schema_or_itself(database):
    db = database
    passfile = db.server.pgpass  # holds the pipeline user's entry (create_user added it)
    conn = psycopg2.connect(
        host=db.server.host, port=db.server.port, user=db.user, dbname=db.name, passfile=passfile
    )
    with contextlib.closing(conn):
        with conn.cursor() as cur:
            cur.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication "
                "FROM pg_roles WHERE rolname IN (current_user, 'kpfporole')"
            )
            assert cur.fetchall() == [(False,) * 5] * 2
            cur.execute(
                "SELECT has_schema_privilege('public', 'CREATE'), "
                "has_table_privilege('calfiles', 'TRUNCATE'), "
                "has_table_privilege('calfiles', 'TRIGGER'), "
                "has_table_privilege('calfiles', 'REFERENCES'), "
                "has_table_privilege('schema_version', 'INSERT'), "
                "has_table_privilege('calfiles', 'INSERT')"
            )
            assert cur.fetchone() == (False, False, False, False, False, True)
        conn.rollback()
        denied = [
            "ALTER TABLE calfiles ADD COLUMN evil text",
            "ALTER TABLE calfiles DROP CONSTRAINT calfiles_night_key",
            "ALTER TABLE calfiles ALTER COLUMN status DROP NOT NULL",
            "ALTER TABLE calfiles OWNER TO CURRENT_USER",
            "CREATE INDEX evil_idx ON calfiles (filename)",
            "DROP INDEX calfiles_lookup_idx",
            "COMMENT ON TABLE calfiles IS 'mine'",
            "ALTER SEQUENCE calfiles_cid_seq RESTART 1",
            "CREATE TABLE public.mine (x int)",
            "CREATE SCHEMA mine",
            "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "UPDATE schema_version SET version = 99",
            "DROP TABLE calfiles",
            "TRUNCATE calfiles",
            "ALTER ROLE CURRENT_USER CREATEDB",
            "ALTER ROLE kpfporole CREATEROLE",
        ]
        for statement in denied:
            with pytest.raises(psycopg2.Error) as info, conn, conn.cursor() as cur:
                cur.execute(statement)
            assert isinstance(info.value, psycopg2.errors.InsufficientPrivilege), (
                statement,
                info.value,
            )
