"""A ``sitecustomize`` that pauses the process writing one product, half written, until a
release file appears (or 600 s pass): runs are stopped or raced mid-write deterministically.

Active only with ``KPFM_TEST_PAUSE_WRITE`` (the product's file name) set; the paused pid is
written to ``KPFM_TEST_PAUSE_MARK``; ``KPFM_TEST_PAUSE_RELEASE`` names the release file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

HOOK = """
import os

_TARGET = os.environ.get("KPFM_TEST_PAUSE_WRITE")
if _TARGET:
    import time

    from astropy.io.fits.hdu import base as _base

    _write = _base._BaseHDU._writeto
    _written = [0]

    def _paused_writeto(self, fileobj, *args, **kwargs):
        result = _write(self, fileobj, *args, **kwargs)
        name = os.path.basename(str(getattr(fileobj, "name", "")))
        if name.startswith("." + _TARGET + ".tmp-"):
            _written[0] += 1
            if _written[0] == 2:
                fileobj.flush()
                with open(os.environ["KPFM_TEST_PAUSE_MARK"], "w") as mark:
                    mark.write(str(os.getpid()))
                release = os.environ.get("KPFM_TEST_PAUSE_RELEASE", "")
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline and not (release and os.path.exists(release)):
                    time.sleep(0.05)
        return result

    _base._BaseHDU._writeto = _paused_writeto
"""


def install(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


def paused_env(hook: Path, repo: Path, product: Path, mark: Path, release: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "KPFDB"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(hook), str(repo)]),
        KPFM_TEST_PAUSE_WRITE=product.name,
        KPFM_TEST_PAUSE_MARK=str(mark),
        KPFM_TEST_PAUSE_RELEASE=str(release),
    )
    return env


def wait_for_pause(mark: Path, proc, timeout: float = 180) -> int:
    """Pid of the writer once it has paused mid-write."""
    deadline = time.monotonic() + timeout
    while not (mark.is_file() and mark.read_text().strip()):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended ({proc.returncode}) before the write paused:\n{err}")
        assert time.monotonic() < deadline, "the writer never paused"
        time.sleep(0.05)
    return int(mark.read_text())
