"""Shared fixtures. Heavier fixtures (PostgreSQL, SLURM) live in their own modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# numba's on-disk cache must be writable and private to the test run.
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".pytest_cache" / "numba"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def base_config() -> dict:
    """The repository's config.yaml, validated and normalised, with tmp-free dummy paths."""
    from kpfmasters.core.config import load_config

    return load_config(
        overrides={
            "date": "20230606",
            "l0_root": "/nonexistent/L0",
            "work_root": "/nonexistent/work",
            "masters_root": "/nonexistent/masters",
            "order_mask": "/nonexistent/mask.fits",
        }
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Make ``--dist loadgroup`` group again under pytest 9 (xdist 3.8 sets ``item._nodeid``,
    which pytest 9 no longer reads): without the ``@group`` suffix every test was its own work
    unit, so a module's tests (and its module-scoped Snakemake fixture) ran on every worker."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest < 9: xdist's own suffix works
        return
    for item in items:
        marks = item.iter_markers("xdist_group")
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        )
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


from tests.pgserver import pg_server  # noqa: E402, F401  (session fixture: a throw-away PostgreSQL)
