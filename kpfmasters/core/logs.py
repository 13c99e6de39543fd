"""Logging set-up for the thin Snakemake scripts: everything goes to the rule's log file."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def script_logging(log_path: str | Path | None, name: str = "kpfmasters"):
    """Send log records of ``kpfmasters.*`` to ``log_path`` (and stderr) for one job.

    An exception escaping the block is logged with its message before it propagates, so the
    rule's log file says why the job failed. A known error
    (:class:`~kpfmasters.core.errors.KPFMastersError`: bad input, no database) ends the job
    with status 1 and that one line, no traceback. The handlers are removed when the block ends.

    Parameters
    ----------
    log_path : str, Path or None
        The rule's log file, overwritten (its directory is made); None logs to stderr only.
    name : str
        Name of the logger yielded.

    Yields
    ------
    logging.Logger
        The logger ``name``, at level INFO under ``kpfmasters``.
    """
    from kpfmasters.core.errors import KPFMastersError

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    root = logging.getLogger("kpfmasters")
    root.setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    log = logging.getLogger(name)
    try:
        yield log
    except KPFMastersError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    except Exception as exc:
        log.error("%s", exc)
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
