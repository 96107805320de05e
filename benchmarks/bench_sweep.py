"""Benchmark: a sweep's seed-epochs per second on Ray against one process without Ray.

Runs the sweep file (default: the quick start) on an embedded local Ray using every core and
prints:
  - sweep: seed-epochs per second over the whole run, Ray's start included;
  - single process: the same work (the sweep's first trial, shortened to --reference-epochs)
    trained by `run_trial` in this process, no Ray (what `ibray trial` does: one training
    thread and, from 8 seeds on, one measuring thread);
  - core benchmark: `ibray bench`'s training figure at the trial's seed count (MI every epoch);
  - Ray's overhead: 1 - (seconds the trials spent training) / (trial slots x wall seconds),
    where training excludes each trial's checkpoints and reports (report_seconds) and a slot
    is one trial's share of the cores. Everything else (Ray's start, worker start-up,
    scheduling, reporting, checkpoints, the driver) counts as overhead.

    python benchmarks/bench_sweep.py [--sweep sweeps/quickstart.yaml] [--epochs N] [--json]

--epochs overrides the sweep's epochs (e.g. to make a run of 10 minutes or more). Results go
to a temporary folder unless --keep DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def single_process_rate(trial, epochs: int) -> float:
    import dataclasses

    from ibray.data import load_dataset
    from ibray.run import run_trial

    short = dataclasses.replace(trial, epochs=epochs)
    dataset = load_dataset(short.dataset)
    with tempfile.TemporaryDirectory() as folder:
        summary = run_trial(short, folder, dataset=dataset)
    return summary.seeds * summary.epochs / summary.seconds


def core_benchmark_rate(seeds: int) -> float | None:
    try:
        from ibray.bench import training_rate
    except ImportError:
        return None
    from ibray.data import load_dataset

    return training_rate(seeds, 10, load_dataset("synthetic12"))


def trial_seconds(folder: Path) -> tuple[float, float]:
    """(training seconds, report seconds) summed over the trials' last Tune results."""
    training = reporting = 0.0
    for result in folder.glob("tune/*/result.json"):
        last = json.loads(result.read_text().splitlines()[-1])
        training += last["time_total_s"] - last.get("report_seconds", 0.0)
        reporting += last.get("report_seconds", 0.0)
    return training, reporting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(REPO / "sweeps" / "quickstart.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="override the sweep's epochs")
    parser.add_argument("--reference-epochs", type=int, default=100, help="epochs of the single-process run")
    parser.add_argument("--keep", default=None, help="results root to keep (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()

    from ibray.sweep import parse_sweep

    values = yaml.safe_load(Path(args.sweep).read_text())
    if args.epochs is not None:
        values["epochs"] = args.epochs
    values["name"] = f"bench-{values.get('name', Path(args.sweep).stem)}"
    spec = parse_sweep(yaml.safe_dump(values, sort_keys=False), args.sweep, default_name="bench")
    cores = os.cpu_count() or 1
    slots = min(len(spec.trials), max(int(cores // spec.resources["cpu"]), 1))
    print(spec.describe(), flush=True)

    single = single_process_rate(spec.trials[0], args.reference_epochs)
    print(f"single process, no Ray: {single:.1f} seed-epochs/s", flush=True)
    core = core_benchmark_rate(len(spec.trials[0].seeds))
    if core is not None:
        print(
            f"core benchmark (ibray bench, {len(spec.trials[0].seeds)} seeds, MI every epoch): {core:.1f} seed-epochs/s",
            flush=True,
        )

    from ibray.launch.launcher import run_sweep

    root = args.keep or tempfile.mkdtemp(prefix="ibray-bench-")
    started = time.perf_counter()
    outcome = run_sweep(spec, root, overwrite=True)
    wall = time.perf_counter() - started
    assert outcome.complete == outcome.trials, outcome.summary(args.sweep)
    training, reporting = trial_seconds(Path(outcome.folder))
    rate = spec.seed_epochs / wall
    overhead = 1 - training / (slots * wall)
    figures = {
        "cores": cores,
        "trials": len(spec.trials),
        "slots": slots,
        "seed_epochs": spec.seed_epochs,
        "sweep_wall_s": round(wall, 1),
        "sweep_seed_epochs_per_s": round(rate, 1),
        "single_process_seed_epochs_per_s": round(single, 1),
        "core_benchmark_seed_epochs_per_s": None if core is None else round(core, 1),
        "trial_training_s": round(training, 1),
        "trial_report_s": round(reporting, 1),
        "ray_overhead_fraction": round(overhead, 3),
    }
    print(
        f"sweep: {spec.seed_epochs:,} seed-epochs in {wall:.1f} s = {rate:.1f} seed-epochs/s on {cores} cores "
        f"({rate / single:.2f}x the single process)\n"
        f"Ray's overhead: {100 * overhead:.1f}% of {slots} slots x {wall:.1f} s "
        f"(trials trained {training:.1f} s, reported and checkpointed {reporting:.1f} s)",
        flush=True,
    )
    if args.json:
        print(json.dumps(figures))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
