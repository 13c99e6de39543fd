"""``kpfmasters db``: the calibration database (init, register, nearest, list).

Connection settings: ``--host/--port/--user/--dbname`` > ``KPFDBUSER``/``KPFDBNAME`` >
``PGHOST``/``PGPORT``/``PGUSER``/``PGDATABASE``; the password only from ``PGPASSFILE`` or
``~/.pgpass`` (there is deliberately no password option).
"""

from __future__ import annotations

import argparse
import contextlib

from kpfmasters.core.config import add_config_arguments, config_from_args
from kpfmasters.core.errors import KPFMastersError
from kpfmasters.core.products import MASTER_TYPES
from kpfmasters.db import connect, describe, resolve_settings
from kpfmasters.db.masterfile import CONTENT_BITS, LEVEL_2D, parse_night
from kpfmasters.db.nearest import DEFAULT_REQUIRED_BITS, find_nearest
from kpfmasters.db.register import register_night_report
from kpfmasters.db.report import format_row
from kpfmasters.db.schema import DEFAULT_PIPELINE_ROLE, DEFAULT_READ_ROLE, check_schema, init_schema
from kpfmasters.db.transaction import transaction

HELP = "calibration database: init the schema, register a night, find the nearest master"

MASTERS_ROOT_ENV = "KPFPIPE_MASTERS_BASE_DIR"


def _night(text: str) -> str:
    try:
        parse_night(text)
    except KPFMastersError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _bits(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= sum(CONTENT_BITS.values()):
        raise argparse.ArgumentTypeError(f"{text}: content bits are 0..7 (1 GREEN, 2 RED, 4 CA_HK)")
    return value


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (password: PGPASSFILE or ~/.pgpass only)")
    group.add_argument("--host", help="server host (default: PGHOST)")
    group.add_argument("--port", help="server port (default: PGPORT)")
    group.add_argument("--user", help="database user (default: KPFDBUSER, then PGUSER)")
    group.add_argument("--dbname", help="database name (default: KPFDBNAME, then PGDATABASE)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")

    init = sub.add_parser("init", help="create or update the schema and roles (administrator)")
    init.add_argument("--read-role", default=DEFAULT_READ_ROLE, help="read-only role")
    init.add_argument("--pipeline-role", default=DEFAULT_PIPELINE_ROLE, help="pipeline role")
    init.add_argument(
        "--grant-pipeline",
        action="append",
        default=[],
        metavar="USER",
        help="make USER a member of the pipeline role (repeatable)",
    )
    init.add_argument(
        "--grant-read",
        action="append",
        default=[],
        metavar="USER",
        help="make USER a member of the read-only role (repeatable)",
    )
    init.add_argument(
        "--revoke-public-create",
        action="store_true",
        help="revoke CREATE on the calfiles schema from PUBLIC (granted by default before "
        "PostgreSQL 15; without this option db init only warns)",
    )
    _connection_options(init)

    reg = sub.add_parser("register", help="make a night's rows exactly its masters on disk")
    reg.add_argument("--date", required=True, type=_night, help="night YYYYMMDD")
    reg.add_argument(
        "--masters-root",
        help=f"masters root directory (default: the configuration's masters_root, i.e. "
        f"${MASTERS_ROOT_ENV})",
    )
    reg.add_argument("--comment", help="comment stored with new or changed rows")
    add_config_arguments(reg)
    _connection_options(reg)

    near = sub.add_parser("nearest", help="the nearest usable master to a night")
    near.add_argument("--date", required=True, type=_night, help="night YYYYMMDD")
    near.add_argument("--caltype", required=True, choices=sorted(MASTER_TYPES))
    near.add_argument("--object", help="OBJECT value (exact, case-insensitive)")
    near.add_argument("--max-age", type=int, help="maximum age in days (default: none)")
    near.add_argument(
        "--require-bits",
        type=_bits,
        default=DEFAULT_REQUIRED_BITS,
        help="content bits that must be present: 1 GREEN, 2 RED, 4 CA_HK (default: 3)",
    )
    near.add_argument(
        "--min-nframes",
        type=int,
        help="fewest frames a master may be made of (default: the configuration's min_frames, "
        "the rule the workflow's look-ups apply)",
    )
    add_config_arguments(near)
    near.add_argument("--level", type=int, default=LEVEL_2D)
    _connection_options(near)

    lst = sub.add_parser("list", help="print registered rows")
    lst.add_argument("--date", type=_night, help="only this night")
    lst.add_argument("--caltype", choices=sorted(MASTER_TYPES), help="only this caltype")
    _connection_options(lst)


def _connect(args):
    return connect(host=args.host, port=args.port, user=args.user, dbname=args.dbname)


def _run_init(args, conn) -> int:
    print(f"db init on {describe(resolve_settings(args.host, args.port, args.user, args.dbname))}")
    for line in init_schema(
        conn,
        args.read_role,
        args.pipeline_role,
        args.grant_pipeline,
        args.grant_read,
        revoke_public_create=args.revoke_public_create,
    ):
        print(line)
    return 0


def _run_register(args, conn) -> int:
    report = register_night_report(conn, args.masters_root, args.date, comment=args.comment)
    for row in report.rows:
        print(format_row(row))
    for row in report.removed:
        print(f"removed cid {row['cid']}: {row['caltype']} {row['object']!r} ({row['filename']})")
    print(report.summary())
    return 0


def _run_nearest(args, conn) -> int:
    if args.min_nframes is None:
        args.min_nframes = config_from_args(args)["min_frames"]
    found = find_nearest(
        conn,
        args.date,
        args.caltype,
        args.object,
        args.max_age,
        args.require_bits,
        args.min_nframes,
        args.level,
    )
    for note in found.skipped:
        print(f"passed over {note}")
    row = found.row
    print(f"nearest {args.caltype} for {args.date}: {row['age']} day(s) away, {format_row(row)}")
    print(found.path)
    return 0


def _run_list(args, conn) -> int:
    check_schema(conn)
    with transaction(conn), conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM calfiles WHERE (%(d)s::date IS NULL OR startdate = %(d)s::date) "
            "AND (%(t)s::text IS NULL OR caltype = %(t)s::text) "
            "ORDER BY startdate, level, caltype, object, cid",
            {"d": args.date, "t": args.caltype},
        )
        names = [col.name for col in cur.description]
        rows = [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
    for row in rows:
        print(format_row(row))
    print(f"{len(rows)} row(s)")
    return 0


ACTIONS = {
    "init": _run_init,
    "register": _run_register,
    "nearest": _run_nearest,
    "list": _run_list,
}


def run(args) -> int:
    if args.db_command == "register" and not args.masters_root:
        args.masters_root = config_from_args(args)["masters_root"]
    with contextlib.closing(_connect(args)) as conn:
        return ACTIONS[args.db_command](args, conn)
