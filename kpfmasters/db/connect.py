"""Connecting to the calibration database through libpq's own settings.

Where each setting comes from, first match wins:

- user: explicit argument (CLI ``--user``) > ``KPFDBUSER`` > ``PGUSER`` > libpq's default
- database: explicit argument (``--dbname``) > ``KPFDBNAME`` > ``PGDATABASE`` > libpq's default
- host, port: explicit argument > ``PGHOST``/``PGPORT`` > libpq's default

The password is never an argument: libpq reads it from ``PGPASSFILE`` or ``~/.pgpass``.
Logs and error messages show :func:`describe`, which has no password in it (a libpq URI
given as the database name, ``postgresql://user:secret@host/db``, is shown with ``***``).

Every session waits at most :data:`LOCK_TIMEOUT_S` for a lock and :data:`STATEMENT_TIMEOUT_S`
for a statement, and TCP keepalives notice a server that went away; ``PGOPTIONS``
(``-c lock_timeout=5s``) changes the limits, its settings winning.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg2

from kpfmasters.db.errors import ConnectError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
# Time limits of every session (seconds): another session's lock, a statement.
LOCK_TIMEOUT_S = 60
STATEMENT_TIMEOUT_S = 600
# TCP keepalives: a dead server or link is noticed after about idle + interval * count s.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@dataclass(frozen=True)
class Settings:
    """Resolved connection settings; ``None`` leaves the value to libpq's defaults."""

    host: str | None = None
    port: str | None = None
    user: str | None = None
    dbname: str | None = None

    def libpq_kwargs(self) -> dict[str, str]:
        """Keyword arguments for :func:`psycopg2.connect` (no password, ever)."""
        fields = {"host": self.host, "port": self.port, "user": self.user, "dbname": self.dbname}
        return {key: value for key, value in fields.items() if value}


def _first(*values: str | None) -> str | None:
    for value in values:
        if value:
            return value
    return None


def resolve_settings(
    host: str | None = None,
    port: str | int | None = None,
    user: str | None = None,
    dbname: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Apply the precedence of the module docstring to explicit values and ``environ``."""
    env = os.environ if environ is None else environ
    return Settings(
        host=_first(host, env.get("PGHOST")),
        port=_first(str(port) if port else None, env.get("PGPORT")),
        user=_first(user, env.get("KPFDBUSER"), env.get("PGUSER")),
        dbname=_first(dbname, env.get("KPFDBNAME"), env.get("PGDATABASE")),
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


_URI_PASSWORD_RE = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with passwords blanked: in libpq URIs (``user:***@``) and ``password=***``."""
    text = _URI_PASSWORD_RE.sub(r"\1***@", text)
    return _PASSWORD_RE.sub(r"\1***", text)


def describe(settings: Settings) -> str:
    """``host=... port=... user=... dbname=...`` as libpq will use them; no password."""
    user = settings.user or _os_user()
    return redact(
        f"host={settings.host or '(local socket)'} port={settings.port or 5432} "
        f"user={user} dbname={settings.dbname or user}"
    )


def session_options(environ: Mapping[str, str]) -> str:
    """libpq ``options``: the time limits, then ``PGOPTIONS`` (whose settings win)."""
    ours = f"-c lock_timeout={LOCK_TIMEOUT_S}s -c statement_timeout={STATEMENT_TIMEOUT_S}s"
    theirs = environ.get("PGOPTIONS", "")
    return f"{ours} {theirs}".strip()


def pg_reason(exc: Exception) -> str:
    """A server error on one line, saying what it means when it is a time limit or a lost
    server; never a password."""
    import psycopg2.errors

    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    # the server's own words, without the statement's text (LINE 9: FROM calfiles ^)
    text = redact(" ".join((primary or str(exc)).split()))
    if isinstance(exc, psycopg2.errors.LockNotAvailable):
        text += " (another session holds a lock this needs; lock_timeout reached)"
    elif isinstance(exc, psycopg2.errors.QueryCanceled) and "statement timeout" in text:
        text += " (statement_timeout reached)"
    elif "server closed the connection" in text or "terminating connection" in text:
        text += " (the server went away: stopped, restarted or unreachable)"
    return text


def passfile_in_use(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("PGPASSFILE") or os.path.join(os.path.expanduser("~"), ".pgpass")


_PASSWORD_RE = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)


def _reason(exc: Exception, environ: Mapping[str, str]) -> str:
    """libpq's message on one line, with anything password-like blanked out."""
    text = redact(" ".join(str(exc).split()))
    secret = environ.get("PGPASSWORD")
    if secret:
        text = text.replace(secret, "***")
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        text += f" (the password comes from {passfile_in_use(environ)})"
    elif "is the server running" not in lowered and (
        "connection refused" in lowered or "no such file or directory" in lowered
    ):
        text += " (is the server running?)"
    return text


def connect(
    host: str | None = None,
    port: str | int | None = None,
    user: str | None = None,
    dbname: str | None = None,
    environ: Mapping[str, str] | None = None,
):
    """Open a psycopg2 connection; raise :class:`ConnectError` naming where it tried."""
    env = os.environ if environ is None else environ
    settings = resolve_settings(host, port, user, dbname, env)
    where = describe(settings)
    log.info("connecting to PostgreSQL: %s", where)
    kwargs = settings.libpq_kwargs()
    if environ is not None and "PGPASSFILE" in environ:
        kwargs["passfile"] = environ["PGPASSFILE"]
    try:
        conn = psycopg2.connect(
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="kpfmasters",
            options=session_options(env),
            **KEEPALIVES,
            **kwargs,
        )
    except psycopg2.Error as exc:
        raise ConnectError(f"cannot connect to PostgreSQL ({where}): {_reason(exc, env)}") from None
    return conn
