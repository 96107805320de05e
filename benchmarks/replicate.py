"""Rerun the study's synthetic experiments and rebuild docs/replication.md from the results.

    python benchmarks/replicate.py run  [--results results/replication] [--scale study|machine]
    python benchmarks/replicate.py page [--results results/replication] [--partial]

`run` runs each experiment's sweep file (sweeps/*.yaml) through `ibray sweep`, one after the
other, resuming any that an earlier run left unfinished. `--scale study` uses the files as
shipped (the study's seeds and epochs); `--scale machine` (the default) keeps the headline
experiment (Section 4.1) at the study's size and runs the appendices with fewer seeds, at the
study's epochs, so that the whole set finishes in a few hours on a 2-core machine. The sweep
files actually run are written next to the results (`<results>/<sweep>/sweep.yaml`).

`page` runs `ibray verify` on every experiment's results and refuses to go on unless all are
complete; it then writes the figures (`ibray report --png`) and the tables of
docs/replication.md from the results. The MNIST experiments run too when their data is present
(`ibray data download mnist`); otherwise the page says they have not been run here.

The synthetic experiments need the study's data set: `ibray data download szt`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


# (sweep file, seeds at machine scale or None for the study's, what it reproduces)
EXPERIMENTS = [
    ("syn_8bit.yaml", None, "Section 4.1: synthetic, 8-bit, tanh and ReLU"),
    ("appendix_d_prefit.yaml", 10, "Appendix D: random-label prefitting"),
    ("appendix_c_precision.yaml", 10, "Appendix C: 4-bit and 32-bit"),
    ("appendix_a_binning.yaml", 10, "Appendix A: binning estimators on float networks"),
]
MNIST_EXPERIMENTS = [
    ("mnist_bottleneck2.yaml", None, "Section 4.2: MNIST Bottleneck-2"),
    ("appendix_e_mnist.yaml", None, "Appendix E: Bottleneck-4 and HourGlass"),
    ("appendix_e_mnist_wide.yaml", None, "Appendix E: 4x10 and Conv"),
]


def sweep_text(file: str, seeds: int | None, scale: str) -> str:
    """The sweep file as shipped, with the seed count cut to `seeds` at machine scale."""
    spec = yaml.safe_load((REPO / "sweeps" / file).read_text())
    if scale == "machine" and seeds is not None:
        spec["seeds"] = seeds
    return yaml.safe_dump(spec, sort_keys=False)


def mnist_present() -> bool:
    sys.path.insert(0, str(REPO))
    from ibray.data import DataError, load_dataset

    try:
        load_dataset("mnist")
        return True
    except DataError:
        return False


def run(results: Path, scale: str) -> int:
    experiments = EXPERIMENTS + (MNIST_EXPERIMENTS if mnist_present() else [])
    files = results / "_sweep_files"
    files.mkdir(parents=True, exist_ok=True)
    for file, seeds, what in experiments:
        path = files / file
        path.write_text(sweep_text(file, seeds, scale))
        name = yaml.safe_load(path.read_text())["name"]
        print(f"== {what}: {path}", flush=True)
        command = [sys.executable, "-m", "ibray.cli", "sweep", str(path), "--results", str(results)]
        if (results / name / "sweep.yaml").exists():
            command.append("--resume")  # finishes what is unfinished; a complete sweep does nothing
        code = subprocess.run(command).returncode
        if code != 0:
            print(f"replicate: {file} ended with exit code {code}; rerun this command to resume it", file=sys.stderr)
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "page"])
    parser.add_argument("--results", type=Path, default=REPO / "results" / "replication")
    parser.add_argument("--scale", choices=["study", "machine"], default="machine")
    parser.add_argument("--partial", action="store_true", help="page: leave out experiments whose results are incomplete")
    args = parser.parse_args(argv)
    if args.action == "run":
        return run(args.results, args.scale)
    from replication_page import write_page  # beside this file

    return write_page(args.results, REPO / "docs", partial=args.partial)


if __name__ == "__main__":
    sys.exit(main())
