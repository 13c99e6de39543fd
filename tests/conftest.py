"""Shared fixtures. Heavier fixtures (PostgreSQL, SLURM) live in their own modules."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# numba's on-disk cache must be writable and private to the test run.
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".pytest_cache" / "numba"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def base_config() -> dict:
    """The repository's config.yaml, validated and normalised, with tmp-free dummy paths."""
    from kpfmasters.config import load_config

    return load_config(
        overrides={
            "date": "20230606",
            "l0_root": "/nonexistent/L0",
            "work_root": "/nonexistent/work",
            "masters_root": "/nonexistent/masters",
            "order_mask": "/nonexistent/mask.fits",
        }
    )


from pgserver import pg_server  # noqa: E402, F401  (session fixture: a throw-away PostgreSQL)
