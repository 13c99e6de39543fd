"""Benchmark peers from the astropy ecosystem: ccdproc.combine and astropy.stats.sigma_clip.

Neither implements docs/reference.md §4 exactly (they clip at k standard deviations around the
median, not at k half-widths of the 16-84 percentile range), but both are what a user would
reach for to make a one-pass sigma-clipped mean of N frames.

Usage: python bench/peers.py {ccdproc,sigma_clip} --nsigma K --ext NAME -o OUT FILE...

- ccdproc: ``ccdproc.combine(files, method='average', sigma_clip=True,
  sigma_clip_low_thresh=k, sigma_clip_high_thresh=k, sigma_clip_func=np.ma.median,
  sigma_clip_dev_func=np.ma.std, mem_limit=...)`` (one pass), written with CCDData.write.
- sigma_clip: ``astropy.stats.sigma_clip(cube, sigma=k, maxiters=1, cenfunc='median',
  stdfunc='std', axis=0)`` on the float32 cube, then the masked mean, count and standard
  error, written like the other peers.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
from astropy.io import fits


def run_ccdproc(files: list[str], ext: str, nsigma: float, output: str, mem_limit: float) -> None:
    import ccdproc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        combined = ccdproc.combine(
            files,
            method="average",
            sigma_clip=True,
            sigma_clip_low_thresh=nsigma,
            sigma_clip_high_thresh=nsigma,
            sigma_clip_func=np.ma.median,
            sigma_clip_dev_func=np.ma.std,
            mem_limit=mem_limit,
            hdu=ext,
            unit="electron",
        )
        combined.write(output, overwrite=True, checksum=True)


def run_sigma_clip(files: list[str], ext: str, nsigma: float, output: str) -> None:
    from astropy.stats import sigma_clip

    cube = np.array([fits.getdata(path, ext) for path in files], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(
            cube, sigma=nsigma, maxiters=1, cenfunc="median", stdfunc="std", axis=0
        )
        cnt = clipped.count(axis=0).astype(np.int32)
        avg = np.ma.filled(clipped.mean(axis=0, dtype=np.float64), np.nan)
        unc = np.ma.filled(np.sqrt(clipped.var(axis=0, dtype=np.float64) / cnt), np.nan)
    hdus = [
        fits.PrimaryHDU(),
        fits.ImageHDU(avg, name=ext),
        fits.ImageHDU(unc.astype(np.float32), name=f"{ext}_UNC"),
        fits.ImageHDU(cnt, name=f"{ext}_CNT"),
    ]
    fits.HDUList(hdus).writeto(output, overwrite=True, checksum=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=("ccdproc", "sigma_clip"))
    parser.add_argument("files", nargs="+")
    parser.add_argument("--nsigma", type=float, required=True)
    parser.add_argument("--ext", default="GREEN_CCD")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument(
        "--mem-limit", type=float, default=4e9, help="ccdproc's mem_limit in bytes (default 4e9)"
    )
    args = parser.parse_args(argv)
    if args.peer == "ccdproc":
        run_ccdproc(args.files, args.ext, args.nsigma, args.output, args.mem_limit)
    else:
        run_sigma_clip(args.files, args.ext, args.nsigma, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
