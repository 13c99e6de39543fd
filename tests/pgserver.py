"""pytest fixture: a throw-away PostgreSQL server (see :mod:`kpfmasters.workflow.throwaway_pg`)."""

from __future__ import annotations

import pytest

from kpfmasters.workflow.throwaway_pg import PgServer, unavailable_reason

__all__ = ["PgServer", "pg_server", "unavailable_reason"]


@pytest.fixture(scope="session")
def pg_server():
    """One throw-away server per pytest (xdist worker) session; skips without binaries."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PgServer() as server:
        yield server
