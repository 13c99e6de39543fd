"""Whole-cube NumPy implementation of the clipped stack (docs/reference.md §4), as a benchmark peer.

This is how a straightforward pipeline does it: read every frame, build the float64 cube
(N, rows, cols) in memory, take np.median and np.percentile over axis 0, mask the values
outside m +/- k*s, and reduce the masked array. Memory is about 3 to 4 times the float64 cube,
so it is only runnable for small N on full-size frames.

Usage: python bench/baseline_numpy.py --nsigma K --ext NAME -o OUT FILE...
Output: PRIMARY, NAME (float64 mean), NAME_UNC (float32), NAME_CNT (int32), with checksums.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
from astropy.io import fits


def clip_correction(nsigma: float) -> float:
    """cf(k) of the clipped stack (docs/reference.md) (dimensionless)."""
    c = nsigma * 0.9944579
    phi = math.exp(-0.5 * c * c) / math.sqrt(2.0 * math.pi)
    return 1.0 / (1.0 - 2.0 * c * phi / math.erf(c / math.sqrt(2.0)))


def clipped_stack(cube: np.ndarray, nsigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(avg float64, unc float32, cnt int32), each (rows, cols), of a float64 cube (N, r, c)."""
    med = np.median(cube, axis=0)
    p16, p84 = np.percentile(cube, [16, 84], axis=0)
    half = 0.5 * (p84 - p16)
    del p16, p84
    reject = (cube < med - nsigma * half) | (cube > med + nsigma * half)
    del med, half
    kept = np.ma.masked_array(cube, mask=reject)
    cnt = kept.count(axis=0).astype(np.int32)
    avg = np.ma.filled(kept.mean(axis=0), np.nan)
    var = np.ma.filled(kept.var(axis=0), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        unc = np.sqrt(clip_correction(nsigma) * var / cnt).astype(np.float32)
    return avg, unc, cnt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--nsigma", type=float, required=True)
    parser.add_argument("--ext", default="GREEN_CCD")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    frames = [fits.getdata(path, args.ext) for path in args.files]
    cube = np.array(frames, dtype=np.float64)
    del frames
    avg, unc, cnt = clipped_stack(cube, args.nsigma)
    del cube
    primary = fits.PrimaryHDU()
    primary.header["NFRAMES"] = len(args.files)
    primary.header["NSIGMA"] = args.nsigma
    hdus = [
        primary,
        fits.ImageHDU(avg, name=args.ext),
        fits.ImageHDU(unc, name=f"{args.ext}_UNC"),
        fits.ImageHDU(cnt, name=f"{args.ext}_CNT"),
    ]
    fits.HDUList(hdus).writeto(args.output, overwrite=True, checksum=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
