"""Benchmark: L0 -> 2D of a full-size frame against just reading its amplifier data.

Part of ``make bench`` (after ``bench_stack.py``) and runnable alone:

    python bench/bench_l0.py                 # 5 frame kinds, 7 rounds in-process, 5 processes
    python bench/bench_l0.py --quick         # 512 x 512 frames, a smoke run (seconds)

Frames: one simulated bias L0 file per kind (``kpfmasters.sim.simulate``: 4080 x 4080 data
per CCD, two CCDs, KPF's amplifier geometry, CA_HK 255 x 1024), in KPF's encoding (unsigned
32-bit via BZERO 2147483648) and, for comparison, the same pixel values as signed int32
(a bias's raw values fit in int32): 2 amplifiers plain (139 MB) and RICE-compressed each
way, 4 amplifiers plain (uint32); generated once and cached under
``bench/out/l0_<size>_v<version>/``. Every measurement starts from a warm page cache. The
uint32 lines end with their convert time as a ratio to the int32 frame's (target: <= 1.10).

Two ways, both reported:

- In-process, in a fresh interpreter with everything imported (``--child``), interleaved
  rounds, median: ``read`` = ``astropy.io.fits.open(memmap=False)`` and ``.data`` of every
  amplifier extension (what "just reading the amplifier data" costs with the usual tool);
  ``convert`` = :func:`kpfmasters.science.l0to2d.build_2d` on the opened file (open, overscan
  statistics, conversion, tiling, CA_HK: the whole 2D file in memory), with 1 thread (as the
  ``l0_to_2d`` rule runs it) and with 2; ``convert + write`` = :func:`convert_l0`, the rule's
  function, also writing the file atomically with checksums and fsync.
- Whole processes (start-up, imports, read, compute, write), median of ``--processes``:
  ``python -c`` reading the amplifiers with astropy, against ``kpfmasters l0to2d FILE -o OUT``;
  peak RSS from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import kpf_command, machine_details, run_once, warm_cache

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GEN_VERSION = 2
DATE = "20230606"
KINDS = {  # name: (amplifiers per CCD, RICE-compressed, stored as int32)
    "2 amps, int32, plain": (2, False, True),
    "2 amps, uint32+BZERO, plain": (2, False, False),
    "2 amps, int32, RICE": (2, True, True),
    "2 amps, uint32+BZERO, RICE": (2, True, False),
    "4 amps, uint32+BZERO, plain": (4, False, False),
}
PEERS = {  # uint32 kind: the int32 kind it is compared with
    "2 amps, uint32+BZERO, plain": "2 amps, int32, plain",
    "2 amps, uint32+BZERO, RICE": "2 amps, int32, RICE",
}
MiB = 2**20

READ_SCRIPT = """
import sys
from astropy.io import fits
with fits.open(sys.argv[1], memmap=False) as hdul:
    for hdu in hdul:
        if "_AMP" in hdu.name:
            hdu.data.shape
"""


def frame_dir(workdir: Path, size: int, kind: str) -> Path:
    slug = kind.replace(", ", "-").replace(" ", "").replace("+", "")
    return workdir / f"l0_{size}_v{GEN_VERSION}" / slug


def as_int32(path: Path) -> None:
    """Rewrite the amplifiers of ``path`` as signed int32 holding the same values (plain or
    RICE as they were), atomically."""
    import numpy as np
    from astropy.io import fits

    from kpfmasters.io.fits import write_fits

    with fits.open(path) as hdul:
        hdus = []
        for hdu in hdul:
            if "_AMP" in hdu.name:
                data = hdu.data
                assert data.max() < 2**31, "a bias fits in int32"
                values = data.astype(np.int32)
                header = hdu.header.copy()
                for key in ("BZERO", "BSCALE"):
                    header.remove(key, ignore_missing=True)
                if isinstance(hdu, fits.CompImageHDU):
                    new = fits.CompImageHDU(
                        values, header, name=hdu.name, compression_type="RICE_1"
                    )
                else:
                    new = fits.ImageHDU(values, header, name=hdu.name)
                hdus.append(new)
            else:
                hdus.append(hdu.copy())
        write_fits(fits.HDUList(hdus), path)


def make_frame(workdir: Path, size: int, kind: str) -> Path:
    """The cached L0 bias frame of ``kind`` (simulated when missing)."""
    from kpfmasters.sim.simulate import simulate_night

    out = frame_dir(workdir, size, kind)
    done = out / "done"
    if not done.exists():
        amps, compress, int32 = KINDS[kind]
        t0 = time.perf_counter()
        night = simulate_night(
            out,
            DATE,
            seed=5,
            amps=amps,
            size=size,
            compress=compress,
            extras=False,
            counts={"bias": 1, "dark": 0, "flat": 0, "arclamp": {}},
        )
        if int32:
            as_int32(night.frames[0].path)
        done.write_text("ok\n")
        print(f"simulated {kind} ({size} x {size}) in {time.perf_counter() - t0:.0f} s")
    return next((out / "L0" / DATE).glob("KP.*.fits"))


def read_amplifiers(path: Path) -> None:
    """Every amplifier image of ``path`` read into memory with astropy (no conversion)."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            if "_AMP" in hdu.name:
                hdu.data.shape  # noqa: B018  (reads the data)


def child(path: Path, rounds: int, out: Path) -> dict[str, list[float]]:
    """In-process timings (seconds per round) of reading, converting, converting + writing."""
    from kpfmasters.core.config import load_config
    from kpfmasters.science.l0read import open_l0
    from kpfmasters.science.l0to2d import AmpGeometry, build_2d, convert_l0

    cfg = load_config(None)
    geometry, adc_scale = AmpGeometry.from_config(cfg), cfg["adc_scale"]

    def convert(threads: int):
        def run():
            with open_l0(path) as hdul:
                build_2d(hdul, path, geometry, adc_scale, threads)

        return run

    steps = {
        "read": lambda: read_amplifiers(path),
        "convert_1": convert(1),
        "convert_2": convert(2),
        "convert_write": lambda: convert_l0(path, out, geometry, adc_scale, 1),
    }
    for step in steps.values():  # warm-up: page cache, imports, allocator
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    out.unlink(missing_ok=True)
    return times


def pair_child(paths: list[Path], rounds: int) -> dict[str, list[float]]:
    """Convert times (1 thread, seconds) of ``paths``, interleaved round by round in one
    process, so load changes on the machine hit both alike: {path: [seconds, ...]}."""
    from kpfmasters.core.config import load_config
    from kpfmasters.science.l0read import open_l0
    from kpfmasters.science.l0to2d import AmpGeometry, build_2d

    cfg = load_config(None)
    geometry, adc_scale = AmpGeometry.from_config(cfg), cfg["adc_scale"]

    def convert(path: Path) -> float:
        t0 = time.perf_counter()
        with open_l0(path) as hdul:
            build_2d(hdul, path, geometry, adc_scale, 1)
        return time.perf_counter() - t0

    for path in paths:
        convert(path)
    times: dict[str, list[float]] = {str(p): [] for p in paths}
    for i in range(rounds):
        order = paths if i % 2 == 0 else paths[::-1]
        for path in order:
            times[str(path)].append(convert(path))
    return times


def paired(paths: list[Path], rounds: int, env: dict) -> dict[str, list[float]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--pair", *map(str, paths)]
    cmd += ["--rounds", str(rounds)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"paired timing failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def in_process(path: Path, rounds: int, out: Path, env: dict) -> dict[str, list[float]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path)]
    cmd += ["--rounds", str(rounds), "--out", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"in-process timing of {path} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def whole_processes(path: Path, count: int, out: Path, env: dict) -> dict[str, tuple]:
    """(median wall s, max peak RSS bytes) of ``count`` read and ``count`` l0to2d processes."""

    commands = {
        "read": [sys.executable, "-c", READ_SCRIPT, str(path)],
        "l0to2d": [*kpf_command(), "l0to2d", str(path), "-o", str(out)],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    rss: dict[str, float] = dict.fromkeys(commands, 0.0)
    for _ in range(count):
        for name, cmd in commands.items():
            warm_cache([path])
            wall, _, peak, error = run_once(cmd, env, timeout=300)
            if error:
                raise RuntimeError(f"{name} process on {path} failed: {error}")
            walls[name].append(wall)
            rss[name] = max(rss[name], peak)
    out.unlink(missing_ok=True)
    return {name: (statistics.median(walls[name]), rss[name]) for name in commands}


def ratio_lines(rows: list[dict], pairs: dict[str, dict]) -> list[str]:
    """uint32+BZERO against int32 (same pixels): the convert time (1 thread) of each from
    the table, and from the interleaved pair run (``pairs``: kind -> {"mine", "theirs"}
    seconds lists) with its ratio, and whether it is within the 10% target."""
    by_kind = {r["kind"]: r for r in rows}
    lines = []
    for kind, peer in PEERS.items():
        if kind not in by_kind or peer not in by_kind or kind not in pairs:
            continue
        table = [statistics.median(by_kind[k]["times"]["convert_1"]) * 1e3 for k in (kind, peer)]
        mine, theirs = (statistics.median(pairs[kind][k]) * 1e3 for k in ("mine", "theirs"))
        ratio = mine / theirs
        verdict = "within 10%" if ratio <= 1.10 else "OVER the 10% target"
        lines.append(
            f"- {kind} vs {peer}: convert (1 thread) {table[0]:.0f} vs {table[1]:.0f} ms in the "
            f"table; interleaved in one process {mine:.0f} vs {theirs:.0f} ms, ratio "
            f"{ratio:.3f} ({verdict})"
        )
    return lines


def format_table(rows: list[dict]) -> list[str]:
    lines = [
        "| L0 frame | MB | read ms | convert ms, 1 thread | x read | convert ms, 2 threads "
        "| x read | convert + write ms | read process s | l0to2d process s | x | l0to2d peak "
        "RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = {k: statistics.median(v) * 1e3 for k, v in r["times"].items()}
        (read_s, _), (conv_s, conv_rss) = r["process"]["read"], r["process"]["l0to2d"]
        lines.append(
            f"| {r['kind']} | {r['mb']:.0f} | {t['read']:.0f} | {t['convert_1']:.0f} | "
            f"{t['convert_1'] / t['read']:.2f} | {t['convert_2']:.0f} | "
            f"{t['convert_2'] / t['read']:.2f} | {t['convert_write']:.0f} | {read_s:.2f} | "
            f"{conv_s:.2f} | {conv_s / read_s:.2f} | {conv_rss / MiB:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 x 512 frames, few rounds")
    parser.add_argument("--size", type=int, default=None, help="CCD side (4080; quick: 512)")
    parser.add_argument("--rounds", type=int, default=None, help="in-process rounds (7)")
    parser.add_argument("--processes", type=int, default=None, help="whole processes (5)")
    parser.add_argument("--workdir", type=Path, default=HERE / "out", help="cache of frames")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="do not append RESULTS.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pair", type=Path, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 7)
    if args.child:
        print(json.dumps(child(args.child, rounds, args.out)))
        return 0
    if args.pair:
        print(json.dumps(pair_child(args.pair, 3 * rounds)))
        return 0

    size = args.size or (512 if args.quick else 4080)
    processes = args.processes or (1 if args.quick else 5)
    details = machine_details()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = args.workdir / "outputs" / "l0_bench_2D.fits"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for kind in KINDS:
        path = make_frame(args.workdir, size, kind)
        times = in_process(path, rounds, out, env)
        process = whole_processes(path, processes, out, env)
        rows.append(
            {
                "kind": kind,
                "path": path,
                "mb": path.stat().st_size / 1e6,
                "times": times,
                "process": process,
            }
        )
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            f"{kind}: read {med['read']:.0f} ms, convert {med['convert_1']:.0f} ms "
            f"(2 threads {med['convert_2']:.0f}), with write {med['convert_write']:.0f} ms; "
            f"processes: read {process['read'][0]:.2f} s, l0to2d {process['l0to2d'][0]:.2f} s",
            flush=True,
        )
    paths = {r["kind"]: r["path"] for r in rows}
    pairs = {}
    for kind, peer in PEERS.items():
        got = paired([paths[kind], paths[peer]], rounds, env)
        pairs[kind] = {"mine": got[str(paths[kind])], "theirs": got[str(paths[peer])]}
    table = format_table(rows) + ["", *ratio_lines(rows, pairs)]
    print("\n".join(table))
    if not args.no_record:
        stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        cmdline = " ".join(["python bench/bench_l0.py", *(argv or sys.argv[1:])])
        lines = [
            "",
            f"## {stamp}: L0 -> 2D, {size} x {size} per CCD",
            "",
            f"`{cmdline.strip()}`; in-process: median of {rounds} interleaved rounds; "
            f"processes: median of {processes}; warm page cache; took "
            f"{(time.perf_counter() - started) / 60:.1f} min.",
            "",
            *details,
            "",
            *table,
            "",
        ]
        with open(args.results, "a") as handle:
            handle.write("\n".join(lines))
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
