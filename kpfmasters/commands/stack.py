"""``kpfmasters stack``: clipped stack of image extensions of FITS files.

The stack is described in docs/reference.md, 'The clipped stack'.

Output layout (like a master's, docs/reference.md, 'HDUs, in file order'): PRIMARY
(``NFRAMES``, ``NSIGMA``), then each stacked extension ``NAME`` (float64 mean of the kept
values), then for each of them, in the same order, ``NAME_UNC`` (float32 standard error) and
``NAME_CNT`` (int32 values kept). The file is written atomically with CHECKSUM/DATASUM
(:func:`kpfmasters.io.fits.write_fits`).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from kpfmasters import __version__
from kpfmasters.core.config import load_config
from kpfmasters.core.errors import InputError
from kpfmasters.io.fits import write_fits
from kpfmasters.science.stack import clip_correction, stack_files

HELP = "Clipped mean of image extensions over FITS files, streamed in bands."
DEFAULT_EXTS = ("GREEN_CCD", "RED_CCD", "CA_HK")
# header keywords of the first file's extension carried to the stacked image
CARRIED = ("BUNIT",)

log = logging.getLogger(__name__)


def _positive_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments; the band defaults come from ``config.yaml``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``stack`` subcommand's parser.

    Raises
    ------
    ConfigError
        When ``config.yaml`` cannot be loaded (it holds the ``stack`` defaults).
    """
    parser.add_argument("files", nargs="+", metavar="FILE", help="input FITS files, in order")
    parser.add_argument(
        "--nsigma", type=_positive_float, required=True, metavar="K", help="clip k (m +/- k*s), > 0"
    )
    parser.add_argument(
        "--ext",
        action="append",
        metavar="NAME",
        help="extension to stack (repeatable; default: those of "
        f"{', '.join(DEFAULT_EXTS)} present in the first file)",
    )
    parser.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="kernel threads (default: all)",
    )
    stack = load_config()["stack"]  # the defaults of config.yaml
    parser.add_argument(
        "--band-rows",
        type=_int_at_least(0),
        default=stack["band_rows"],
        metavar="R",
        help="rows per band (default 0: derived from --memory-mb)",
    )
    parser.add_argument(
        "--memory-mb",
        type=_int_at_least(1),
        default=stack["memory_mb"],
        metavar="M",
        help=f"band buffer budget in MiB (default {stack['memory_mb']}, from config.yaml); "
        "the outputs add 16 bytes a pixel",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output FITS file")


def default_extensions(path: str) -> list[str]:
    """The extensions of :data:`DEFAULT_EXTS` present in a file, in that order.

    Parameters
    ----------
    path : str
        The first input file.

    Returns
    -------
    list of str
        The names present (at least one).

    Raises
    ------
    InputError
        When the file is not readable FITS or has none of them.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            with fits.open(path, lazy_load_hdus=True) as hdul:
                names = {hdu.name.upper() for hdu in hdul}
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(path, f"is not a readable FITS file ({exc})") from exc
    present = [ext for ext in DEFAULT_EXTS if ext in names]
    if not present:
        raise InputError(
            path,
            f"has none of the extensions {', '.join(DEFAULT_EXTS)} "
            f"(it has {', '.join(sorted(names))}); name one with --ext",
        )
    return present


def _carried_header(path: str, ext: str) -> fits.Header:
    header = fits.Header()
    try:
        with fits.open(path, lazy_load_hdus=True) as hdul:
            source = hdul[ext].header
            for key in CARRIED:
                if key in source:
                    header[key] = source[key]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass  # stack_files has already validated the file; carrying keywords is best effort
    return header


def _big_endian(arr: np.ndarray) -> np.ndarray:
    """The same values as a big-endian view, swapped in place (``arr`` is consumed).

    FITS stores big-endian; handing astropy big-endian arrays spares it a swap, write and
    swap back of every output image.
    """
    arr.byteswap(inplace=True)
    return arr.view(arr.dtype.newbyteorder(">"))


def run(args: argparse.Namespace) -> int:
    """Stack each extension and write the output file atomically.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments (:func:`add_arguments`): ``files``, ``nsigma``, ``ext``,
        ``threads``, ``band_rows``, ``memory_mb`` (MiB), ``output``.

    Returns
    -------
    int
        The exit status, 0.

    Raises
    ------
    InputError
        Naming an input file that cannot be stacked.
    """
    start = time.perf_counter()
    exts = [e.upper() for e in args.ext] if args.ext else default_extensions(args.files[0])
    exts = list(dict.fromkeys(exts))  # an extension named twice is stacked once
    nframes = len(args.files)
    images: list[fits.ImageHDU] = []
    extras: list[fits.ImageHDU] = []
    for ext in exts:
        t0 = time.perf_counter()
        result = stack_files(
            args.files,
            ext,
            args.nsigma,
            band_rows=args.band_rows,
            memory_mb=args.memory_mb,
            threads=args.threads,
        )
        header = _carried_header(args.files[0], ext)
        header["NFRAMES"] = (nframes, "number of frames stacked")
        header["NSIGMA"] = (args.nsigma, "clip k of the stack")
        header["NREJECT"] = (result.nrejected, "valid values rejected by the clip")
        images.append(fits.ImageHDU(_big_endian(result.avg), header=header, name=ext))
        extras.append(fits.ImageHDU(_big_endian(result.unc), name=f"{ext}_UNC"))
        extras.append(fits.ImageHDU(_big_endian(result.cnt), name=f"{ext}_CNT"))
        log.info(
            "%s: stacked %d frame(s) in %.2f s, %d value(s) rejected",
            ext,
            nframes,
            time.perf_counter() - t0,
            result.nrejected,
        )
        del result
    primary = fits.PrimaryHDU()
    primary.header["NFRAMES"] = (nframes, "number of frames stacked")
    primary.header["NSIGMA"] = (args.nsigma, "clip k of the stack")
    primary.header["CLIPCF"] = (clip_correction(args.nsigma), "variance correction cf(k)")
    primary.header["SOFTVER"] = (__version__, "kpfmasters version")
    write_fits(fits.HDUList([primary, *images, *extras]), args.output)
    log.info("wrote %s in %.2f s", args.output, time.perf_counter() - start)
    return 0
