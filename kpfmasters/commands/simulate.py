"""``kpfmasters simulate``: write a simulated KPF night (L0 files, order mask, truth)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kpfmasters.core.errors import KPFMastersError
from kpfmasters.sim.simulate import DEFAULT_ARC_OBJECTS, SIZES, simulate_night

HELP = "write a simulated KPF night with known truth (L0 files, order mask, truth arrays)"


def parse_size(text: str) -> int:
    """``small``/``medium``/``full`` or a positive even number of pixels."""
    if text in SIZES:
        return SIZES[text]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be one of {', '.join(SIZES)} or a number of pixels, not {text!r}"
        ) from None
    if value < 48 or value % 2:
        raise argparse.ArgumentTypeError(f"size must be an even number >= 48, not {value}")
    return value


def parse_counts(text: str) -> dict:
    """``bias=12,dark=5,flat=8,arclamp=5`` -> counts dict; ``arclamp=N`` applies to each
    default lamp, ``arclamp:<OBJECT>=N`` sets one lamp (listing any replaces the defaults)."""
    counts: dict = {}
    lamps: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            number = int(value)
        except ValueError:
            number = -1
        if not sep or number < 0:
            raise argparse.ArgumentTypeError(
                f"counts item {item!r} must be KEY=N with N a non-negative integer"
            )
        if key.startswith("arclamp:") and len(key) > len("arclamp:"):
            lamps[key[len("arclamp:") :]] = number
        elif key == "arclamp":
            counts["arclamp"] = {obj: number for obj in DEFAULT_ARC_OBJECTS}
        elif key in ("bias", "dark", "flat"):
            counts[key] = number
        else:
            raise argparse.ArgumentTypeError(
                f"unknown frame type {key!r} in counts; use bias, dark, flat, arclamp, "
                "arclamp:<OBJECT>"
            )
    if lamps:
        counts["arclamp"] = {**counts.get("arclamp", {}), **lamps}
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="UT date of the night, YYYYMMDD")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--amps", type=int, choices=(2, 4), default=2, help="amplifiers per CCD")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=SIZES["small"],
        help="CCD data size: small (128), medium (512), full (4080) or a number of pixels",
    )
    parser.add_argument("--no-noise", action="store_true", help="noise-free frames")
    packing = parser.add_mutually_exclusive_group()
    packing.add_argument(
        "--compress",
        dest="compress",
        action="store_true",
        default=True,
        help="RICE-compress amplifiers, as KPF does (the default)",
    )
    packing.add_argument(
        "--plain", dest="compress", action="store_false", help="write amplifiers uncompressed"
    )
    parser.add_argument(
        "--manual",
        action="store_true",
        help="add frames taken by hand or for tests, which KPF's production rules leave out",
    )
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="leave out the frames the default selection must reject",
    )
    parser.add_argument(
        "--counts",
        type=parse_counts,
        default=None,
        help="frames per type, e.g. bias=12,dark=5,flat=8,arclamp=5 or arclamp:<OBJECT>=3",
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        night = simulate_night(
            args.out,
            args.date,
            seed=args.seed,
            amps=args.amps,
            size=args.size,
            noise=not args.no_noise,
            counts=args.counts,
            compress=args.compress,
            extras=not args.no_extras,
            manual=args.manual,
        )
    except ValueError as exc:
        raise KPFMastersError(str(exc)) from exc
    files = [f.path for f in night.frames]
    total = sum(p.stat().st_size for p in files)
    truth = sum(p.stat().st_size for p in night.truth_dir.iterdir())
    kinds: dict[str, int] = {}
    for frame in night.frames:
        kinds[frame.kind] = kinds.get(frame.kind, 0) + 1
    print(
        f"wrote {len(files)} L0 files ({total / 2**20:.1f} MiB) to {night.l0_dir} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    print("  " + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    print(f"order mask: {night.order_mask_path}")
    print(f"truth: {night.truth_dir} ({truth / 2**20:.1f} MiB)")
    return 0
