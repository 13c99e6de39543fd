"""A throw-away single-node SLURM cluster on localhost, for the tests.

``SlurmCluster(workdir)`` starts Debian's ``munged``, ``slurmctld`` and ``slurmd`` by hand (no
systemd), each in the foreground as a child process whose PID it keeps, and stops them by
PID on exit::

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env(), check=True)

Everything lives under ``workdir`` except munge's files, which go to a directory of their own
under the system temporary directory: munged runs as the ``munge`` user and must reach them,
and pytest's temporary directories are private to their owner.

How it differs from a production cluster, and why:

* No accounting (no slurmdbd, so no ``sacct``): Snakemake's SLURM plugin must check job status
  with ``squeue``, which only sees jobs that finished less than ``MinJobAge`` seconds ago;
  ``MinJobAge`` is therefore 3600 s: a loaded machine can stretch the run past minutes.
* No cgroups: ``proctrack/linuxproc``, ``task/none``, ``jobacct_gather/none``.
* The node is called ``localhost`` (``slurmd -N localhost``) whatever the host's name, with
  ``SlurmdParameters=config_overrides`` so that its declared CPUs and memory are used as
  they are rather than draining the node when they differ from the hardware.
* ``SelectType=select/cons_tres`` with ``CR_CPU_Memory`` and ``DefMemPerCPU``, so jobs share
  the node by CPU and memory (without ``DefMemPerCPU`` a job with no memory request takes the
  whole node, and jobs run one at a time).
* Ports are free ports picked at start, the munge socket is private (``AuthInfo=socket=``):
  two clusters on one machine do not see each other.
* ``slurmd`` runs in a private mount namespace where the cluster's configuration directory is
  bind-mounted over ``/etc/slurm``: the Snakemake job step (``snakemake-executor-plugin-slurm-
  jobstep``) drops every ``SLURM_*`` variable, ``SLURM_CONF`` included, before its ``srun``,
  which then reads SLURM's default ``/etc/slurm/slurm.conf``. Jobs inherit slurmd's namespace,
  so they find this cluster's configuration there while the host's ``/etc/slurm`` is left
  alone. It needs root, as slurmd and munged as another user do anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "munge", "unmunge", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
PACKAGES = "slurmctld slurmd slurm-client munge"


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the test cluster; ``str()`` says why (a skip reason)."""


class SlurmStartError(RuntimeError):
    """The cluster was set up but did not come up; the message has the daemons' log tails."""


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    missing = [c for c in DAEMONS + CLIENTS + ("unshare", "mount") if not _which(c)]
    if missing:
        return f"missing {' '.join(missing)} (Debian packages: {PACKAGES})"
    if os.geteuid() != 0:
        return "needs root (slurmd, munged as the munge user, a private mount namespace)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (Debian package munge)"
    if not Path("/etc/slurm").is_dir() and not _can_mkdir("/etc/slurm"):
        return "no /etc/slurm directory to bind-mount the cluster's configuration over"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot create a mount namespace (unshare --mount): {probe.stderr.strip()}"
    return None


def _which(cmd: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return shutil.which(cmd, path=path)


def _can_mkdir(path: str) -> bool:
    try:
        os.mkdir(path, 0o755)
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: none)"
    return f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:])


class SlurmCluster:
    """A single-node SLURM cluster (``localhost``, partition ``debug``) living in ``workdir``.

    ``cpus`` and ``real_memory_mb`` are the node's declared size (default: at least 2 CPUs,
    90 % of the machine's memory); ``def_mem_per_cpu`` is the memory (MiB) a job that asks
    for none gets per CPU. ``env()`` gives the environment for SLURM's client commands.
    """

    partition = "debug"
    node = "localhost"

    def __init__(
        self,
        workdir: str | Path,
        *,
        cpus: int | None = None,
        real_memory_mb: int | None = None,
        def_mem_per_cpu: int = 1024,
        min_job_age: int = 3600,
        start_timeout: float = 60.0,
    ):
        self.workdir = Path(workdir).resolve()
        self.cpus = cpus or max(2, os.cpu_count() or 2)
        self.real_memory_mb = real_memory_mb or max(4096, int(_mem_total_mb() * 0.9))
        self.def_mem_per_cpu = def_mem_per_cpu
        self.min_job_age = min_job_age
        self.start_timeout = start_timeout
        self.etc = self.workdir / "etc"
        self.conf = self.etc / "slurm.conf"
        self.logdir = self.workdir / "log"
        self.munge_dir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self._ns_inode: int | None = None

    # -- public -------------------------------------------------------------------------

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: this process's environment) with what SLURM's clients need."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        for var in list(env):  # settings of some other cluster must not leak in
            if var.startswith(("SBATCH_", "SRUN_", "SQUEUE_", "SALLOC_")):
                del env[var]
        if "/usr/sbin" not in env.get("PATH", "").split(os.pathsep):
            env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin"
        return env

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(
            list(cmd), env=self.env(), capture_output=True, text=True, check=check, timeout=timeout
        )

    def logs(self, lines: int = 25) -> str:
        """Tails of the daemons' logs (for failure messages)."""
        files = sorted(self.logdir.glob("*.log"))
        if self.munge_dir:
            files.append(self.munge_dir / "munged.log")
        return "\n".join(_tail(p, lines) for p in files)

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- start --------------------------------------------------------------------------

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        try:
            self._prepare()
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_node_idle()
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        for d in (self.etc, self.logdir, self.workdir / "state", self.workdir / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        # munged (as `munge`) must reach its key and socket: a directory of its own,
        # world-traversable (munged insists), not writable by anyone else.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="kpf-munge-"))
        munge = pwd.getpwnam("munge")
        os.chmod(self.munge_dir, 0o755)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        key = self.munge_dir / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        self.munge_socket = self.munge_dir / "munge.socket"
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        self.conf.write_text(self.slurm_conf())
        (self.etc / "cgroup.conf").write_text(
            "# No cgroups are used: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,\n"
            "# JobAcctGatherType=jobacct_gather/none. slurmd still loads a cgroup plugin at\n"
            "# start; the default (autodetect) works on cgroup v1 and v2 hosts.\n"
        )

    def slurm_conf(self) -> str:
        w, mem = self.workdir, self.real_memory_mb
        return f"""\
# Written by tests/slurm_cluster.py: a throw-away single-node cluster.
ClusterName=kpftest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd.pid
SlurmctldLogFile={self.logdir}/slurmctld.log
SlurmdLogFile={self.logdir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU={self.def_mem_per_cpu}
MinJobAge={self.min_job_age}
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, cmd: list[str], **kwargs) -> subprocess.Popen:
        out = open(self.logdir / f"{name}.stderr", "ab")
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run reaches us, not the daemons
            env=self.env(),
            **kwargs,
        )
        out.close()
        self.procs[name] = proc
        return proc

    def _start_munged(self) -> None:
        m = self.munge_dir
        munge = pwd.getpwnam("munge")
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            user=munge.pw_uid,
            group=munge.pw_gid,
            extra_groups=[],
            cwd=str(m),
        )
        sock = str(self.munge_socket)

        def munge_ok() -> bool:
            cred = subprocess.run(["munge", "-S", sock, "-n"], capture_output=True)
            if cred.returncode != 0:
                return False
            back = subprocess.run(["unmunge", "-S", sock], input=cred.stdout, capture_output=True)
            return back.returncode == 0

        self._wait("munged answers", munge_ok, "munged")

    def _start_slurmctld(self) -> None:
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(
            "slurmctld answers",
            lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") > 0,
            "slurmctld",
        )

    def _start_slurmd(self) -> None:
        Path("/etc/slurm").mkdir(exist_ok=True)
        # unshare and sh both exec: the PID we keep is slurmd's.
        script = 'mount --bind "$1" /etc/slurm && exec "$2" -D -N "$3" -f "$4"'
        self._spawn(
            "slurmd",
            [
                _which("unshare"),
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(self.etc),
                _which("slurmd"),
                self.node,
                str(self.conf),
            ],
        )

    def _wait_node_idle(self) -> None:
        def idle() -> bool:
            out = self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout
            return out.strip().rstrip("*") == "idle"

        self._wait("node localhost idle", idle, "slurmd")
        self._ns_inode = _private_ns(self.procs["slurmd"].pid)
        if self._ns_inode is None:
            raise SlurmStartError("slurmd is not in a mount namespace of its own")

    def _wait(self, what: str, ok, daemon: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        proc = self.procs[daemon]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SlurmStartError(
                    f"{daemon} exited with {proc.returncode} before {what}\n{self.logs()}"
                )
            try:
                if ok():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.3)
        raise SlurmStartError(f"timed out after {self.start_timeout:.0f} s: {what}\n{self.logs()}")

    # -- stop ---------------------------------------------------------------------------

    def job_pids(self) -> list[int]:
        """PIDs in slurmd's mount namespace other than slurmd: slurmstepd and the jobs."""
        if self._ns_inode is None:
            return []
        slurmd = self.procs.get("slurmd")
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or (slurmd and int(entry) == slurmd.pid):
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == self._ns_inode:
                    pids.append(int(entry))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """Cancel the jobs, stop slurmd, slurmctld and munged by PID, remove munge's files."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--full", "--user", "root", check=False, timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass
        # Jobs still running (slurmstepd outlives slurmd) share slurmd's namespace: kill them
        # by PID along with slurmd. The namespace id is taken before slurmd goes.
        if self._ns_inode is None and self.procs.get("slurmd"):
            self._ns_inode = _private_ns(self.procs["slurmd"].pid)
        leftovers = self.job_pids()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is not None:
                _terminate(proc)
        for pid in leftovers + self.job_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None


def _private_ns(pid: int) -> int | None:
    """The mount namespace of ``pid`` when it is not ours (never the host's), else None."""
    try:
        ino = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        return None if ino == os.stat("/proc/self/ns/mnt").st_ino else ino
    except OSError:
        return None


def _terminate(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass
