"""``kpfmasters l0to2d L0FILE [-o OUT] [--config config.yaml]``: one L0 file -> its 2D file."""

from __future__ import annotations

import argparse
from pathlib import Path

from kpfmasters.core.config import add_config_arguments, config_from_args
from kpfmasters.core.errors import InputError
from kpfmasters.core.naming import L0_NAME_RE, two_d_name
from kpfmasters.science.l0to2d import AmpGeometry, convert_l0, describe

HELP = "convert one L0 file into its 2D image in electrons (overscan-subtracted, tiled)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "l0file", metavar="L0FILE", help="the L0 FITS file (KP.YYYYMMDD.SSSSS.ss.fits)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="2D file to write (default: <work_root>/2D/<YYYYMMDD>/<L0 name>_2D.fits)",
    )
    parser.add_argument(
        "-j",
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="convert up to N amplifiers at once (default 1; the result does not change)",
    )
    add_config_arguments(parser)


def default_output(l0file: str | Path, work_root: str | Path) -> Path:
    """``<work_root>/2D/<YYYYMMDD>/<stem>_2D.fits``, the date taken from the L0 file name."""
    name = Path(l0file).name
    match = L0_NAME_RE.match(name)
    if not match:
        raise InputError(
            l0file,
            "name is not KP.YYYYMMDD.SSSSS.ss.fits, so the night of its 2D file is unknown; "
            "give the output file with -o OUT",
        )
    return Path(work_root) / "2D" / match.group("date") / two_d_name(name)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.output) if args.output else default_output(args.l0file, cfg["work_root"])
    geometry = AmpGeometry.from_config(cfg)
    report = convert_l0(args.l0file, out, geometry, cfg["adc_scale"], max(1, args.threads))
    print(describe(report))
    return 0
