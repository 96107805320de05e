"""Benchmark: how long the test suite takes, beside this machine's speed measured in the same run.

The machine's speed drifts (seen: a 2-core box at 180 GFLOP/s one hour and 100 the next), so a
suite time means little alone. This prints, as one JSON line and in words:
  - peak_before / peak_after: float32 matrix-product GFLOP/s on every core (`ibray bench`'s
    measure, 2048 x 2048), just before the first pytest run and just after the last;
  - seconds and the outcome of `pytest -q` (everything, the README's default: three processes)
    and of `pytest -q -m "not slow"` (the quick round while editing);
  - cpu_seconds: the whole machine's busy CPU time over each run (from /proc/stat; every
    process counts, Ray's and the browser's too), and busy: that over cores x seconds;
  - cpu_by_kind: where that CPU went, by the kind of process (the test processes, Tune's trial
    workers, Ray's other workers and its daemons, the drivers, CLIs and report builds the tests
    start, the browser, the compiler): every process descending from pytest, sampled from
    /proc each SAMPLE_S seconds (a process is counted at its last sample, so a short-lived one
    is partly missed; `unattributed` is the rest of cpu_seconds, the kernel's threads included).

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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {"full": [], "fast": ["-m", "not slow"]}
SAMPLE_S = 0.5
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def process_kind(command: str, name: str) -> str:
    """The kind of a process, from its command line (Ray's workers and agents set theirs to a
    `ray::` title) and its name in /proc/PID/stat."""
    if command.startswith("ray::ImplicitFunc"):
        return "Tune trial workers"
    if command.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")):
        return "Ray daemons"
    if command.startswith("ray::"):
        return "Ray workers that ran no trial"
    if name in ("raylet", "gcs_server") or "/ray/" in command and ("monitor" in command or "dashboard" in command):
        return "Ray daemons"
    words = command.split()
    if words[1:3] == ["-m", "pytest"] or "exec(eval(sys.stdin.readline()))" in command:
        return "test processes"  # pytest itself and its xdist workers
    if "chrom" in name or "chrom" in "".join(words[:1]):
        return "browser"
    if name in ("cc", "cc1", "gcc", "g++", "cc1plus", "as", "ld", "collect2"):
        return "compiler"
    if words[1:3] in (["-m", "analysis.live"], ["-m", "analysis.report"]) or words[2:3] == ["report"]:
        return "report builds"  # the live report's builds, `ibray report` and its --watch
    if "ibray" in command or "python" in name:
        return "drivers and CLIs the tests start"
    return "other"


class CpuByKind:
    """Samples, in a thread, the CPU time of every process descending from `root` (the pytest
    process), and sums it by process_kind at the end."""

    def __init__(self, root: int) -> None:
        self.root, self._stop = root, threading.Event()
        self._seen: dict[tuple[int, str], list] = {}  # (pid, start) -> [cpu s, kind, ours]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        stats: dict[int, tuple[str, str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as file:
                    stat = file.read()
            except OSError:
                continue  # gone meanwhile
            name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            stats[pid] = (name, fields[19], (int(fields[11]) + int(fields[12])) * TICK_S)
        ours = {pid for (pid, start), known in self._seen.items() if known[2] and stats.get(pid, ("", ""))[1] == start}
        for pid, (name, start, cpu) in stats.items():
            known = self._seen.get((pid, start))
            if known is None:  # ours if it descends from pytest or from a process of ours (orphans too)
                ancestor = pid
                while ancestor > 1 and ancestor != self.root and ancestor not in ours:
                    ancestor = parents.get(ancestor, 0)
                known = self._seen[(pid, start)] = [cpu, "", ancestor > 1]
                if known[2]:
                    ours.add(pid)
            known[0] = cpu
            if known[2] and known[1] != "Tune trial workers":  # a pool worker may become a trial's
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as file:
                        command = file.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                known[1] = process_kind(command, name) if command else known[1]

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        totals: dict[str, float] = {}
        for cpu, kind, ours in self._seen.values():
            if ours and kind:
                totals[kind] = totals.get(kind, 0.0) + cpu
        return dict(sorted(((k, round(v, 1)) for k, v in totals.items()), key=lambda kv: -kv[1]))


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
    pytest = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    own, sampler = os.times(), CpuByKind(pytest.pid)
    stdout, stderr = pytest.communicate()
    done = subprocess.CompletedProcess(pytest.args, pytest.returncode, stdout, stderr)
    seconds = time.perf_counter() - started
    by_kind = sampler.stop()
    by_kind["this benchmark's sampling"] = round(sum(os.times()[:2]) - sum(own[:2]), 1)
    cpu = (busy_ticks() - ticks) * TICK_S
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
        "cpu_by_kind": {**by_kind, "unattributed": round(cpu - sum(by_kind.values()), 1)},
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
                print("  of which: " + ", ".join(f"{kind} {cpu} s" for kind, cpu in r["cpu_by_kind"].items()))
    print(json.dumps(result))
    return 0 if all(result[n]["returncode"] == 0 for n in RUNS if n in result) else 1


if __name__ == "__main__":
    sys.exit(main())
