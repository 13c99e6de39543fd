"""File identity: what tells one version of a file from another."""

from __future__ import annotations

import os


def file_identity(stat: os.stat_result) -> list[int]:
    """[size, mtime_ns, ctime_ns, inode] of ``stat``: a rewrite, a rename over the file or
    a chmod gives another identity.

    Parameters
    ----------
    stat : os.stat_result
        The file's status.

    Returns
    -------
    list of int
        Size (bytes), modification and change times (ns) and inode number.
    """
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
