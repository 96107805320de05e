"""Rerun the study's experiments and rebuild docs/replication.md from the results.

    python benchmarks/replicate.py run  [--results results/replication] [--scale study|machine]
                                        [--data-dir DIR] [--only NAME,NAME]
    python benchmarks/replicate.py page [--results results/replication] [--partial]

`run` runs each experiment's sweep file (sweeps/*.yaml) through `ibray sweep`, one after the
other, resuming any that an earlier run left unfinished. `--scale study` uses the files as
shipped (the study's seeds and epochs); `--scale machine` (the default) keeps the headline
synthetic experiment (Section 4.1) at the study's size and runs the others with fewer seeds,
always at the study's epochs, so that each experiment ends within a few hours on a 2-core
machine. The sweep files actually run are written next to the results
(`<results>/<sweep>/sweep.yaml`). `--only` runs the named experiments (sweep names, e.g.
`mnist-bottleneck2`, or `synthetic` / `mnist` for a half, `estimators` for the estimators
against the exact values, sweeps/estimators.yaml, which is not the study's but its point).

The synthetic experiments need the study's data set (`szt`), the MNIST ones (Section 4.2,
Appendix E) the four MNIST IDX files; both are found as every ibray command finds them:
`--data-dir DIR`, else $IBRAY_DATA_DIR, else ~/.cache/ibray, where `ibray data download szt`
and `ibray data download mnist` put them. Offline, point `--data-dir` at a folder holding
`var_u.mat` and `mnist/` with `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`. Without the MNIST files the MNIST
experiments are skipped, and said to be.

`page` runs `ibray verify` on every experiment's results and refuses to go on unless all are
complete; it then writes the figures (`ibray report --png`) and the tables of
docs/replication.md from the results. An experiment whose results folder is absent (run on
another machine) keeps its section of the existing page, marked with the date it was built.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


# (sweep file, its keys changed at machine scale, what it reproduces)
EXPERIMENTS = [
    ("syn_8bit.yaml", {}, "Section 4.1: synthetic, 8-bit, tanh and ReLU"),
    ("appendix_d_prefit.yaml", {"seeds": 10}, "Appendix D: random-label prefitting"),
    ("appendix_c_precision.yaml", {"seeds": 10}, "Appendix C: 4-bit and 32-bit"),
    ("appendix_a_binning.yaml", {"seeds": 10}, "Appendix A: binning estimators on float networks"),
]
# At machine scale two trials of 5 seeds keep both cores of a 2-core machine busy.
MNIST_EXPERIMENTS = [
    ("mnist_bottleneck2.yaml", {"seeds": 10, "seeds_per_trial": 5}, "Section 4.2: MNIST Bottleneck-2"),
    ("appendix_e_mnist.yaml", {"seeds": 5, "seeds_per_trial": 5}, "Appendix E: Bottleneck-4 and HourGlass"),
    ("appendix_e_mnist_4x10.yaml", {"seeds": 5, "seeds_per_trial": 5}, "Appendix E: 4x10"),
    ("appendix_e_mnist_conv.yaml", {"seeds": 5, "seeds_per_trial": 5}, "Appendix E: Conv"),
]
# Not the study's: every estimator of the controversy against the exact values (issue 22's file,
# small already: 5 seeds x 1000 epochs).
ESTIMATOR_EXPERIMENTS = [("estimators.yaml", {}, "Estimators against the exact values")]
HALVES = {"synthetic": EXPERIMENTS, "mnist": MNIST_EXPERIMENTS, "estimators": ESTIMATOR_EXPERIMENTS}


def sweep_spec(file: str, changes: dict, scale: str) -> dict:
    """The sweep file as shipped, with `changes` applied at machine scale."""
    spec = yaml.safe_load((REPO / "sweeps" / file).read_text())
    return {**spec, **changes} if scale == "machine" else spec


def mnist_present(data_dir: str | None) -> bool:
    sys.path.insert(0, str(REPO))
    from ibray.data import DataError, load_dataset

    try:
        load_dataset("mnist", data_dir)
        return True
    except DataError:
        return False


def chosen(only: str | None, scale: str) -> list[tuple[str, dict, str]]:
    """The experiments `--only` names (all when None); exits 2 on an unknown name."""
    every = EXPERIMENTS + MNIST_EXPERIMENTS + ESTIMATOR_EXPERIMENTS
    if not only:
        return every
    names = {sweep_spec(file, changes, scale)["name"]: (file, changes, what) for file, changes, what in every}
    picked = []
    for name in only.split(","):
        name = name.strip()
        if name in HALVES:
            picked += HALVES[name]
        elif name in names:
            picked.append(names[name])
        else:
            known = ", ".join([*HALVES, *names])
            print(f"replicate: --only {name!r} is not an experiment; choose from {known}", file=sys.stderr)
            sys.exit(2)
    return [e for e in every if e in picked]  # in the page's order, each once


def run(results: Path, scale: str, data_dir: str | None = None, only: str | None = None) -> int:
    experiments = chosen(only, scale)
    if any(e in MNIST_EXPERIMENTS for e in experiments) and not mnist_present(data_dir):
        print(
            "replicate: the MNIST files are not in the data directory (--data-dir, $IBRAY_DATA_DIR or ~/.cache/ibray); "
            "skipping the MNIST experiments (`ibray data download mnist`, or --data-dir DIR holding mnist/)",
            file=sys.stderr,
        )
        experiments = [e for e in experiments if e not in MNIST_EXPERIMENTS]
    files = results / "_sweep_files"
    files.mkdir(parents=True, exist_ok=True)
    for file, changes, what in experiments:
        path = files / file
        spec = sweep_spec(file, changes, scale)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(f"== {what}: {path}", flush=True)
        command = [sys.executable, "-m", "ibray.cli", "sweep", str(path), "--results", str(results)]
        if data_dir:
            command += ["--data-dir", data_dir]
        if (results / spec["name"] / "sweep.yaml").exists():
            command.append("--resume")  # finishes what is unfinished; a complete sweep does nothing
        started = time.time()
        code = subprocess.run(command).returncode
        record_wall_time(results / spec["name"], time.time() - started, code)
        if code != 0:
            print(f"replicate: {file} ended with exit code {code}; rerun this command to resume it", file=sys.stderr)
            return code
    return 0


WALL_TIMES = "wall_times.jsonl"  # beside sweep.yaml: one line per `ibray sweep` run of the experiment


def record_wall_time(folder: Path, seconds: float, code: int) -> None:
    """Append one run's wall time to the experiment's folder (the page sums them; a line may
    carry a "note", e.g. that the machine was shared, which the page prints beside the time)."""
    if not folder.is_dir():
        return  # refused before it made its folder: nothing ran
    line = {
        "ended": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "exit_code": code,
        "cpus": os.cpu_count(),
    }
    with open(folder / WALL_TIMES, "a") as out:
        out.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "page"])
    parser.add_argument("--results", type=Path, default=REPO / "results" / "replication")
    parser.add_argument("--scale", choices=["study", "machine"], default="machine")
    parser.add_argument(
        "--data-dir", default=None, help="where szt and mnist/ are (default: $IBRAY_DATA_DIR, else ~/.cache/ibray)"
    )
    parser.add_argument("--only", default=None, help="run: these experiments only (sweep names, or synthetic / mnist)")
    parser.add_argument(
        "--partial", action="store_true", help="page: leave out experiments whose results are incomplete"
    )
    args = parser.parse_args(argv)
    if args.action == "run":
        data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
        return run(args.results, args.scale, data_dir, args.only)
    from replication_page import write_page  # beside this file

    return write_page(args.results, REPO / "docs", partial=args.partial)


if __name__ == "__main__":
    sys.exit(main())
