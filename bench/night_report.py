"""Summarise Snakemake benchmark files of one night: time per rule, peak RSS per job.

python bench/night_report.py WORK/benchmarks/DATE --wall SECONDS [--append RESULTS.md]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import subprocess
from collections import defaultdict
from pathlib import Path


def read_benchmarks(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        with open(path) as handle:
            for rec in csv.DictReader(handle, delimiter="\t"):
                rule = "l0_to_2d" if path.parent.name == "2D" else path.stem
                rows.append(
                    {
                        "job": path.stem,
                        "rule": rule.split("_autocal")[0],
                        "s": float(rec["s"]),
                        "max_rss": float(rec["max_rss"] or 0),
                    }
                )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--wall", type=float, required=True, help="total wall time (s)")
    parser.add_argument(
        "--wall-steps12", type=float, help="wall time (s) of steps 1-2 (2D masters, traces, L1)"
    )
    parser.add_argument("--append", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()
    rows = read_benchmarks(args.folder)
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_rule[row["rule"]].append(row)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"### Full-size night, `snakemake --cores 2` ({dt.datetime.now():%Y-%m-%d %H:%M}, {cpu}, "
        f"{os.cpu_count()} cores, kpf-masters {commit or '?'}, load average at the end {load})",
        "",
        f"Total wall time: **{args.wall:.0f} s** for {len(rows)} jobs; "
        f"largest job peak RSS: **{max(r['max_rss'] for r in rows) / 1024:.2f} GiB**."
        + (
            f" Steps 1-2 alone (2D masters, traces, every L1): **{args.wall_steps12:.0f} s**."
            if args.wall_steps12
            else ""
        ),
        "",
        "| rule | jobs | time per job (s, median) | time (s, sum) | peak RSS (MiB, max) |",
        "|---|---|---|---|---|",
    ]
    for rule, items in sorted(by_rule.items()):
        times = sorted(r["s"] for r in items)
        lines.append(
            f"| {rule} | {len(items)} | {times[len(times) // 2]:.2f} | {sum(times):.1f} | "
            f"{max(r['max_rss'] for r in items):.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as handle:
            handle.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
