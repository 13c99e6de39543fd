"""A throw-away PostgreSQL server for the tests and for ``make demo``.

The server runs from the machine's own binaries (``/usr/lib/postgresql/*/bin`` or ``PATH``),
listens on 127.0.0.1 only, on a free port, with its data directory and unix socket in a fresh
temporary directory. The admin role has a random password that only a temporary pgpass file
(``PGPASSFILE``) knows, so clients go through libpq's password path as in production.

PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the ``postgres``
system user (``runuser``), which owns the temporary directory.

Python use::

    with PgServer() as server:
        env = server.env          # PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSFILE
        server.create_user("apollo", "secret")   # a login role, added to the pgpass file

The tests use it through the pytest fixture in ``tests/pgserver.py``; ``kpfmasters demo``
registers its night in one.

Command line: ``python -m kpfmasters.workflow.throwaway_pg [--dir DIR] -- COMMAND ...`` runs COMMAND
with the server's ``PG*`` variables set, then stops the server.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("kpfmasters.workflow.throwaway_pg")

PROGRAMS = ("initdb", "pg_ctl", "postgres")
SYSTEM_USER = "postgres"
ADMIN_USER = "kpfadmin"
DEFAULT_DBNAME = "kpfopsdb"
HOST = "127.0.0.1"


class PgServerError(RuntimeError):
    """The throw-away server could not be started; the message includes its log's tail."""


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding initdb, pg_ctl and postgres, else
    the directory of ``initdb`` on ``PATH`` when it has all three, else None."""

    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for cand in candidates:
        if all(os.access(Path(cand) / prog, os.X_OK) for prog in PROGRAMS):
            return Path(cand)
    return None


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None when one can."""
    if find_bindir() is None:
        return (
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in "
            "/usr/lib/postgresql/*/bin or on PATH; install the Debian package 'postgresql'"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root but there is no '{SYSTEM_USER}' system user to run it"
        if shutil.which("runuser") is None and shutil.which("su") is None:
            return "running as root but neither runuser nor su exists"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class PgServer:
    """Start (``with`` or :meth:`start`) and stop (:meth:`stop`) a private PostgreSQL server.

    ``base_dir`` is where the temporary directory is made (the system temp dir by default;
    as root, a base the ``postgres`` user cannot traverse falls back to the system temp dir).
    """

    def __init__(self, base_dir: str | Path | None = None, dbname: str = DEFAULT_DBNAME):
        self.base_dir = Path(base_dir) if base_dir else None
        self.dbname = dbname
        self.user = ADMIN_USER
        self.password = secrets.token_urlsafe(18)
        self.host = HOST
        self.port: int | None = None
        self.dir: Path | None = None
        self.bindir = find_bindir()
        self.as_root = os.geteuid() == 0
        self.startup_seconds: float | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def logfile(self) -> Path:
        return self.dir / "server.log"

    @property
    def pgpass(self) -> Path:
        return self.dir / "pgpass"

    @property
    def env(self) -> dict[str, str]:
        """libpq variables that reach the server as the admin role through the pgpass file."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGPASSFILE": str(self.pgpass),
        }

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> PgServer:
        reason = unavailable_reason()
        if reason:
            raise PgServerError(reason)
        began = time.monotonic()
        self.dir = self._make_dir()
        try:
            self._initdb()
            self._start_with_free_port()
            self._write_pgpass()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        log.info(
            "PostgreSQL test server on %s:%s (dir %s) up in %.1f s",
            self.host,
            self.port,
            self.dir,
            self.startup_seconds,
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; safe to call twice."""
        if self.dir is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            pg_ctl = str(self.bindir / "pg_ctl")
            self._run([pg_ctl, "-D", str(self.datadir), "-m", "fast", "-w", "stop"], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    # -- helpers ---------------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a server program, as the postgres user when we are root."""
        program = Path(argv[0]).name
        if self.as_root:
            if shutil.which("runuser"):
                argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
            else:
                argv = ["su", SYSTEM_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise PgServerError(
                f"{program} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def _make_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="kpfpg-", dir=self.base_dir))
        if not self.as_root:
            return path
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        if self._run(["test", "-x", str(path)], check=False).returncode == 0:
            return path
        # An ancestor (e.g. /root) is closed to the postgres user: use the system temp dir.
        shutil.rmtree(path, ignore_errors=True)
        if self.base_dir is None:
            raise PgServerError(f"the {SYSTEM_USER} user cannot reach {path}")
        log.info("%s cannot traverse %s; using the system temp dir", SYSTEM_USER, self.base_dir)
        self.base_dir = None
        return self._make_dir()

    def _initdb(self) -> None:
        pwfile = self.dir / "pwfile"
        self._write_owned(pwfile, self.password + "\n")
        try:
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _configure(self, port: int) -> None:
        settings = {
            "listen_addresses": f"'{HOST}'",
            "port": str(port),
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "40",
            "shared_buffers": "16MB",
        }
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        # postgresql.auto.conf wins over postgresql.conf; rewritten on each try.
        self._write_owned(self.datadir / "postgresql.auto.conf", lines)

    def _write_owned(self, path: Path, text: str) -> None:
        """Write ``path`` (mode 0600), owned by the postgres user when we are root."""
        path.write_text(text)
        if self.as_root:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o600)

    def _start_with_free_port(self, tries: int = 5) -> None:
        for attempt in range(tries):
            port = free_port()
            self._configure(port)
            proc = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                check=False,
            )
            if proc.returncode == 0:
                self.port = port
                return
            tail = self._log_tail()
            if "could not bind" not in tail and "in use" not in tail:
                raise PgServerError(f"pg_ctl start failed ({proc.returncode}): {tail}")
            log.info("port %s was taken (try %d); trying another", port, attempt + 1)
        raise PgServerError(f"no free port after {tries} tries: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"

    def _write_pgpass(self) -> None:
        self.pgpass.touch(mode=0o600)
        self.pgpass.chmod(0o600)
        self.add_pgpass_entry(self.user, self.password)

    def add_pgpass_entry(self, user: str, password: str) -> None:
        """Append ``host:port:*:user:password`` to this server's pgpass file."""

        def esc(text: str) -> str:
            return text.replace("\\", "\\\\").replace(":", "\\:")

        with open(self.pgpass, "a") as handle:
            handle.write(f"{self.host}:{self.port}:*:{esc(user)}:{esc(password)}\n")

    def connect(self, dbname: str | None = None, user: str | None = None):
        """A psycopg2 connection (autocommit) as ``user`` (the admin by default)."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=user or self.user,
            dbname=dbname or self.dbname,
            passfile=str(self.pgpass),
        )
        conn.autocommit = True
        return conn

    def _create_database(self) -> None:
        self.create_database(self.dbname, dbname="postgres")

    def create_database(self, name: str, dbname: str = "postgres") -> None:
        """``CREATE DATABASE name`` (a fresh, empty database)."""
        from psycopg2 import sql

        with contextlib.closing(self.connect(dbname=dbname)) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def create_user(self, name: str, password: str | None = None) -> str:
        """Create a login role and add it to the pgpass file; returns its password."""
        from psycopg2 import sql

        password = password or secrets.token_urlsafe(18)
        with contextlib.closing(self.connect(dbname="postgres")) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
                (password,),
            )
        self.add_pgpass_entry(name, password)
        return password


# -- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run COMMAND with a throw-away PostgreSQL server (PG* variables set)."
    )
    parser.add_argument("--dir", help="base directory for the server's temporary directory")
    parser.add_argument("--dbname", default=DEFAULT_DBNAME)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reason = unavailable_reason()
    if reason:
        print(f"pgserver: {reason}", file=sys.stderr)
        return 1
    with PgServer(args.dir, dbname=args.dbname) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
        env.update(server.env)
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
