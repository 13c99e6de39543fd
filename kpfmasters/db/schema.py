"""Applying the versioned ``schema.sql`` and the two roles; checking the version in use.

``schema.sql`` says its version on its first line (``... schema, version N``); the database
records each version applied in ``schema_version``. Roles (NOLOGIN group roles; login users
are made members with ``GRANT role TO user``):

- the read-only role: SELECT on ``calfiles`` and ``schema_version``;
- the pipeline role: SELECT, INSERT, UPDATE, DELETE on ``calfiles``, USAGE on its sequence,
  SELECT on ``schema_version``; it owns nothing, so it cannot ALTER, DROP or TRUNCATE.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from importlib import resources

import psycopg2
from psycopg2 import sql

from kpfmasters import __version__
from kpfmasters.db.errors import DatabaseError, SchemaError
from kpfmasters.db.transaction import transaction

log = logging.getLogger(__name__)

DEFAULT_READ_ROLE = "kpfreadrole"
DEFAULT_PIPELINE_ROLE = "kpfporole"
SEQUENCE = "calfiles_cid_seq"
_VERSION_RE = re.compile(r"^--.*schema, version (\d+)\s*$")
# Serialises concurrent `db init` runs (pg_advisory_xact_lock key).
_INIT_LOCK = 0x6B70_6664  # "kpfd"


def schema_text() -> str:
    """The text of ``schema.sql`` shipped with the package.

    Returns
    -------
    str
        The SQL that creates the ``calfiles`` and ``schema_version`` tables.
    """
    return resources.files("kpfmasters.db").joinpath("schema.sql").read_text()


def schema_file_version(text: str | None = None) -> int:
    """The version that ``schema.sql`` declares on its first line (``... schema, version N``).

    Parameters
    ----------
    text : str, optional
        The SQL text (default: :func:`schema_text`).

    Returns
    -------
    int
        N.

    Raises
    ------
    SchemaError
        When the first line declares no version.
    """
    first = (text if text is not None else schema_text()).splitlines()[0]
    match = _VERSION_RE.match(first)
    if not match:
        raise SchemaError(f"schema.sql: first line {first!r} does not declare 'version N'")
    return int(match.group(1))


SCHEMA_VERSION = schema_file_version()


def database_version(cur) -> int | None:
    """The newest schema version recorded in the database.

    Parameters
    ----------
    cur : psycopg2 cursor
        A cursor of the connection to ask.

    Returns
    -------
    int or None
        The largest ``schema_version.version``; None when that table does not exist.
    """
    cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    if not cur.fetchone()[0]:
        return None
    cur.execute("SELECT max(version) FROM schema_version")
    return cur.fetchone()[0]


def check_schema(conn) -> None:
    """Check that ``calfiles`` exists at this software's schema version.

    Parameters
    ----------
    conn : psycopg2 connection
        The connection to check (rolled back when the check itself fails).

    Raises
    ------
    SchemaError
        When the database has no ``calfiles`` table or schema, or another version.
    DatabaseError
        When the version cannot be read.
    """
    try:
        with conn.cursor() as cur:
            version = database_version(cur)
            cur.execute("SELECT to_regclass('calfiles') IS NOT NULL")
            has_table = cur.fetchone()[0]
    except psycopg2.Error as exc:
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                pass
        raise DatabaseError(f"cannot read the schema version: {_one_line(exc)}") from None
    if version is None or not has_table:
        raise SchemaError(
            f"database {conn.info.dbname} has no calfiles table: run `kpfmasters db init` "
            "as an administrator"
        )
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"database {conn.info.dbname} has schema version {version}, this kpfmasters "
            f"({__version__}) needs version {SCHEMA_VERSION}"
        )


def _role_exists(cur, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return cur.fetchone() is not None


def _ensure_role(cur, name: str) -> bool:
    """Create ``name`` as a NOLOGIN role when missing; True when it was created."""
    if _role_exists(cur, name):
        return False
    cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    return True


def _grant_roles(cur, read_role: str, pipeline_role: str) -> None:
    read, pipe = sql.Identifier(read_role), sql.Identifier(pipeline_role)
    tables = sql.SQL("calfiles, schema_version")
    statements = [
        sql.SQL("REVOKE ALL ON {} FROM {}, {}").format(tables, read, pipe),
        sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}, {}").format(
            sql.Identifier(SEQUENCE), read, pipe
        ),
        sql.SQL("GRANT SELECT ON {} TO {}").format(tables, read),
        sql.SQL("GRANT SELECT ON schema_version TO {}").format(pipe),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON calfiles TO {}").format(pipe),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.Identifier(SEQUENCE), pipe),
    ]
    for statement in statements:
        cur.execute(statement)


def _grant_membership(cur, role: str, members: Iterable[str]) -> None:
    for member in members:
        if not _role_exists(cur, member):
            raise DatabaseError(f"cannot grant {role} to {member}: no such role")
        cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member)))


def _public_may_create(cur) -> str | None:
    """The schema holding ``calfiles`` when every role (PUBLIC) may CREATE in it, else None.

    PostgreSQL 14 and older grant CREATE on schema ``public`` to PUBLIC by default (15
    revoked it): there any login role, the pipeline role's members included, could create
    objects beside ``calfiles``, e.g. a function or table that shadows a name.
    """
    cur.execute(
        "SELECT n.nspname, has_schema_privilege('public', n.oid, 'CREATE') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = 'calfiles'::regclass"
    )
    schema, open_to_all = cur.fetchone()
    return schema if open_to_all else None


def _one_line(exc: Exception) -> str:
    from kpfmasters.db.connect import pg_reason

    return pg_reason(exc)


def init_schema(
    conn,
    read_role: str = DEFAULT_READ_ROLE,
    pipeline_role: str = DEFAULT_PIPELINE_ROLE,
    pipeline_members: Iterable[str] = (),
    read_members: Iterable[str] = (),
    revoke_public_create: bool = False,
) -> list[str]:
    """Apply ``schema.sql``, create the roles and grants, in one transaction.

    Idempotent; concurrent runs are serialised by an advisory lock. When every role may
    CREATE in the schema holding ``calfiles`` (PostgreSQL <= 14's default for ``public``),
    that is revoked from PUBLIC with ``revoke_public_create``, and otherwise reported in a
    warning line.

    Parameters
    ----------
    conn : psycopg2 connection
        A connection of an administrator (may create roles and tables).
    read_role, pipeline_role : str
        Names of the read-only and the pipeline role (NOLOGIN; made when missing).
    pipeline_members, read_members : iterable of str
        Existing roles (login users) made members of the pipeline and the read-only role.
    revoke_public_create : bool
        Revoke CREATE on the schema from PUBLIC when every role has it.

    Returns
    -------
    list of str
        What was done, one line each, for the command to print (also logged).

    Raises
    ------
    SchemaError
        When the database's schema is newer than this software's (nothing is changed).
    DatabaseError
        When a statement fails, or a member role does not exist (all is rolled back).
    """
    done: list[str] = []
    try:
        with transaction(conn), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
            before = database_version(cur)
            if before is not None and before > SCHEMA_VERSION:
                raise SchemaError(
                    f"database {conn.info.dbname} has schema version {before}, newer than "
                    f"this kpfmasters ({__version__}, version {SCHEMA_VERSION}); not changed"
                )
            cur.execute(schema_text())
            cur.execute(
                "INSERT INTO schema_version (version, softver) VALUES (%s, %s) "
                "ON CONFLICT (version) DO NOTHING",
                (SCHEMA_VERSION, f"kpfmasters {__version__}"),
            )
            if before is None:
                done.append(f"created table calfiles (schema version {SCHEMA_VERSION})")
            else:
                done.append(f"table calfiles already at schema version {SCHEMA_VERSION}")
            for role in (read_role, pipeline_role):
                state = "created" if _ensure_role(cur, role) else "exists"
                done.append(f"role {role}: {state}")
            _grant_roles(cur, read_role, pipeline_role)
            done.append(f"granted SELECT on calfiles to {read_role}")
            done.append(
                f"granted SELECT, INSERT, UPDATE, DELETE on calfiles and USAGE on {SEQUENCE} "
                f"to {pipeline_role}"
            )
            _grant_membership(cur, pipeline_role, pipeline_members)
            _grant_membership(cur, read_role, read_members)
            done.extend(f"granted {pipeline_role} to {m}" for m in pipeline_members)
            done.extend(f"granted {read_role} to {m}" for m in read_members)
            schema = _public_may_create(cur)
            if schema and revoke_public_create:
                cur.execute(
                    sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(sql.Identifier(schema))
                )
                # PostgreSQL only warns when the caller may not revoke (not the schema's
                # owner, nor a superuser): look again rather than trust the statement.
                if _public_may_create(cur):
                    done.append(
                        f"warning: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC changed nothing "
                        f"({conn.info.user} neither owns schema {schema} nor is a superuser); "
                        f"every role may still CREATE there: run it as the schema's owner"
                    )
                else:
                    done.append(f"revoked CREATE on schema {schema} from PUBLIC")
            elif schema:
                done.append(
                    f"warning: every role may CREATE in schema {schema} (the default before "
                    f"PostgreSQL 15), so pipeline users could create objects beside calfiles; "
                    f"run `kpfmasters db init --revoke-public-create` or REVOKE CREATE ON "
                    f"SCHEMA {schema} FROM PUBLIC"
                )
    except psycopg2.Error as exc:
        raise DatabaseError(f"db init failed: {_one_line(exc)}") from None
    for line in done:
        log.info("%s", line)
    return done
