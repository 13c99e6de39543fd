"""The ``kpfmasters`` command line: one sub-command a module in :mod:`kpfmasters.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Errors raised on purpose (:class:`~kpfmasters.core.errors.KPFMastersError`)
print one line naming the problem and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from kpfmasters import __version__
from kpfmasters.core.errors import KPFMastersError

# name -> module under kpfmasters.commands
COMMANDS = {
    "simulate": "simulate",
    "l0to2d": "l0to2d",
    "select": "select",
    "stack": "stack",
    "db": "db",
    "daily": "daily",
    "rejects": "rejects",
    "demo": "demo",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that sub-command's module is imported (fast start)."""
    parser = argparse.ArgumentParser(
        prog="kpfmasters", description="KPF master calibration files: bias, dark, flat, arclamp."
    )
    parser.add_argument("--version", action="version", version=f"kpfmasters {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, modname in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see kpfmasters {name} --help)")
            continue
        try:
            module = importlib.import_module(f"kpfmasters.commands.{modname}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kpfmasters.commands.{modname}":
                raise
            continue
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (``kpfmasters select ... | head``): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KPFMastersError as exc:
        print(f"kpfmasters {args.command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except OSError as exc:
        # The system refused (unwritable or full disk, missing directory): one line, the
        # file and the reason, never a traceback.
        where = exc.filename or ""
        what = exc.strerror or str(exc)
        print(
            f"kpfmasters {args.command}: error: {where}{': ' if where else ''}{what}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
