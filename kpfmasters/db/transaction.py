"""One transaction on a psycopg2 connection, whatever its autocommit setting."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def transaction(conn):
    """Commit the block on success, roll it back on any exception.

    A connection in autocommit mode is switched out of it for the block and back after.

    Parameters
    ----------
    conn : psycopg2 connection
        The connection.

    Yields
    ------
    psycopg2 connection
        ``conn``, inside the transaction.
    """
    autocommit = conn.autocommit
    if autocommit:
        conn.autocommit = False
    try:
        with conn:
            yield conn
    finally:
        if autocommit:
            conn.autocommit = True
