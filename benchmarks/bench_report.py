"""Benchmark: aggregate and report 100 seeds x 8000 epochs x 7 layers (5.6 million MI rows).

Writes synthetic ibray results (10 trials of 10 seeds, MI every epoch, 8 part files per
table and trial) into a temporary folder, then prints the seconds to load and aggregate
(one collect_all of every table the report needs), the seconds to build the report, and
the report's size. A benchmark that prints numbers, not a timed test:

    python benchmarks/bench_report.py [--seeds 100] [--epochs 8000] [--groups 1] [--keep DIR]

With --groups N (up to 24) the seeds are split over N networks (activation x bits), one
sweep each: the report then draws N groups of planes, curves and spreads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import polars as pl  # noqa: E402
from analysis_fixtures import write_sweep  # noqa: E402

from analysis import report  # noqa: E402
from analysis.load import load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8000)
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--groups", type=int, default=1, help="networks the seeds are split over (1 to 24)")
    parser.add_argument("--keep", type=Path, default=None, help="write the results and report here and keep them")
    args = parser.parse_args()
    trials = 10 if args.seeds % 10 == 0 else 1
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        started = time.perf_counter()
        if args.groups == 1:
            write_sweep(root / "results", "bench", trials, args.seeds // trials, args.epochs, args.layers, parts=8)
        networks = [(a, b) for b in (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 24, 32) for a in ("tanh", "relu")][: args.groups]
        for activation, bits in networks if args.groups > 1 else []:
            seeds = max(args.seeds // args.groups, 1)
            name = f"bench-{activation}-{bits}"
            write_sweep(
                root / "results", name, 1, seeds, args.epochs, args.layers, parts=8, activation=activation, bits=bits
            )
        print(f"wrote synthetic results: {time.perf_counter() - started:.1f} s")

        started = time.perf_counter()
        results = load([root / "results"])
        tables = report.compute(results)
        elapsed = time.perf_counter() - started
        rows = results.mi.select(pl.len()).collect().item()
        print(f"load + aggregate {rows:,} MI rows: {elapsed:.1f} s")

        report.javascript_bundle()  # built once per process; not part of the report's own time
        started = time.perf_counter()
        out = report.build_report([root / "results"], root / "report.html")
        elapsed = time.perf_counter() - started
        print(
            f"build report: {elapsed:.1f} s, {out.stat().st_size / 1e6:.2f} MB, {tables.mi_stats.height:,} curve points"
        )


if __name__ == "__main__":
    main()
