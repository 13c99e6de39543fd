"""Running the workflow as a child process (``kpfmasters daily`` and ``kpfmasters demo``)."""

from __future__ import annotations

import fcntl
import os
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


def snakemake_locks(workdir: str | Path) -> list[Path]:
    """Snakemake's lock files under ``workdir`` (left behind when a run is killed)."""
    return sorted((Path(workdir) / ".snakemake" / "locks").glob("*.lock"))


@contextmanager
def workflow_lock(work_root: str | Path, unlock_argv: list[str], log_handle=None):
    """Hold a shared lock on ``<work_root>/locks/workflow.lock`` while a run goes on.

    Every ``daily`` run of a work root takes it. A run that finds itself alone (it gets the
    lock exclusively) knows any Snakemake lock under ``work_root`` was left by a killed run,
    and removes it with ``unlock_argv`` (the run's own command line plus ``--unlock``), so a
    run killed by SIGKILL or a power cut does not block the next one. Runs started by hand
    on the same work root should go through ``daily`` too (they do not take this lock).
    """
    path = Path(work_root) / "locks" / "workflow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale = snakemake_locks(work_root)
            if stale:
                if log_handle:
                    log_handle.write(
                        "removing a Snakemake lock left by a killed run: "
                        + ", ".join(p.name for p in stale)
                        + "\n"
                    )
                    log_handle.flush()
                run_snakemake([*unlock_argv, "--unlock"], log_handle)
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # let other nights start
        except BlockingIOError:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        yield path
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


@contextmanager
def night_lock(lock_path: str | Path, date: str):
    """Hold an exclusive lock for ``date``; raise :class:`NightLocked` if another run has it.

    The lock is an ``flock`` on ``lock_path``, released by the kernel when the process ends,
    so a killed run never leaves a stale lock behind.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise NightLocked(
            f"night {date} is already being processed ({holder}); lock file {lock_path}"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
        handle.flush()
        yield lock_path
    finally:
        handle.seek(0)
        handle.truncate()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
