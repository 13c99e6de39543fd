"""Exceptions with messages that name the file, the keyword or extension, and what was expected."""

from __future__ import annotations

from pathlib import Path


class KPFMastersError(Exception):
    """Base class of every error kpf-masters raises on purpose."""


class InputError(KPFMastersError):
    """An input file is unusable.

    The message always starts with the file's path, then says which part (keyword or
    extension) is wrong and what was expected.

    Parameters
    ----------
    path : str or Path
        The file (kept as ``self.path``, a str).
    problem : str
        What is wrong and what was expected (kept as ``self.problem``).
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(KPFMastersError):
    """The configuration is invalid; the message names the key."""


class NoPredecessorError(KPFMastersError):
    """No usable predecessor master (bias, dark or flat) could be found."""
