"""Running HEASARC's ``fitsverify`` (Debian package ``fitsverify``) on a product."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

FITSVERIFY = shutil.which("fitsverify")
needs_fitsverify = pytest.mark.skipif(
    FITSVERIFY is None,
    reason="fitsverify is not installed (Debian package fitsverify; .ci/run installs it)",
)
_SUMMARY = re.compile(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)")


def fitsverify(path: str | Path) -> tuple[int, int, str]:
    """(warnings, errors, full report) of ``fitsverify`` on ``path``; checksums included."""
    proc = subprocess.run([FITSVERIFY, str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    match = _SUMMARY.search(report)
    assert match, f"no summary line in fitsverify's report on {path}:\n{report}"
    return int(match.group(1)), int(match.group(2)), report


def assert_verified(path: str | Path) -> None:
    warnings, errors, report = fitsverify(path)
    assert (warnings, errors) == (0, 0), f"{path}:\n{report[-3000:]}"
