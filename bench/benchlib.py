"""Helpers shared by the benchmarks: warm page cache, measured child processes, machine facts."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 2**20


def warm_cache(paths: list[Path]) -> None:
    """Read every input once so that timed runs start from a warm page cache."""
    chunk = bytearray(8 * MiB)
    view = memoryview(chunk)
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(view):
                pass


def kpf_command() -> list[str]:
    exe = shutil.which("kpfmasters")
    return [exe] if exe else [sys.executable, "-m", "kpfmasters.cli"]


# Runs one command and writes "wall cpu maxrss_kib exit_code" to argv[1]. A small process of
# its own forks the command: a child's ru_maxrss starts from the peak RSS of the process it
# was forked from (Linux carries it over exec), so forking from this script, which loads
# the outputs to compare them, would inflate every peer's figure.
MEASURE = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as out:
    cpu = usage.ru_utime + usage.ru_stime
    out.write(f"{wall} {cpu} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_once(cmd: list[str], env: dict, timeout: float) -> tuple[float, float, float, str]:
    """(wall s, CPU s (user + system), peak RSS bytes, error text or '') of one command."""
    with tempfile.TemporaryDirectory(prefix="kpf-bench-") as tmp:
        report = Path(tmp) / "rusage"
        with open(Path(tmp) / "log", "w+b") as log:
            wrapper = [sys.executable, "-I", "-S", "-c", MEASURE, str(report), *cmd]
            proc = subprocess.Popen(
                wrapper, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                proc.wait(timeout=timeout)
            except BaseException as exc:  # timeout or interrupted: stop the whole group
                os.killpg(proc.pid, 9)
                proc.wait()
                if isinstance(exc, subprocess.TimeoutExpired):
                    return timeout, 0.0, 0.0, f"timeout after {timeout:.0f} s"
                raise
            log.seek(0)
            output = log.read().decode(errors="replace")
        try:
            wall, cpu, maxrss, code = report.read_text().split()
        except (OSError, ValueError):
            return 0.0, 0.0, 0.0, f"no measurement: {output.strip()[-300:]}"
    error = "" if int(code) == 0 else f"exit {code}: {output.strip()[-300:]}"
    return float(wall), float(cpu), float(maxrss) * 1024.0, error


def machine_details() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in ("numpy", "numba", "astropy", "scipy", "ccdproc"):
        try:
            module = __import__(name)
            versions.append(f"{name} {module.__version__}")
        except ImportError:
            versions.append(f"{name} missing")
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = "?"
    return [
        f"- CPU: {cpu}, {cores} cores usable; RAM {ram:.1f} GiB; {platform.platform()}",
        f"- Python {platform.python_version()}; {', '.join(versions)}; kpf-masters at {commit}",
        f"- load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(the machine is shared; other jobs may have run during the benchmark)",
    ]
