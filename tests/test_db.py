"""The calibration database against a real throw-away PostgreSQL server (tests/pgserver.py).

Each test gets a fresh database on the session's server; the admin reaches it through the
password in a temporary pgpass file, as production does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import hashlib
import itertools
import json
import runpy
import secrets
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psycopg2
import psycopg2.errors
import pytest
from astropy.io import fits

from kpfmasters import __version__, cli
from kpfmasters.core.errors import InputError, NoPredecessorError
from kpfmasters.core.naming import master_path
from kpfmasters.db import (
    SCHEMA_VERSION,
    ConnectError,
    DatabaseError,
    SchemaError,
    connect,
    find_nearest,
    init_schema,
    nearest_master,
    register_night,
    register_night_report,
    resolve_settings,
)
from kpfmasters.io.fits import write_fits
from kpfmasters.workflow import throwaway_pg as pgserver
from kpfmasters.workflow.throwaway_pg import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("postgres")]

REPO = Path(__file__).resolve().parents[1]
ALL_CCDS = ("GREEN_CCD", "RED_CCD", "CA_HK")
IMTYPE = {"bias": "Bias", "dark": "Dark", "flat": "Flat", "arclamp": "Arclamp"}
BUNIT = {"bias": "electrons", "dark": "electrons/sec", "flat": "dimensionless"}
_counter = itertools.count()


# -- master files -------------------------------------------------------------------------------


def night_mjd(date: str) -> float:
    day = dt.datetime.strptime(date, "%Y%m%d").date()
    return float((day - dt.date(1858, 11, 17)).days)


def write_master(
    root: Path,
    date: str,
    mtype: str,
    obj: str | None = None,
    nframes: int = 7,
    infobits: int = 0,
    ccds: tuple[str, ...] = ALL_CCDS,
    imtype: str | None = None,
) -> Path:
    """A small master laid out as docs/reference.md §5: PRIMARY, CCDs (float64), *_UNC (float32),
    *_CNT (int32), INPUTS table; PRIMARY keywords IMTYPE, OBJECT, NFRAMES, MINMJD, MAXMJD,
    INFOBITS, NSIGMA, INPBIAS, SOFTVER, CFGHASH."""
    obj = obj if obj is not None else f"autocal-{mtype}"
    path = master_path(root, date, mtype, obj if mtype == "arclamp" else None)
    mjd0 = night_mjd(date) + 0.1
    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["IMTYPE"] = imtype or IMTYPE[mtype]
    hdr["OBJECT"] = obj
    hdr["NFRAMES"] = nframes
    hdr["MINMJD"] = mjd0
    hdr["MAXMJD"] = mjd0 + 0.01 * nframes
    hdr["INFOBITS"] = infobits
    hdr["NSIGMA"] = 2.1
    hdr["INPBIAS"] = "" if mtype == "bias" else f"kpf_{date}_master_bias.fits"
    hdr["SOFTVER"] = __version__
    hdr["CFGHASH"] = "0123abcd"
    hdus = [primary]
    rng = np.random.default_rng(len(hdus) + nframes)
    for ccd in ccds:
        image = fits.ImageHDU(rng.normal(100.0, 5.0, (6, 8)).astype(np.float64), name=ccd)
        for key in ("NFRAMES", "MINMJD", "MAXMJD", "INFOBITS"):
            image.header[key] = hdr[key]
        image.header["BUNIT"] = BUNIT.get(mtype, "electrons/sec")
        hdus.append(image)
    for ccd in ccds:
        hdus.append(fits.ImageHDU(np.ones((6, 8), np.float32), name=f"{ccd}_UNC"))
        hdus.append(fits.ImageHDU(np.full((6, 8), nframes, np.int32), name=f"{ccd}_CNT"))
    names = [f"KP.{date}.{1000 + i:05d}.00_2D.fits" for i in range(nframes)]
    hdus.append(
        fits.BinTableHDU.from_columns(
            [
                fits.Column(name="FILENAME", format="40A", array=names),
                fits.Column(name="L0FILE", format="40A", array=[n[:-8] + ".fits" for n in names]),
                fits.Column(name="MJD_OBS", format="D", array=mjd0 + 0.01 * np.arange(nframes)),
                fits.Column(name="EXPTIME", format="D", array=np.zeros(nframes)),
                fits.Column(name="USED", format="L", array=np.ones(nframes, bool)),
            ],
            name="INPUTS",
        )
    )
    return write_fits(fits.HDUList(hdus), path)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# -- database fixtures --------------------------------------------------------------------------


@pytest.fixture
def db(pg_server, monkeypatch):  # noqa: F811
    """A fresh, empty database; the process environment points libpq at it as the admin."""
    name = f"t{next(_counter)}_{secrets.token_hex(3)}"
    pg_server.create_database(name)
    for key, value in pg_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PGDATABASE", name)
    monkeypatch.delenv("KPFDBUSER", raising=False)
    monkeypatch.delenv("KPFDBNAME", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    return SimpleNamespace(server=pg_server, name=name)


@pytest.fixture
def conn(db):
    """An admin connection to the fresh database, schema applied."""
    with contextlib.closing(connect()) as connection:
        init_schema(connection)
        yield connection


def all_rows(connection) -> list[tuple]:
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM calfiles ORDER BY cid")
        rows = cur.fetchall()
    connection.rollback()
    return rows


def set_status(connection, cid: int, status: int) -> None:
    with connection, connection.cursor() as cur:
        cur.execute("UPDATE calfiles SET status = %s WHERE cid = %s", (status, cid))


# -- connection settings (no server needed) ----------------------------------------------------


def test_connection_settings_precedence():
    env = {
        "PGHOST": "db.example",
        "PGPORT": "6543",
        "PGUSER": "pguser",
        "PGDATABASE": "pgdb",
        "KPFDBUSER": "apollo",
        "KPFDBNAME": "kpfopsdb",
    }
    assert resolve_settings(environ=env).libpq_kwargs() == {
        "host": "db.example",
        "port": "6543",
        "user": "apollo",
        "dbname": "kpfopsdb",
    }
    explicit = resolve_settings(user="admin", dbname="other", port=7, environ=env)
    assert (explicit.user, explicit.dbname, explicit.port) == ("admin", "other", "7")
    pg_only = {k: v for k, v in env.items() if not k.startswith("KPFDB")}
    assert resolve_settings(environ=pg_only).user == "pguser"
    assert resolve_settings(environ=pg_only).dbname == "pgdb"
    assert "password" not in resolve_settings(environ=env).libpq_kwargs()


# -- the test server itself --------------------------------------------------------------------


def test_server_listens_on_loopback_and_requires_the_password(db, tmp_path):
    with contextlib.closing(connect()) as connection, connection.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone()[0] == "127.0.0.1"
        cur.execute("SELECT current_user, current_database()")
        assert cur.fetchone() == ("kpfadmin", db.name)
    empty = tmp_path / "pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(ConnectError, match="no password supplied|password authentication"):
        connect(environ={**db.server.env, "PGDATABASE": db.name, "PGPASSFILE": str(empty)})


def test_server_is_skipped_with_a_reason_without_binaries(monkeypatch):
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgserver.shutil, "which", lambda name: None)
    assert pgserver.find_bindir() is None
    assert pgserver.unavailable_reason().startswith(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres)"
    )
    with pytest.raises(pgserver.PgServerError, match="no PostgreSQL server binaries"):
        pgserver.PgServer().start()


# -- schema ----------------------------------------------------------------------------------


def test_init_is_idempotent_and_versioned(db):
    with contextlib.closing(connect()) as connection:
        first = init_schema(connection)
        second = init_schema(connection)
        with connection.cursor() as cur:
            cur.execute("SELECT version, softver FROM schema_version")
            assert cur.fetchall() == [(SCHEMA_VERSION, f"kpfmasters {__version__}")]
            cur.execute(
                "SELECT rolname FROM pg_roles WHERE rolname IN ('kpfreadrole', 'kpfporole') "
                "ORDER BY 1"
            )
            assert [r[0] for r in cur.fetchall()] == ["kpfporole", "kpfreadrole"]
            cur.execute(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
                "WHERE table_name = 'calfiles' AND grantee LIKE 'kpf%%role' ORDER BY 1, 2"
            )
            assert cur.fetchall() == [
                ("kpfporole", "DELETE"),
                ("kpfporole", "INSERT"),
                ("kpfporole", "SELECT"),
                ("kpfporole", "UPDATE"),
                ("kpfreadrole", "SELECT"),
            ]
    assert first[0] == f"created table calfiles (schema version {SCHEMA_VERSION})"
    assert second[0] == f"table calfiles already at schema version {SCHEMA_VERSION}"
    assert "role kpfporole: exists" in second


def test_init_refuses_a_newer_schema_and_register_refuses_a_missing_one(db, tmp_path):
    with contextlib.closing(connect()) as connection:
        with pytest.raises(SchemaError, match="no calfiles table: run `kpfmasters db init`"):
            register_night(connection, tmp_path, "20230606")
        init_schema(connection)
        with connection, connection.cursor() as cur:
            cur.execute("INSERT INTO schema_version (version, softver) VALUES (99, 'future')")
        with pytest.raises(SchemaError, match="schema version 99, newer than this kpfmasters"):
            init_schema(connection)
        with pytest.raises(SchemaError, match="schema version 99, this kpfmasters"):
            register_night(connection, tmp_path, "20230606")


# -- registration -------------------------------------------------------------------------------


def test_register_reads_the_fields_from_the_files(conn, tmp_path):
    root = tmp_path / "masters"
    bias = write_master(root, "20230606", "bias", nframes=9, infobits=4)
    arc = write_master(
        root, "20230606", "arclamp", obj="autocal-UNe-sky", nframes=6, ccds=ALL_CCDS[:2]
    )
    (root / "20230606" / "kpf_20230606_master_bias_L2.fits").write_bytes(b"not ours")
    (root / "20230606" / ".kpf_20230606_master_dark.fits.tmp-123").write_bytes(b"partial")

    rows = register_night(conn, root, "20230606")

    assert [(r["caltype"], r["object"]) for r in rows] == [
        ("arclamp", "autocal-une-sky"),
        ("bias", "autocal-bias"),
    ]
    arc_row, bias_row = rows
    assert bias_row["level"] == 0
    assert bias_row["contentbits"] == 7
    assert arc_row["contentbits"] == 3
    assert (bias_row["nframes"], bias_row["infobits"]) == (9, 4)
    assert bias_row["minmjd"] == pytest.approx(night_mjd("20230606") + 0.1)
    assert bias_row["maxmjd"] == pytest.approx(night_mjd("20230606") + 0.19)
    assert bias_row["startdate"] == dt.date(2023, 6, 6)
    assert bias_row["enddate"] == dt.date(2023, 6, 7)
    assert bias_row["filename"] == str(bias) and Path(bias_row["filename"]).is_absolute()
    assert arc_row["filename"] == str(arc)
    assert bias_row["checksum"] == md5(bias)
    assert bias_row["status"] == 1
    assert bias_row["createdby"] == f"{getpass.getuser()} (kpfmasters {__version__})"
    assert len(all_rows(conn)) == 2


def write_traces_and_l1(root: Path, date: str, kind: str = "bias") -> tuple[list[Path], Path]:
    """Trace files of the night's flat (one SCI2 trace per CCD of the 6 x 8 images) and the
    L1 file of its master ``kind``, made by the product's own writers."""
    from kpfmasters.science.l1 import L1Job, build_l1
    from kpfmasters.science.traces import TraceSet, write_traces

    ts = TraceSet([[2.5, 0.0, 0.0, 0.0]], [1.0], [1.0], [0], [7], ["SCI2"], [0])
    csvs = [
        write_traces(ts, root / date / f"kpf_{date}_master_flat_{ccd}.csv")
        for ccd in ("GREEN_CCD", "RED_CCD")
    ]
    master = master_path(root, date, kind)
    l1 = master.with_name(master.name.replace(".fits", "_L1.fits"))
    traces = {ccd: str(p) for ccd, p in zip(("GREEN_CCD", "RED_CCD"), csvs, strict=True)}
    build_l1(L1Job(str(master), str(l1), traces))
    return csvs, l1


def test_register_traces_at_level_0_and_l1_at_level_1(conn, tmp_path):
    bias = write_master(tmp_path, "20230606", "bias", nframes=9)
    flat = write_master(tmp_path, "20230606", "flat", nframes=12)
    csvs, l1 = write_traces_and_l1(tmp_path, "20230606")
    rows = register_night(conn, tmp_path, "20230606")
    got = [(r["level"], r["caltype"], r["object"], r["filename"]) for r in rows]
    assert got == [
        (0, "bias", "autocal-bias", str(bias)),
        (0, "flat", "autocal-flat", str(flat)),
        (0, "ordertrace", "green_ccd", str(csvs[0])),
        (0, "ordertrace", "red_ccd", str(csvs[1])),
        (1, "bias", "autocal-bias", str(l1)),
    ]
    by_name = {Path(r["filename"]).name: r for r in rows}
    green = by_name[csvs[0].name]
    assert (green["contentbits"], green["nframes"], green["checksum"]) == (1, 12, md5(csvs[0]))
    assert by_name[csvs[1].name]["contentbits"] == 2
    one = by_name[l1.name]
    assert (one["contentbits"], one["nframes"], one["checksum"]) == (3, 9, md5(l1))
    # an L1 removed from disk loses its row; a damaged trace file stops the night unchanged
    l1.unlink()
    report = register_night_report(conn, tmp_path, "20230606")
    assert [r["filename"] for r in report.removed] == [str(l1)]
    before = all_rows(conn)
    csvs[1].write_text(",Coeff0,Coeff1\n0,1,2\n")
    with pytest.raises(InputError, match="kpf_20230606_master_flat_RED_CCD.csv: header"):
        register_night(conn, tmp_path, "20230606")
    assert all_rows(conn) == before


def test_register_wavelength_solutions_at_level_1_and_l2_at_level_2(conn, tmp_path):
    """A ThAr arclamp's WLS file (caltype wls) and drift table (level 2), made by the
    product's own writers from its L1 (this tiny one has no lines: every order keeps the
    prior), register with the arclamp's object; a removed L2 loses its row."""
    from kpfmasters.io.fits import write_fits
    from kpfmasters.science.l1 import L1Job, build_l1
    from kpfmasters.science.wlsproducts import l2_hdul, solve_l1, wls_hdul

    obj = "autocal-thar-all-morn"
    write_master(tmp_path, "20230606", "bias", nframes=9)
    write_master(tmp_path, "20230606", "flat", nframes=12)
    arc = write_master(tmp_path, "20230606", "arclamp", obj=obj, nframes=5)
    csvs, _ = write_traces_and_l1(tmp_path, "20230606")
    l1 = arc.with_name(arc.name.replace(".fits", "_L1.fits"))
    traces = {ccd: str(p) for ccd, p in zip(("GREEN_CCD", "RED_CCD"), csvs, strict=True)}
    build_l1(L1Job(str(arc), str(l1), traces))
    with fits.open(l1) as hdul:
        results = solve_l1(hdul, hdul, "thar", catalogue=np.array([5000.0]))
        solution = wls_hdul(hdul, results, "thar", "reference.fits")
        wls = write_fits(solution, tmp_path / "20230606" / f"kpf_20230606_master_WLS_{obj}_L1.fits")
        l2 = write_fits(
            l2_hdul(hdul, solution),
            tmp_path / "20230606" / f"kpf_20230606_master_arclamp_{obj}_L2.fits",
        )
    rows = register_night(conn, tmp_path, "20230606")
    got = {(r["level"], r["caltype"], r["object"]): r for r in rows}
    assert got[1, "wls", obj]["filename"] == str(wls)
    assert got[1, "wls", obj]["nframes"] == 5 and got[1, "wls", obj]["contentbits"] == 3
    assert got[1, "arclamp", obj]["filename"] == str(l1)
    assert got[2, "arclamp", obj]["filename"] == str(l2)
    assert got[2, "arclamp", obj]["checksum"] == md5(l2)
    l2.unlink()
    report = register_night_report(conn, tmp_path, "20230606")
    assert [r["filename"] for r in report.removed] == [str(l2)]
    # a WLS file whose OBJECT does not belong to its name stops the night unchanged
    with fits.open(wls, mode="update") as hdul:
        hdul[0].header["OBJECT"] = "autocal-etalon-all"
    before = all_rows(conn)
    with pytest.raises(
        InputError, match="master_WLS_autocal-thar-all-morn_L1.fits: PRIMARY OBJECT"
    ):
        register_night(conn, tmp_path, "20230606")
    assert all_rows(conn) == before


def test_register_twice_gives_identical_rows(conn, tmp_path):
    for mtype in ("bias", "dark", "flat"):
        write_master(tmp_path, "20230606", mtype)
    write_master(tmp_path, "20230606", "arclamp", obj="autocal-thar-all-morn")
    first = register_night(conn, tmp_path, "20230606")
    again = register_night_report(conn, tmp_path, "20230606")
    assert again.rows == first  # same cids, same created times, same everything
    assert (again.inserted, again.updated, again.unchanged, again.removed) == (0, 0, 4, [])
    assert all_rows(conn) == [tuple(row.values()) for row in sorted(first, key=lambda r: r["cid"])]


def test_a_changed_file_updates_its_row_and_operator_status_sticks_otherwise(conn, tmp_path):
    bias = write_master(tmp_path, "20230606", "bias", nframes=7)
    (row,) = register_night(conn, tmp_path, "20230606")
    set_status(conn, row["cid"], 0)
    (same,) = register_night(conn, tmp_path, "20230606")
    assert same["status"] == 0 and same["created"] == row["created"]

    write_master(tmp_path, "20230606", "bias", nframes=11)
    (changed,) = register_night(conn, tmp_path, "20230606")
    assert changed["cid"] == row["cid"]
    assert (changed["nframes"], changed["checksum"], changed["status"]) == (11, md5(bias), 1)
    assert changed["created"] > row["created"]


def test_a_master_removed_from_disk_loses_its_row(conn, tmp_path):
    bias = write_master(tmp_path, "20230606", "bias")
    write_master(tmp_path, "20230606", "dark")
    write_master(tmp_path, "20230607", "bias")
    register_night(conn, tmp_path, "20230606")
    register_night(conn, tmp_path, "20230607")
    bias.unlink()
    report = register_night_report(conn, tmp_path, "20230606")
    assert [r["caltype"] for r in report.rows] == ["dark"]
    assert [(r["caltype"], r["filename"]) for r in report.removed] == [("bias", str(bias))]
    remaining = {(r[9], r[2]) for r in all_rows(conn)}  # (startdate, caltype)
    assert remaining == {(dt.date(2023, 6, 6), "dark"), (dt.date(2023, 6, 7), "bias")}


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is no FITS file " * 200)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])


def _flip_a_data_byte(path: Path) -> None:
    with fits.open(path) as hdul:
        offset = hdul.fileinfo(1)["datLoc"] + 10  # inside GREEN_CCD's data
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF  # its DATASUM no longer matches
    path.write_bytes(bytes(data))


def _drop_nframes(path: Path) -> None:
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["NFRAMES"]


def _wrong_imtype(path: Path) -> None:
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["IMTYPE"] = "Dark"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_garbage, "is not a readable FITS file"),
        (_truncate, "is not a valid FITS file"),
        (_flip_a_data_byte, "Checksum verification failed"),
        (_drop_nframes, "PRIMARY keyword NFRAMES is missing"),
        (_wrong_imtype, "PRIMARY IMTYPE = 'Dark', expected 'Flat'"),
    ],
)
def test_a_bad_file_fails_the_registration_and_changes_nothing(conn, tmp_path, damage, problem):
    write_master(tmp_path, "20230606", "bias")
    dark = write_master(tmp_path, "20230606", "dark")
    flat = write_master(tmp_path, "20230606", "flat")
    register_night(conn, tmp_path, "20230606")
    before = all_rows(conn)
    dark.unlink()  # would remove a row ...
    write_master(tmp_path, "20230606", "arclamp", obj="slewcal")  # ... and add one
    damage(flat)
    with pytest.raises(InputError) as info:
        register_night(conn, tmp_path, "20230606")
    assert str(info.value).startswith(f"{flat}: ")
    assert problem in str(info.value)
    assert all_rows(conn) == before


def test_a_database_error_half_way_rolls_the_whole_night_back(conn, tmp_path, monkeypatch):
    import kpfmasters.db.register as register_module

    for mtype in ("bias", "dark", "flat"):
        write_master(tmp_path, "20230606", mtype, nframes=7)
    register_night(conn, tmp_path, "20230606")
    before = all_rows(conn)
    for mtype in ("bias", "dark", "flat"):
        write_master(tmp_path, "20230606", mtype, nframes=9)  # all three rows would change
    real = register_module.read_master

    def bad_flat_checksum(path):
        info = real(path)
        return dataclasses.replace(info, checksum="not-hex") if info.caltype == "flat" else info

    monkeypatch.setattr(register_module, "read_master", bad_flat_checksum)
    with pytest.raises(DatabaseError, match="registering night 20230606 failed, nothing changed"):
        register_night(conn, tmp_path, "20230606")  # bias and dark were upserted first
    assert all_rows(conn) == before


def test_objects_equal_once_lowercased_are_refused(conn, tmp_path):
    write_master(tmp_path, "20230606", "arclamp", obj="LFC")
    other = write_master(tmp_path, "20230606", "arclamp", obj="lfc")
    with pytest.raises(InputError, match="equals OBJECT 'LFC' of .* once lowercased") as info:
        register_night(conn, tmp_path, "20230606")
    assert str(other) in str(info.value) or "kpf_20230606_master_arclamp_LFC.fits" in str(
        info.value
    )
    assert all_rows(conn) == []


# -- hostile OBJECT values ----------------------------------------------------------------------

HOSTILE = [
    "it's; DROP TABLE calfiles; --",
    "ThAr_%",
    "lamp_1",
    "lampX1",
    "C:\\lamps\\une",
    'say "cheese"; SELECT 1',
]


def test_hostile_objects_are_stored_and_matched_literally(conn, tmp_path):
    paths = {obj: write_master(tmp_path, "20230606", "arclamp", obj=obj) for obj in HOSTILE}
    rows = register_night(conn, tmp_path, "20230606")
    assert sorted(r["object"] for r in rows) == sorted(o.lower() for o in HOSTILE)
    for obj, path in paths.items():
        assert nearest_master(conn, "20230610", "arclamp", object=obj) == path
        assert nearest_master(conn, "20230610", "arclamp", object=obj.upper()) == path
    for pattern in ("%", "lamp%", "thar__", "lamp_", "c:\\\\lamps\\\\une", "it's%"):
        with pytest.raises(NoPredecessorError, match="none is registered"):
            nearest_master(conn, "20230610", "arclamp", object=pattern)
    assert len(all_rows(conn)) == len(HOSTILE)  # the table survived


# -- nearest ------------------------------------------------------------------------------------


def test_nearest_ties_go_to_the_earlier_night(conn, tmp_path):
    before = write_master(tmp_path, "20230604", "bias")
    write_master(tmp_path, "20230608", "bias")
    far = write_master(tmp_path, "20230601", "bias")
    for date in ("20230604", "20230608", "20230601"):
        register_night(conn, tmp_path, date)
    assert nearest_master(conn, "20230606", "bias") == before
    assert nearest_master(conn, "20230602", "bias") == far
    assert nearest_master(conn, "20230604", "bias") == before


def test_nearest_applies_max_age_nframes_bits_and_status(conn, tmp_path):
    old = write_master(tmp_path, "20230520", "bias")
    write_master(tmp_path, "20230601", "bias", nframes=3)
    write_master(tmp_path, "20230603", "bias", ccds=("GREEN_CCD", "CA_HK"))
    write_master(tmp_path, "20230605", "bias")
    flat = write_master(tmp_path, "20230604", "flat", nframes=5, ccds=("GREEN_CCD",))
    for date in ("20230520", "20230601", "20230603", "20230605", "20230604"):
        register_night(conn, tmp_path, date)
    with conn.cursor() as cur:
        cur.execute("SELECT cid FROM calfiles WHERE startdate = '2023-06-05'")
        (cid,) = cur.fetchone()
    set_status(conn, cid, 0)

    found = find_nearest(conn, "20230606", "bias")
    assert found.path == old
    assert found.skipped == [
        "20230605 bias: status 0 (not good)",
        "20230603 bias: lacks RED_CCD (contentbits 5)",
        "20230601 bias: nframes 3 < 5",
    ]
    assert nearest_master(conn, "20230606", "bias", required_bits=1, min_nframes=5) == (
        tmp_path / "20230603" / "kpf_20230603_master_bias.fits"
    )
    assert nearest_master(conn, "20230606", "bias", required_bits=3, min_nframes=3) == (
        tmp_path / "20230601" / "kpf_20230601_master_bias.fits"
    )
    assert nearest_master(conn, "20230606", "flat", required_bits=1) == flat
    with pytest.raises(NoPredecessorError) as info:
        nearest_master(conn, "20230606", "bias", max_age_days=10)
    assert str(info.value) == (
        "no usable master bias (level 0) for 20230606: "
        "20230605 bias: status 0 (not good); "
        "20230603 bias: lacks RED_CCD (contentbits 5); "
        "20230601 bias: nframes 3 < 5; "
        "20230520 bias: 17 days > max age 10"
    )


def test_nearest_refuses_a_changed_or_missing_file_and_uses_the_next(conn, tmp_path, caplog):
    near = write_master(tmp_path, "20230605", "dark")
    gone = write_master(tmp_path, "20230607", "dark")
    fallback = write_master(tmp_path, "20230601", "dark")
    for date in ("20230605", "20230607", "20230601"):
        register_night(conn, tmp_path, date)
    registered = md5(near)
    write_master(tmp_path, "20230605", "dark", nframes=8)  # rewritten after registration
    gone.unlink()

    found = find_nearest(conn, "20230606", "dark")
    assert found.path == fallback
    assert found.skipped == [
        f"20230605 dark: file {near} has MD5 {md5(near)}, registered {registered}",
        f"20230607 dark: file {gone} is missing",
    ]
    assert f"passed over 20230607 dark: file {gone} is missing" in caplog.text

    fallback.unlink()
    with pytest.raises(NoPredecessorError, match=r"20230601 dark: file .* is missing$"):
        nearest_master(conn, "20230606", "dark")


def test_nearest_says_so_when_nothing_is_registered(conn):
    with pytest.raises(NoPredecessorError) as info:
        nearest_master(conn, "20230606", "arclamp", object="slewcal")
    assert str(info.value) == (
        "no usable master arclamp 'slewcal' (level 0) for 20230606: none is registered"
    )


def test_nearest_earlier_only_leaves_the_night_and_later_nights_out(conn, tmp_path):
    for date in ("20230601", "20230606", "20230607"):
        write_master(tmp_path, date, "bias")
        register_night(conn, tmp_path, date)
    later = tmp_path / "20230607" / "kpf_20230607_master_bias.fits"
    earlier = tmp_path / "20230601" / "kpf_20230601_master_bias.fits"
    assert nearest_master(conn, "20230606", "bias", other_nights=True) == later
    assert nearest_master(conn, "20230606", "bias", earlier_only=True) == earlier
    with pytest.raises(NoPredecessorError, match="for 20230601: none is registered$"):
        nearest_master(conn, "20230601", "bias", earlier_only=True)


# -- order traces of a night without a flat -----------------------------------------------------


def register_traces(conn, root: Path, date: str, ccds=("GREEN_CCD", "RED_CCD")) -> list[Path]:
    """Register a night's master flat and the trace files of ``ccds`` (one SCI2 trace each,
    written by the product's own writer) under ``root``; return the trace files."""
    from kpfmasters.science.traces import TraceSet, write_traces

    write_master(root, date, "flat")
    ts = TraceSet([[2.5, 0.0, 0.0, 0.0]], [1.0], [1.0], [0], [7], ["SCI2"], [0])
    csvs = [write_traces(ts, root / date / f"kpf_{date}_master_flat_{ccd}.csv") for ccd in ccds]
    register_night(conn, root, date)
    return csvs


def by_ccd(csvs: list[Path]) -> dict[str, str]:
    """The GREEN and RED trace files as :meth:`Plans.trace_files` gives them."""
    return {"GREEN_CCD": str(csvs[0]), "RED_CCD": str(csvs[1])}


def trace_plans(tmp_path: Path, nights: list[str], max_age: int = 30):
    """Plans of ``nights`` (no L0 files: no night makes a flat) with the database's
    look-ups, masters_root empty (nothing on disk to find)."""
    from kpfmasters.core.config import load_config
    from kpfmasters.plan.plans import Plans, database_lookup, database_traces

    cfg = load_config(
        overrides={
            "dates": ",".join(nights),
            "l0_root": str(tmp_path / "L0"),
            "work_root": str(tmp_path / "work"),
            "masters_root": str(tmp_path / "masters"),
            "order_mask": str(tmp_path / "mask.fits"),
            "predecessors": {"max_age_days": max_age},
            "database": {"enabled": True},
        }
    )
    return Plans(cfg, db_lookup=database_lookup, trace_lookup=database_traces)


def test_a_night_without_a_flat_takes_the_nearest_earlier_registered_traces(conn, tmp_path):
    archive = tmp_path / "archive"  # registered masters, not under this run's masters_root
    good = register_traces(conn, archive, "20230601")
    changed = register_traces(conn, archive, "20230603")
    registered = md5(changed[1])
    changed[1].write_text(changed[1].read_text() + "\n")  # RED changed after registration
    register_traces(conn, archive, "20230604", ccds=("GREEN_CCD",))  # no RED trace
    register_traces(conn, archive, "20230605")
    register_traces(conn, archive, "20230606")  # the night's own (frames since reclassified)
    register_traces(conn, archive, "20230607")  # later, nearer: never used
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE calfiles SET status = 0 WHERE startdate = '2023-06-05' AND object = %s",
            ("green_ccd",),
        )
    conn.commit()

    plans = trace_plans(tmp_path, ["20230606"])
    assert plans.trace_files("20230606") == by_ccd(good)
    plans.trace_lookup = None  # on disk only: nothing under masters_root
    with pytest.raises(NoPredecessorError, match="none exists .earlier nights only.$"):
        plans.trace_files("20230606")

    with pytest.raises(NoPredecessorError) as info:
        trace_plans(tmp_path, ["20230606"], max_age=4).trace_files("20230606")
    md5s = f"MD5 {md5(changed[1])}, registered {registered}"
    assert str(info.value) == (
        "night 20230606 has no master order trace of its own and none exists (earlier nights "
        "of this run only); in the database: no usable ordertrace 'green_ccd' and 'red_ccd' "
        "of one night (level 0) before 20230606: "
        "20230605 ordertrace: 'green_ccd': status 0 (not good); "
        "20230604 ordertrace: 'red_ccd': none is registered; "
        f"20230603 ordertrace: 'red_ccd': file {changed[1]} has {md5s}; "
        "20230601 ordertrace: 'green_ccd': 5 days > max age 4; 'red_ccd': 5 days > max age 4"
    )


def test_this_runs_earlier_flat_night_and_the_registered_traces_the_nearer_wins(
    conn, tmp_path, monkeypatch
):
    from kpfmasters.plan.plans import Plans

    archive = tmp_path / "archive"
    first = register_traces(conn, archive, "20230601")
    fifth = register_traces(conn, archive, "20230605")
    plans = trace_plans(tmp_path, ["20230603", "20230604", "20230606"])
    monkeypatch.setattr(Plans, "makes_flat", lambda self, night: night == "20230603")
    pending = plans.own_traces("20230603")  # this run makes it; not registered yet
    assert plans.trace_files("20230604") == pending  # 1 day, the database's 3 days away
    assert plans.trace_files("20230606") == by_ccd(fifth)
    assert plans.trace_files("20230603") == pending  # its own

    # the same night in both: this run's, as it makes it
    plans = trace_plans(tmp_path, ["20230601", "20230602"])
    monkeypatch.setattr(Plans, "makes_flat", lambda self, night: night == "20230601")
    assert plans.trace_files("20230602") == plans.own_traces("20230601")
    assert plans.own_traces("20230601") != by_ccd(first)


# -- roles --------------------------------------------------------------------------------------


def test_pipeline_role_registers_but_cannot_alter_or_drop(db, tmp_path, monkeypatch):
    pipe_user, read_user = f"apollo_{db.name}", f"reader_{db.name}"
    db.server.create_user(pipe_user)
    db.server.create_user(read_user)
    with contextlib.closing(connect()) as admin:
        init_schema(admin, pipeline_members=[pipe_user], read_members=[read_user])
    bias = write_master(tmp_path, "20230606", "bias")

    monkeypatch.setenv("KPFDBUSER", pipe_user)  # wins over PGUSER (the admin)
    with contextlib.closing(connect()) as pipe:
        with pipe.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == pipe_user
        pipe.rollback()
        (row,) = register_night(pipe, tmp_path, "20230606")
        assert row["filename"] == str(bias)
        assert nearest_master(pipe, "20230607", "bias") == bias
        denied = [
            "ALTER TABLE calfiles ADD COLUMN evil text",
            "DROP TABLE calfiles",
            "TRUNCATE calfiles",
            "CREATE TABLE mine (x int)",
            "DELETE FROM schema_version",
        ]
        for statement in denied:
            with pytest.raises(psycopg2.Error) as info, pipe, pipe.cursor() as cur:
                cur.execute(statement)
            assert isinstance(info.value, psycopg2.errors.InsufficientPrivilege), statement

    monkeypatch.setenv("KPFDBUSER", read_user)
    with contextlib.closing(connect()) as reader:
        assert nearest_master(reader, "20230607", "bias") == bias
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), reader, reader.cursor() as cur:
            cur.execute("DELETE FROM calfiles")

    monkeypatch.delenv("KPFDBUSER")
    with contextlib.closing(connect()) as admin:
        assert len(all_rows(admin)) == 1


def test_init_warns_about_or_revokes_create_for_everyone_in_the_schema(db, monkeypatch):
    # PostgreSQL <= 14 lets every role CREATE in schema public; 15 does not. Recreate the old
    # default in this database: db init must say so, and revoke it only when asked.
    pipe_user = f"hermes_{db.name}"
    db.server.create_user(pipe_user)
    with contextlib.closing(connect()) as admin:
        with admin, admin.cursor() as cur:
            cur.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        done = init_schema(admin, pipeline_members=[pipe_user])
        (warning,) = [line for line in done if line.startswith("warning:")]
        assert "every role may CREATE in schema public" in warning
        assert "kpfmasters db init --revoke-public-create" in warning

        monkeypatch.setenv("KPFDBUSER", pipe_user)
        with contextlib.closing(connect()) as pipe, pipe, pipe.cursor() as cur:
            cur.execute("CREATE TABLE shadow (x int)")  # the risk the warning names
            cur.execute("DROP TABLE shadow")
        monkeypatch.delenv("KPFDBUSER")

        done = init_schema(admin, revoke_public_create=True)
        assert "revoked CREATE on schema public from PUBLIC" in done
        assert not [line for line in done if line.startswith("warning:")]
        assert not [line for line in init_schema(admin) if "PUBLIC" in line or "warning" in line]

    monkeypatch.setenv("KPFDBUSER", pipe_user)
    with contextlib.closing(connect()) as pipe:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege), pipe, pipe.cursor() as cur:
            cur.execute("CREATE TABLE shadow (x int)")
        with pipe.cursor() as cur:  # registration rights are untouched
            cur.execute("SELECT count(*) FROM calfiles")
            assert cur.fetchone()[0] == 0


def test_init_says_so_when_the_revoke_changes_nothing(db, monkeypatch):
    # Before PostgreSQL 15 schema public belongs to the bootstrap superuser: an administrator
    # who owns the database but not the schema cannot revoke, and PostgreSQL only warns.
    admin_user = f"dbadmin_{db.name}"
    db.server.create_user(admin_user)
    with contextlib.closing(connect()) as su, su, su.cursor() as cur:
        cur.execute(f'ALTER ROLE "{admin_user}" CREATEROLE')
        cur.execute(f'ALTER DATABASE "{db.name}" OWNER TO "{admin_user}"')
        cur.execute("ALTER SCHEMA public OWNER TO CURRENT_USER")  # the superuser's, as in <= 14
        cur.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    monkeypatch.setenv("KPFDBUSER", admin_user)
    with contextlib.closing(connect()) as admin:
        done = init_schema(admin, revoke_public_create=True)
    (warning,) = [line for line in done if line.startswith("warning:")]
    assert warning == (
        "warning: REVOKE CREATE ON SCHEMA public FROM PUBLIC changed nothing "
        f"({admin_user} neither owns schema public nor is a superuser); every role may still "
        "CREATE there: run it as the schema's owner"
    )
    assert "revoked CREATE on schema public from PUBLIC" not in done


# -- connection failures ------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (md5(p), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_server_down_gives_a_clear_error_and_touches_nothing(db, tmp_path, monkeypatch, capsys):
    write_master(tmp_path, "20230606", "bias")
    before = _snapshot(tmp_path)
    port = free_port()
    monkeypatch.setenv("PGPORT", str(port))
    with pytest.raises(ConnectError) as info:
        connect()
    message = str(info.value)
    assert message.startswith(
        f"cannot connect to PostgreSQL (host=127.0.0.1 port={port} user=kpfadmin "
        f"dbname={db.name}): "
    )
    assert "Connection refused" in message and "server running" in message
    assert db.server.password not in message

    status = cli.main(["db", "register", "--date", "20230606", "--masters-root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err[-1].startswith("kpfmasters db: error: cannot connect to PostgreSQL (host=127.0.0.1")
    assert _snapshot(tmp_path) == before


def test_wrong_password_gives_a_clear_error_without_any_password(db, tmp_path, monkeypatch, caplog):
    wrong = "Wr0ng-" + secrets.token_hex(6)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{db.server.port}:*:kpfadmin:{wrong}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    monkeypatch.setenv("KPFDBNAME", db.name)
    write_master(tmp_path, "20230606", "bias")
    before = _snapshot(tmp_path)
    with caplog.at_level("DEBUG"), pytest.raises(ConnectError) as info:
        connect()
    message = str(info.value)
    assert "password authentication failed for user" in message
    assert f"user=kpfadmin dbname={db.name}" in message
    assert f"(the password comes from {passfile})" in message
    for secret in (wrong, db.server.password):
        assert secret not in message
        assert secret not in caplog.text
    assert _snapshot(tmp_path) == before


# -- command line and Snakemake script ----------------------------------------------------------


def test_cli_init_register_nearest_list_print_what_they_did(db, tmp_path, capsys):
    assert cli.main(["db", "init"]) == 0
    out = capsys.readouterr().out
    assert f"user=kpfadmin dbname={db.name}" in out
    assert f"created table calfiles (schema version {SCHEMA_VERSION})" in out
    assert cli.main(["db", "init"]) == 0
    assert "already at schema version" in capsys.readouterr().out

    bias = write_master(tmp_path, "20230605", "bias")
    dark = write_master(tmp_path, "20230605", "dark")
    argv = ["db", "register", "--date", "20230605", "--masters-root", str(tmp_path)]
    assert cli.main([*argv, "--comment", "first"]) == 0
    out = capsys.readouterr().out.splitlines()
    summary = "night 20230605: 2 master(s) registered (2 new, 0 updated, 0 unchanged)"
    assert out[-1] == f"{summary}, 0 row(s) removed"
    assert any(line.endswith(str(bias)) and " bias " in line for line in out)

    dark.unlink()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"removed cid 2: dark 'autocal-dark' ({dark})" in out

    assert cli.main(["db", "nearest", "--date", "20230607", "--caltype", "bias"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == str(bias)
    assert out[0].startswith("nearest bias for 20230607: 2 day(s) away, cid 1: 20230605")

    assert cli.main(["db", "nearest", "--date", "20230607", "--caltype", "dark"]) == 1
    err = capsys.readouterr().err
    assert "no usable master dark (level 0) for 20230607: none is registered" in err

    assert cli.main(["db", "list", "--date", "20230605"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 row(s)" and "object='autocal-bias'" in out[0]


def test_register_night_script_writes_a_receipt(conn, db, tmp_path):
    bias = write_master(tmp_path / "masters", "20230606", "bias")
    receipt = tmp_path / "out" / "registered.json"
    logfile = tmp_path / "logs" / "register.log"
    snakemake = SimpleNamespace(
        log=[str(logfile)],
        output=[str(receipt)],
        params=SimpleNamespace(masters_root=str(tmp_path / "masters")),
        wildcards=SimpleNamespace(date="20230606"),
    )
    runpy.run_path(str(REPO / "scripts" / "register_night.py"), {"snakemake": snakemake})
    data = json.loads(receipt.read_text())
    assert data["date"] == "20230606"
    assert [row["filename"] for row in data["rows"]] == [str(bias)]
    assert data["rows"][0]["startdate"] == "2023-06-06"
    assert dt.datetime.fromisoformat(data["time"]).tzinfo is not None
    log_text = logfile.read_text()
    assert f"dbname={db.name}" in log_text and str(bias) in log_text
    assert db.server.password not in log_text
    assert len(all_rows(conn)) == 1
