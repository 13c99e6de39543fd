"""Benchmark: ``kpfmasters stack`` against the usual ways of making a clipped mean of N frames.

Each run is a whole separate process, file to master: interpreter start-up, imports, reading
N full-size frames, the clipped stack, and writing the result (FITS with checksums). Peers:

- ``kpf``: ``kpfmasters stack FILE... --nsigma K --ext GREEN_CCD -o OUT`` (this project);
- ``numpy``: ``bench/baseline_numpy.py``, docs/reference.md §4 on the whole float64 cube with
  np.median / np.percentile over axis 0 and masked arrays (how a plain pipeline does it);
- ``ccdproc``: ``ccdproc.combine(method='average', sigma_clip=True, ...)``, one pass
  (``bench/peers.py``);
- ``sigma_clip``: ``astropy.stats.sigma_clip(cube, maxiters=1, axis=0)`` then the masked
  mean (``bench/peers.py``).

Input frames (float32, 4080 x 4080 by default, one ``GREEN_CCD`` image extension, a smooth
illumination pattern + Gaussian noise + cosmic-ray hits) are generated once and cached in the
work directory (default ``bench/out/``, git-ignored). Before every timed run the inputs are
read once, untimed, so every peer starts from a warm page cache. Peers whose estimated memory
exceeds 80% of the memory available are skipped with a note; a peer whose first run takes
longer than ``--slow-after`` seconds is not repeated.

Wall time is the median over ``--repeat`` runs, CPU time (user + system of the child) the
median too, peak RSS the largest ``ru_maxrss`` of the child (``os.wait4`` in a small
wrapper process that forks it, so that this script's own memory does not leak into it),
input Mpix/s = N x pixels per frame / wall time, ratio = peer wall / kpf wall, load = the
machine's 1-minute load average when the runs started (median; the machine may be shared).
The table is printed and appended, with the machine's details, to ``bench/RESULTS.md``
(``--no-record`` to skip).

    python bench/bench_stack.py                         # N = 10 30 100, all peers, 3 repeats
    python bench/bench_stack.py --quick                 # small frames, smoke run (~1 min)
    python bench/bench_stack.py --n 30 --peers kpf,numpy --repeat 5

``make bench`` then runs the L0 -> 2D benchmark, ``bench_l0.py``, with the same results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from benchlib import kpf_command, machine_details, run_once, warm_cache

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = ("kpf", "numpy", "ccdproc", "sigma_clip")
EXT = "GREEN_CCD"
GEN_VERSION = 1  # bump when the generated frames change
MiB = 2**20


# --------------------------------------------------------------------------------------------
# Input frames
# --------------------------------------------------------------------------------------------


def frame_path(workdir: Path, size: int, index: int) -> Path:
    return workdir / f"frames_{size}_v{GEN_VERSION}" / f"frame_{index:03d}.fits"


def make_frames(workdir: Path, size: int, count: int, seed: int = 20230606) -> list[Path]:
    """The first ``count`` cached frames of ``size`` x ``size`` pixels, made when missing.

    Frame i: 1000 e- times a smooth illumination pattern (0.8 to 1.2) + Gaussian noise of
    sqrt(level + 5^2) e- + cosmic rays on 0.05% of the pixels (+200 to +30000 e-); float32.
    """
    from astropy.io import fits

    paths = [frame_path(workdir, size, i) for i in range(count)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if not missing:
        return paths
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    level = 1000.0 * (1.0 + 0.2 * np.sin(3.0 * x + 1.0) * np.cos(2.0 * y))
    level = level.astype(np.float32)
    sigma = np.sqrt(level + 25.0).astype(np.float32)
    del x, y
    t0 = time.perf_counter()
    for i in missing:
        rng = np.random.default_rng([seed, i])
        data = rng.standard_normal((size, size), dtype=np.float32)
        data *= sigma
        data += level
        hits = rng.random(size * size // 2000)
        where = rng.integers(0, size * size, hits.size)
        data.reshape(-1)[where] += (200.0 + 29800.0 * hits**3).astype(np.float32)
        primary = fits.PrimaryHDU()
        primary.header["IMTYPE"] = "Flatlamp"
        primary.header["EXPTIME"] = 30.0
        primary.header["MJD-OBS"] = 60101.0 + i / 1440.0
        image = fits.ImageHDU(data, name=EXT)
        image.header["BUNIT"] = "electrons"
        tmp = paths[i].with_suffix(".tmp")
        fits.HDUList([primary, image]).writeto(tmp, overwrite=True)
        os.replace(tmp, paths[i])
    print(
        f"generated {len(missing)} frame(s) of {size} x {size} in {paths[0].parent} "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    return paths


# --------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------


def command(peer: str, files: list[Path], out: Path, nsigma: float, args) -> list[str]:
    names = [str(f) for f in files]
    common = ["--nsigma", str(nsigma), "--ext", EXT, "-o", str(out)]
    if peer == "kpf":
        extra = ["--threads", str(args.threads)] if args.threads else []
        return [*kpf_command(), "stack", *names, *common, *extra]
    if peer == "numpy":
        return [sys.executable, str(HERE / "baseline_numpy.py"), *names, *common]
    if peer == "ccdproc":
        limit = ["--mem-limit", str(args.ccdproc_mem_limit)]
        return [sys.executable, str(HERE / "peers.py"), "ccdproc", *names, *common, *limit]
    if peer == "sigma_clip":
        return [sys.executable, str(HERE / "peers.py"), "sigma_clip", *names, *common]
    raise ValueError(peer)


def memory_estimate(peer: str, n: int, npix: int, args) -> float:
    """Rough peak memory of a peer in bytes (measured factors, with a margin)."""
    if peer == "kpf":
        return 384 * MiB + 16 * npix + 200 * MiB
    if peer == "numpy":  # f32 frames + f64 cube + median/percentile copies + masked temporaries
        return 3.6 * 8 * n * npix + 300 * MiB  # measured 4.6 GiB at N = 10
    if peer == "sigma_clip":  # f32 cube, f64 deviations and reductions, masks
        return 7.0 * 4 * n * npix + 300 * MiB  # measured 4.6 GiB at N = 10
    if peer == "ccdproc":  # chunks bounded by mem_limit, plus the full-size result
        return 1.6 * args.ccdproc_mem_limit + 40 * npix + 300 * MiB  # measured 3.1 GiB, N = 10
    raise ValueError(peer)


def available_memory() -> float:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@dataclass
class Row:
    n: int
    peer: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    rss: float = 0.0
    note: str = ""
    check: str = ""

    @property
    def wall(self) -> float | None:
        return statistics.median(self.walls) if self.walls else None


def compare(kpf_out: Path, peer_out: Path, peer: str) -> str:
    """Agreement of a peer's mean image with kpf's (same rule only for numpy)."""
    from astropy.io import fits

    try:
        with fits.open(kpf_out, memmap=False) as a, fits.open(peer_out, memmap=False) as b:
            avg_a = np.asarray(a[EXT].data, dtype=np.float64)
            avg_b = np.asarray(b[0].data if peer == "ccdproc" else b[EXT].data, dtype=np.float64)
            if peer == "numpy":
                same_cnt = np.array_equal(a[f"{EXT}_CNT"].data, b[f"{EXT}_CNT"].data)
                diff = np.nanmax(np.abs(avg_a - avg_b))
                return f"CNT {'identical' if same_cnt else 'DIFFER'}, max|dAVG| {diff:.1e}"
            unc = np.asarray(a[f"{EXT}_UNC"].data, dtype=np.float64)
            differ = np.abs(avg_a - avg_b) > 1e-3 * unc
            return f"AVG differs (> 0.001 UNC) on {100 * differ.mean():.1f}% of pixels"
    except (OSError, KeyError, ValueError, IndexError) as exc:
        return f"comparison failed: {exc}"


def numba_compile_cost(env: dict) -> dict[str, tuple[float, float]]:
    """numba's price, (cold, warm) wall seconds of a fresh process, for two uses:

    - ``cli``: ``kpfmasters stack`` on three 64 x 64 files (start-up, imports, the float32-bits
      kernel);
    - ``preprocess``: ``stack_files`` with a ``preprocess`` (the float64 kernel the masters
      use), timed from before ``import kpfmasters.science.stack``.

    Cold: an empty numba cache directory, so every kernel used is compiled; warm: the same
    directory again, so the compiled code is loaded from it.
    """
    from astropy.io import fits

    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from kpfmasters.science.stack import stack_files\n"
        "stack_files(sys.argv[1:], 'GREEN_CCD', 2.1, memory_mb=256,\n"
        "            preprocess=lambda i, r, b: b * 2)\n"
        "print(time.perf_counter() - t)\n"
    )
    costs: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kpf-numba-") as tmp:
        files = []
        for i in range(3):
            path = Path(tmp) / f"tiny{i}.fits"
            data = np.full((64, 64), float(i), dtype=np.float32)
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name=EXT)]).writeto(path)
            files.append(str(path))
        for use in ("cli", "preprocess"):
            cache = Path(tmp) / f"cache-{use}"
            cache.mkdir()
            child = dict(env, NUMBA_CACHE_DIR=str(cache))
            times = []
            for _ in range(2):
                if use == "cli":
                    cmd = [*kpf_command(), "stack", *files, "--nsigma", "2.1"]
                    cmd += ["-o", str(Path(tmp) / "tiny_out.fits")]
                    t0 = time.perf_counter()
                    subprocess.run(cmd, env=child, capture_output=True, check=True)
                    times.append(time.perf_counter() - t0)
                else:
                    cmd = [sys.executable, "-c", code, *files]
                    out = subprocess.run(cmd, env=child, capture_output=True, text=True, check=True)
                    times.append(float(out.stdout.strip().splitlines()[-1]))
            costs[use] = (times[0], times[1])
    return costs


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def format_table(rows: list[Row], npix: int) -> list[str]:
    kpf = {r.n: r.wall for r in rows if r.peer == "kpf" and r.wall}
    lines = [
        "| N | peer | wall s (median) | runs | CPU s | peak RSS MiB | input Mpix/s | x kpf time "
        "| load | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.wall is None:
            lines.append(f"| {r.n} | {r.peer} | - | 0 | - | - | - | - | - | {r.note} |")
            continue
        mpix = r.n * npix / r.wall / 1e6
        ratio = f"{r.wall / kpf[r.n]:.1f}" if kpf.get(r.n) else "-"
        spread = f"{min(r.walls):.2f}-{max(r.walls):.2f}" if len(r.walls) > 1 else ""
        notes = "; ".join(x for x in (f"range {spread}" if spread else "", r.note, r.check) if x)
        lines.append(
            f"| {r.n} | {r.peer} | {r.wall:.2f} | {len(r.walls)} | "
            f"{statistics.median(r.cpus):.2f} | {r.rss / MiB:.0f} | {mpix:.0f} | {ratio} | "
            f"{statistics.median(r.loads):.1f} | {notes} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=None, help="frame counts (10 30 100)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per peer (3; quick: 1)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {PEERS}")
    parser.add_argument("--quick", action="store_true", help="512 x 512 frames, N = 5 10")
    parser.add_argument("--size", type=int, default=None, help="frame side (4080; quick: 512)")
    parser.add_argument("--nsigma", type=float, default=2.1, help="clip k (2.1, the bias k)")
    parser.add_argument("--threads", type=int, default=None, help="kpf threads (default: all)")
    parser.add_argument("--workdir", type=Path, default=HERE / "out", help="cache of frames")
    parser.add_argument("--slow-after", type=float, default=60.0, help="no repeats past this")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument("--ccdproc-mem-limit", type=float, default=4e9, help="bytes")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-record", action="store_true", help="do not append RESULTS.md")
    parser.add_argument("--skip-compile-cost", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    details = machine_details()  # load average and commit as the benchmark starts
    size = args.size or (512 if args.quick else 4080)
    counts = args.n or ([5, 10] if args.quick else [10, 30, 100])
    repeat = args.repeat or (1 if args.quick else 3)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    if "kpf" in peers:
        peers.remove("kpf")
    peers.insert(0, "kpf")  # the reference for ratios and output checks runs first
    npix = size * size
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    outdir = args.workdir / "outputs"
    outdir.mkdir(parents=True, exist_ok=True)

    compile_line = ""
    if not args.skip_compile_cost:
        costs = numba_compile_cost(env)
        cli_cold, cli_warm = costs["cli"]
        pre_cold, pre_warm = costs["preprocess"]
        compile_line = (
            f"- numba JIT cost, fresh process: `kpfmasters stack` on 3 tiny files takes "
            f"{cli_cold:.1f} s with an empty numba cache (compiling) and {cli_warm:.2f} s with "
            f"a warm one; `stack_files` with a preprocess (float64 kernel), from import: "
            f"{pre_cold:.1f} s cold, {pre_warm:.2f} s warm"
        )
        print(compile_line[2:], flush=True)
    all_frames = make_frames(args.workdir, size, max(counts))
    # one untimed kpf run so numba's cache is warm for the timed ones
    warm_out = outdir / "warmup.fits"
    subprocess.run(command("kpf", all_frames[:2], warm_out, args.nsigma, args), env=env, check=True)
    warm_out.unlink(missing_ok=True)

    rows: list[Row] = []
    for n in counts:
        files = all_frames[:n]
        outputs: dict[str, Path] = {}
        for peer in peers:
            row = Row(n, peer)
            rows.append(row)
            need = memory_estimate(peer, n, npix, args)
            avail = available_memory()
            if need > 0.8 * avail:
                row.note = (
                    f"skipped: needs ~{need / 2**30:.0f} GiB, {avail / 2**30:.0f} GiB available"
                )
                print(f"N={n} {peer}: {row.note}", flush=True)
                continue
            out = outdir / f"{peer}_N{n}.fits"
            for attempt in range(repeat):
                warm_cache(files)
                load = os.getloadavg()[0]
                wall, cpu, rss, error = run_once(
                    command(peer, files, out, args.nsigma, args), env, args.timeout
                )
                if error:
                    row.note = f"failed: {error}"
                    break
                row.walls.append(wall)
                row.cpus.append(cpu)
                row.loads.append(load)
                row.rss = max(row.rss, rss)
                print(
                    f"N={n} {peer} run {attempt + 1}: {wall:.2f} s (CPU {cpu:.2f} s), "
                    f"{rss / MiB:.0f} MiB, load {load:.1f}",
                    flush=True,
                )
                if wall > args.slow_after and attempt + 1 < repeat:
                    row.note = f"not repeated (> {args.slow_after:.0f} s)"
                    break
            if row.walls:
                outputs[peer] = out
                if peer != "kpf" and "kpf" in outputs:
                    row.check = compare(outputs["kpf"], out, peer)
        for out in outputs.values():
            out.unlink(missing_ok=True)

    elapsed = time.perf_counter() - started
    table = format_table(rows, npix)
    print("\n".join(table))
    print(f"benchmark took {elapsed / 60:.1f} min")
    if not args.no_record:
        stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        cmdline = " ".join(["python bench/bench_stack.py", *(argv or sys.argv[1:])])
        lines = [
            "",
            f"## {stamp}: {size} x {size} float32 frames, k = {args.nsigma}",
            "",
            f"`{cmdline.strip()}`; {repeat} run(s) per peer, warm page cache; "
            f"benchmark took {elapsed / 60:.1f} min.",
            "",
            *details,
        ]
        if compile_line:
            lines.append(compile_line)
        lines += ["", *table, ""]
        new = not args.results.exists()
        with open(args.results, "a") as handle:
            if new:
                handle.write("# Benchmark results (appended by bench/bench_stack.py)\n")
            handle.write("\n".join(lines))
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
