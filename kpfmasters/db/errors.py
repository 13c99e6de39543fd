"""Errors of the calibration-database layer: one line, naming the server or the file."""

from __future__ import annotations

from kpfmasters.core.errors import KPFMastersError


class DatabaseError(KPFMastersError):
    """A database operation failed; the message says which one and the server's reason."""


class ConnectError(DatabaseError):
    """No connection: the message names host, port, user and database, never a password."""


class SchemaError(DatabaseError):
    """The database has no ``calfiles`` schema, or one of another version."""


class NightError(KPFMastersError):
    """A night (``YYYYMMDD``) argument is not a valid date."""
