"""Benchmark: how long the test suite takes, beside this machine's speed measured in the same run.

The machine's speed drifts (seen: a 2-core box at 180 GFLOP/s one hour and 100 the next), so a
suite time means little alone. This prints, as one JSON line and in words:
  - peak_before / peak_after: float32 matrix-product GFLOP/s on every core (`ibray bench`'s
    measure, 2048 x 2048), just before the first pytest run and just after the last;
  - seconds and the outcome of `pytest -q` (everything, the README's default: three processes)
    and of `pytest -q -m "not slow"` (the quick round while editing);
  - cpu_seconds: the whole machine's busy CPU time over each run (from /proc/stat; every
    process counts, Ray's and the browser's too), and busy: that over cores x seconds.

    python benchmarks/bench_suite.py [--only full|fast] [--json] [-- PYTEST ARGS]

Run it on an otherwise idle machine; other work on it shows as a busy share above the suite's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {"full": [], "fast": ["-m", "not slow"]}


def busy_ticks() -> int:
    """The whole machine's busy CPU time so far, in clock ticks (every core; idle and iowait excluded)."""
    with open("/proc/stat", encoding="ascii") as file:
        fields = [int(v) for v in file.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def peak() -> float:
    from ibray.bench import matmul_gflops

    return matmul_gflops(os.cpu_count() or 1)


def run_pytest(extra: list[str]) -> dict:
    """One pytest run in a process of its own: wall seconds, busy CPU seconds, and what it said."""
    ticks, started = busy_ticks(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    cpu = (busy_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
    lines = done.stdout.strip().splitlines()
    outcome = lines[-1].strip("= ") if lines else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", outcome)}
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if failed:  # what went wrong, whole, for the one who reads the figures
        (REPO / "bench_suite_failures.log").write_text(done.stdout[-20000:] + done.stderr[-5000:])
    return {
        "returncode": done.returncode,
        "failed_tests": failed,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "busy": round(cpu / (seconds * (os.cpu_count() or 1)), 3),
        "outcome": outcome,
        **counts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(RUNS), help="run only this one")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    result: dict = {"cores": os.cpu_count(), "peak_before": round(peak(), 1)}
    for name, extra in RUNS.items():
        if args.only in (None, name):
            result[name] = run_pytest(extra + args.pytest_args)
    result["peak_after"] = round(peak(), 1)
    if not args.json:
        print(f"matrix-product peak: {result['peak_before']} GFLOP/s before, {result['peak_after']} after")
        for name in RUNS:
            if name in result:
                r = result[name]
                print(
                    f"{name}: {r['seconds']} s ({r['outcome']}), {r['cpu_seconds']} s of CPU, "
                    f"{100 * r['busy']:.0f}% of {result['cores']} cores busy"
                )
    print(json.dumps(result))
    return 0 if all(result[n]["returncode"] == 0 for n in RUNS if n in result) else 1


if __name__ == "__main__":
    sys.exit(main())
