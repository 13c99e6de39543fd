"""Running the workflow as a child process (``kpfmasters daily`` and ``kpfmasters demo``)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from kpfmasters.core.config import PATH_KEYS, REPO_ROOT, checkout_root
from kpfmasters.core.errors import KPFMastersError

SNAKEFILE = REPO_ROOT / "Snakefile"


class PipelineError(KPFMastersError):
    """The workflow failed or could not start."""


class NightLocked(KPFMastersError):
    """Another run of the same night holds its lock."""


class Interrupted(KPFMastersError):
    """A signal (SIGTERM, SIGHUP, SIGINT) stopped the run; the exit status is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# Signals ``kpfmasters daily`` passes on to its workflow (and then exits on).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def snakemake_argv(
    config: dict,
    *,
    workdir: str | Path,
    profile: str | Path | None = None,
    cores: int | str | None = None,
    configfiles: list[str | Path] | tuple = (),
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The ``snakemake`` command line on this checkout's Snakefile.

    ``config`` becomes ``--config key=value`` items (flat values only: Snakemake reads nested
    ones as strings). ``configfiles`` replace the Snakefile's own ``config.yaml`` (Snakemake
    ignores the ``configfile:`` directive once ``--configfile`` is given), later files
    overriding earlier. Without a profile or ``cores``, all cores are used.
    """
    snakefile = checkout_root() / SNAKEFILE.name
    argv = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir)]
    if profile:
        argv += ["--profile", str(profile)]
    if cores:
        argv += ["--cores", str(cores)]
    elif not profile:
        argv += ["--cores", "all"]
    if configfiles:
        argv += ["--configfile", *(str(c) for c in configfiles)]
    if config:
        argv += ["--config", *(f"{k}={v}" for k, v in config.items())]
    return argv + list(extra)


def night_config(cfg: dict, date: str) -> dict:
    """``--config`` items for one night with ``cfg``'s (expanded) paths."""
    return {"date": date, **{k: cfg[k] for k in PATH_KEYS}}


def child_env() -> dict:
    """Environment of the workflow process: the checkout importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_snakemake(argv: list[str], log_handle=None) -> int:
    """Run the workflow; its output goes to ``log_handle`` (a file) or the terminal."""
    proc = subprocess.run(
        argv,
        stdout=log_handle,
        stderr=subprocess.STDOUT if log_handle else None,
        env=child_env(),
        check=False,
    )
    return proc.returncode


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_workflow(
    argv: list[str],
    log_handle,
    *,
    keep_fds: tuple[int, ...] = (),
    on_start=None,
    grace_s: float = 60.0,
) -> int:
    """Run the workflow in its own process group, passing signals on and waiting for it.

    SIGTERM, SIGHUP and SIGINT received meanwhile are sent to the whole group (Snakemake and
    its jobs), and the call waits until no process of the group is left (after ``grace_s``
    seconds, SIGKILL). It then raises :class:`Interrupted`. ``keep_fds`` (the night's lock)
    are inherited by Snakemake, so the lock stays held while any of the run lives, even if
    this process is killed outright. ``on_start(pid)`` is called with the child's pid (its
    process group id) once it runs.
    """
    received: list[int] = []
    proc = subprocess.Popen(
        argv,
        stdout=log_handle,
        stderr=subprocess.STDOUT,
        env=child_env(),
        start_new_session=True,
        pass_fds=keep_fds,
    )

    def forward(signum, _frame):
        received.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        if on_start is not None:
            on_start(proc.pid)
        rc = proc.wait()
        if received:
            deadline = time.monotonic() + grace_s
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
                while group_alive(proc.pid):
                    time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        name = signal.Signals(received[0]).name
        raise Interrupted(
            f"stopped by {name}: the workflow (process group {proc.pid}) was sent {name} and "
            "has ended; run again to finish the night",
            received[0],
        )
    return rc


def snakemake_locks(workdir: str | Path) -> list[Path]:
    """Snakemake's lock files under ``workdir`` (left behind when a run is killed)."""
    return sorted((Path(workdir) / ".snakemake" / "locks").glob("*.lock"))


def open_nofollow(path: str | Path, flags: int, mode: int = 0o644):
    """``open`` that refuses a symbolic link (or anything but a regular file) at ``path``.

    The lock files and the run log are created by the tool in shared directories: a link
    planted at their name must not make it truncate or append to the link's target.
    """
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KPFMastersError(
                f"{path} is a symbolic link; expected a regular file the tool creates "
                "(remove the link)"
            ) from None
        raise
    if not _is_regular(fd):
        os.close(fd)
        raise KPFMastersError(f"{path} is not a regular file")
    return fd


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def open_log(path: str | Path):
    """The run log ``path`` for appending, line-buffered (never through a symbolic link)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", buffering=1)


_CHILD_RE = re.compile(r"\bchild (\d+)\b")


def live_runs(locks_dir: str | Path) -> list[str]:
    """Night locks under ``locks_dir`` whose recorded workflow has a live process.

    Each ``kpfmasters daily`` records its workflow's pid (the process group id) in its night
    lock; a group with any process left means that run is still writing.
    """
    live = []
    for path in sorted(Path(locks_dir).glob("kpfmasters_*.lock")):
        try:
            fd = open_nofollow(path, os.O_RDONLY)
        except (OSError, KPFMastersError):
            continue
        with os.fdopen(fd) as handle:
            text = handle.read()
        match = _CHILD_RE.search(text)
        if match and group_alive(int(match.group(1))):
            live.append(f"{path.name} ({text.strip()})")
    return live


@contextmanager
def workflow_lock(work_root: str | Path, unlock_argv: list[str], log_handle=None):
    """Hold a shared lock on ``<work_root>/locks/workflow.lock`` while a run goes on.

    Every ``daily`` run of a work root takes it (and its workflow inherits it). A run that
    finds itself alone (it gets the lock exclusively) and finds no live workflow recorded in
    any night lock knows a Snakemake lock under ``work_root`` was left by a killed run, and
    removes it with ``unlock_argv`` (the run's own command line plus ``--unlock``), so a run
    killed by SIGKILL or a power cut does not block the next one. A Snakemake lock is never
    removed while any process of the run that made it is alive. Runs started by hand on the
    same work root should go through ``daily`` too (they do not take this lock).

    Yields the lock's file descriptor (for the workflow to inherit).
    """
    path = Path(work_root) / "locks" / "workflow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale = snakemake_locks(work_root)
            alive = live_runs(path.parent) if stale else []
            if stale and alive:
                if log_handle:
                    log_handle.write(
                        "keeping the Snakemake lock: a run is still alive: "
                        + ", ".join(alive)
                        + "\n"
                    )
            elif stale:
                if log_handle:
                    log_handle.write(
                        "removing a Snakemake lock left by a killed run: "
                        + ", ".join(p.name for p in stale)
                        + "\n"
                    )
                    log_handle.flush()
                run_snakemake([*unlock_argv, "--unlock"], log_handle)
            fcntl.flock(fd, fcntl.LOCK_SH)  # let other nights start
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class NightLock:
    """The held lock of one night: its file descriptor and what it says about the holder."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd
        self.since = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def record(self, child: int | None = None) -> None:
        """Write ``pid <daily> [child <workflow pid>] since <time>`` into the lock file."""
        text = f"pid {os.getpid()}" + (f" child {child}" if child else "") + f" since {self.since}"
        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.ftruncate(self.fd, 0)
            os.write(self.fd, text.encode())
        except OSError as exc:
            raise KPFMastersError(
                f"{self.path}: cannot write the night lock ({exc.strerror or exc})"
            ) from None


def lock_holder(path: Path) -> str:
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except (OSError, KPFMastersError):
        return "another process"
    with os.fdopen(fd) as handle:
        return handle.read().strip() or "another process"


def try_night_lock(lock_path: str | Path) -> int | None:
    """The night lock's descriptor held exclusively, or None when another run holds it."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def night_lock(lock_path: str | Path, date: str):
    """Hold an exclusive lock for ``date``; raise :class:`NightLocked` if another run has it.

    The lock is an ``flock`` on ``lock_path`` (never through a symbolic link), released by
    the kernel when the last process holding it ends: the workflow inherits it, so a run
    whose ``daily`` was killed outright still holds its night while its Snakemake lives.
    Yields a :class:`NightLock`.
    """
    lock_path = Path(lock_path)
    fd = try_night_lock(lock_path)
    if fd is None:
        raise NightLocked(
            f"night {date} is already being processed ({lock_holder(lock_path)}); "
            f"lock file {lock_path}"
        )
    lock = NightLock(lock_path, fd)
    try:
        lock.record()
        yield lock
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def wait_for_nights(
    locks_dir: str | Path, date: str, max_age_days: int | None, timeout_s: float, log_handle
) -> list[str]:
    """Wait for the runs of earlier nights within ``max_age_days`` of ``date`` that hold
    their lock (their masters may be this night's predecessors, and Snakemake removes a
    master while it rebuilds it). Only earlier nights are waited for, so two runs never wait
    for each other. Returns the nights still held after ``timeout_s`` (then the caller fails
    rather than build with a master missing)."""
    import datetime as dt

    def day(text: str) -> dt.date:
        return dt.datetime.strptime(text, "%Y%m%d").date()

    waiting = []
    for path in sorted(Path(locks_dir).glob("kpfmasters_*.lock")):
        other = path.stem[len("kpfmasters_") :]
        if not (other.isdigit() and len(other) == 8) or other >= date:
            continue
        if max_age_days is not None and (day(date) - day(other)).days > max_age_days:
            continue
        waiting.append((other, path))
    still = []
    deadline = time.monotonic() + timeout_s
    for other, path in waiting:
        announced = False
        while True:
            fd = try_night_lock(path)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                if announced and log_handle:
                    log_handle.write(f"night {other}'s run has ended; going on\n")
                break
            if not announced and log_handle:
                log_handle.write(
                    f"waiting for night {other}'s run ({lock_holder(path)}): its masters may "
                    "be this night's predecessors\n"
                )
                announced = True
            if time.monotonic() >= deadline:
                still.append(other)
                break
            time.sleep(0.5)
    return still


_RULE_ERROR_RE = re.compile(r"^Error in rule (\S+):$", re.M)
_LOCKED_MARKS = ("Directory cannot be locked", "--rerun-incomplete", "IncompleteFilesException")


def _job_cause(block: str) -> str:
    """The cause of one failed job: the last error line of its log (else Snakemake's)."""
    match = re.search(r"^\s+log: (\S+)", block, re.M)
    if match and Path(match.group(1)).is_file():
        lines = Path(match.group(1)).read_text(errors="replace").splitlines()
        errors = [ln for ln in lines if " ERROR " in ln]
        if errors:
            return errors[-1].split(": ", 1)[-1].strip()
        tail = [ln.strip() for ln in lines if ln.strip()]
        if tail:
            return tail[-1]
    match = re.search(r"^\s+message: (.+)$", block, re.M)
    return match.group(1).strip() if match else "see its log"


def workflow_failure(text: str, work_root: str | Path) -> str:
    """One line saying why a workflow run failed, from its output ``text``.

    Names the failing job (rule and wildcards) and its cause (the last error its log
    recorded); when another live run holds the work root, says so instead of Snakemake's
    advice (``--unlock``, ``--rerun-incomplete``), which would break that run.
    """
    if any(mark in text for mark in _LOCKED_MARKS):
        alive = live_runs(Path(work_root) / "locks")
        if alive:
            return (
                "another run is writing in the work root (" + ", ".join(alive) + "); "
                "run again once it has ended"
            )
    failed = []
    for match in _RULE_ERROR_RE.finditer(text):
        block_lines = []
        for line in text[match.end() :].splitlines()[1:]:
            if not line.startswith((" ", "\t")):
                break
            block_lines.append(line)
        block = "\n".join(block_lines)
        output = re.search(r"^\s+output: (.+)$", block, re.M)
        outputs = ", ".join(Path(p).name for p in output.group(1).split(", ")) if output else ""
        name = match.group(1) + (f" ({outputs})" if outputs else "")
        if not any(f[0] == name for f in failed):  # a retried job fails twice
            failed.append((name, _job_cause(block)))
    if failed:
        first = f"job {failed[0][0]} failed: {failed[0][1]}"
        if len(failed) > 1:
            first += f"; and {len(failed) - 1} more failed job(s): " + ", ".join(
                f[0] for f in failed[1:]
            )
        return first
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        match = re.match(r"^(\w*(?:Error|Exception)) in rule (\S+) in file .*:$", ln)
        if match and i + 1 < len(lines):
            return f"job {match.group(2)} failed: {lines[i + 1]}"
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i]
        if re.match(r"^\w*(?:Error|Exception)\b", ln):
            detail = lines[i + 1] if ln.endswith(":") and i + 1 < len(lines) else ""
            return f"snakemake: {ln} {detail}".strip()
    return ""
