"""One transaction on a psycopg2 connection, whatever its autocommit setting."""

from __future__ import annotations

from contextlib import contextmanager

import psycopg2


@contextmanager
def transaction(conn):
    """Commit the block on success, roll it back on any exception.

    A connection in autocommit mode is switched out of it for the block and back after.
    When the connection is gone (the server died), the rollback cannot run: the block's own
    error propagates, saying why, not "connection already closed".

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
        yield conn
        conn.commit()
    except BaseException:
        try:
            conn.rollback()
        except psycopg2.Error:
            pass  # the connection is gone; the error raised says why
        raise
    finally:
        if autocommit and not conn.closed:
            try:
                conn.autocommit = True
            except psycopg2.Error:
                pass
