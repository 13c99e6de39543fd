"""Running the real workflow from tests: a subprocess of Snakemake on a simulated night."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kpfmasters.workflow.pipeline import snakemake_argv

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Night:
    """Paths of one simulated set-up: L0 root, work root, masters root, order mask."""

    root: Path
    dates: list[str]
    extra_config: dict = field(default_factory=dict)

    @property
    def l0_root(self) -> Path:
        return self.root / "sim" / "L0"

    @property
    def order_mask(self) -> Path:
        return self.root / "sim" / "order_mask.fits"

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    @property
    def masters_root(self) -> Path:
        return self.root / "masters"

    def config(self, **extra) -> dict:
        cfg = {
            "l0_root": self.l0_root,
            "work_root": self.work_root,
            "masters_root": self.masters_root,
            "order_mask": self.order_mask,
        }
        if len(self.dates) == 1:
            cfg["date"] = self.dates[0]
        else:
            cfg["dates"] = ",".join(self.dates)
        return {**cfg, **self.extra_config, **extra}

    def master(self, date: str, kind: str) -> Path:
        return self.masters_root / date / f"kpf_{date}_master_{kind}.fits"


def snakemake(
    night: Night, *args: str, config: dict | None = None, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``snakemake --cores 2`` on the repository's Snakefile with ``night``'s paths."""
    cfg = night.config(**(config or {}))
    cmd = snakemake_argv(cfg, workdir=night.root, cores=2, extra=args)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stderr[-6000:]}"
        )
    return proc


_OUTPUT_RE = re.compile(r"^\s+output: (.+)$", re.M)


def dry_run_outputs(night: Night, *args: str, config: dict | None = None) -> list[str]:
    """Output files of every job a dry run would run, as names relative to their root."""
    proc = snakemake(night, "--dry-run", *args, config=config)
    out = []
    for match in _OUTPUT_RE.finditer(proc.stdout + proc.stderr):
        for path in match.group(1).split(", "):
            out.append(Path(path).name)
    return sorted(set(out))


def daily_cmd(night: Night, *extra: str, log_dir=None) -> list[str]:
    """``kpfmasters daily`` on ``night``'s one date and paths (log in ``root/logs``)."""
    cmd = [sys.executable, "-m", "kpfmasters.cli", "daily", "--date", night.dates[0]]
    for key, value in night.config().items():
        if key != "date":
            cmd += ["--set", f"{key}={value}"]
    return cmd + ["--log-dir", str(log_dir or night.root / "logs"), *extra]
