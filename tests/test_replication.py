"""benchmarks/replicate.py and benchmarks/replication_page.py: choosing experiments, finding the
MNIST data, and keeping the sections of experiments whose results live on another machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import replicate  # noqa: E402
import replication_page  # noqa: E402


def test_machine_scale_keeps_the_study_epochs_and_cuts_only_the_seeds():
    study = replicate.sweep_spec("mnist_bottleneck2.yaml", {"seeds": 10, "seeds_per_trial": 5}, "study")
    machine = replicate.sweep_spec("mnist_bottleneck2.yaml", {"seeds": 10, "seeds_per_trial": 5}, "machine")
    assert (study["seeds"], study["epochs"]) == (20, 3000)
    assert (machine["seeds"], machine["seeds_per_trial"], machine["epochs"]) == (10, 5, 3000)
    assert {k: v for k, v in machine.items() if k not in ("seeds", "seeds_per_trial")} == {
        k: v for k, v in study.items() if k not in ("seeds", "seeds_per_trial")
    }


def test_only_picks_experiments_by_sweep_name_or_half_in_page_order():
    picked = replicate.chosen("appendix-e-mnist,syn-8bit", "machine")
    assert [file for file, _, _ in picked] == ["syn_8bit.yaml", "appendix_e_mnist.yaml"]
    assert [file for file, _, _ in replicate.chosen("mnist", "machine")] == [
        "mnist_bottleneck2.yaml",
        "appendix_e_mnist.yaml",
        "appendix_e_mnist_4x10.yaml",
        "appendix_e_mnist_conv.yaml",
    ]


def test_an_unknown_experiment_is_refused_with_the_names_to_choose_from(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "replicate.py"),
            "run",
            "--only",
            "mnist-bottlenek2",
            "--results",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "--only 'mnist-bottlenek2' is not an experiment" in run.stderr and "mnist-bottleneck2" in run.stderr
    assert not (tmp_path / "r").exists()


def test_mnist_experiments_are_skipped_and_said_to_be_without_the_mnist_files(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "replicate.py"),
            "run",
            "--only",
            "mnist",
            "--data-dir",
            str(empty),
            "--results",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "skipping the MNIST experiments" in run.stderr
    assert "==" not in run.stdout  # nothing ran
    assert not list((tmp_path / "r").glob("*/sweep.yaml"))


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "mnist").is_dir(), reason="no MNIST files beside the repo")
def test_the_mnist_files_are_found_through_data_dir():
    assert replicate.mnist_present(str(REPO.parent / "shared" / "data"))


def test_a_page_rebuilt_without_results_keeps_every_section_and_dates_it(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    first = replication_page.EXPERIMENTS[0].title
    (docs / "replication.md").write_text(
        "# Replication\n\nBuilt by `python benchmarks/replicate.py page` on 2026-11-28 from the results of x.\n\n"
        f"## {first}\n\nThe study: 50 seeds.\n\n### Figures\n\n![plane](replication/syn-8bit/a.png)\n"
    )
    assert replication_page.write_page(tmp_path / "no-results", docs) == 0
    page = (docs / "replication.md").read_text()
    assert page.count(f"## {first}") == 1
    assert f"## {first}\n\nSection built on 2026-11-28.\n\nThe study: 50 seeds." in page
    assert (
        f"Kept from an earlier build, whose results are not on the machine that built this page (each section says when it was built): {first}."
        in page
    )
    missing = [
        e.title
        for e in replication_page.EXPERIMENTS[1:]
        + replication_page.MNIST_EXPERIMENTS
        + replication_page.ESTIMATOR_EXPERIMENTS
    ]
    assert "Not run to completion yet, so not shown: " + "; ".join(missing) + "." in page
    # rebuilt again, the dated section stays as it is, not dated twice
    assert replication_page.write_page(tmp_path / "no-results", docs) == 0
    assert (docs / "replication.md").read_text().count("Section built on") == 1


def test_the_estimators_part_says_what_each_estimator_would_have_concluded(tmp_path):
    """Made-up curves where exact fits and compresses in both layers; 'flat' shows neither,
    'echo' repeats the exact values: the page tells them apart in words, numbers and a figure."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    from analysis_fixtures import curves, table, write_trial

    assert [file for file, _, _ in replicate.chosen("estimators", "machine")] == ["estimators.yaml"]
    folder = tmp_path / "results" / "estimators"
    mi, metrics = curves([0, 1], epochs=60, layers=2, sweep="estimators", trial="t0")
    exact = pl.from_arrow(mi)
    flat = table(
        "mi",
        seed=exact["seed"].to_numpy(),
        epoch=exact["epoch"].to_numpy(),
        layer=exact["layer"].to_numpy(),
        estimator="flat",
        mi_xt=np.full(exact.height, 3.0),
        mi_ty=np.full(exact.height, 0.5),
        sweep="estimators",
        trial="t0",
    )
    echo = mi.set_column(mi.schema.get_field_index("estimator"), "estimator", pa.array(["echo"] * mi.num_rows))
    write_trial(folder / "trials" / "t0", pa.concat_tables([mi, flat, echo]), metrics)
    (folder / "sweep.yaml").write_text("name: estimators\nepochs: 60\n")
    docs = tmp_path / "docs"
    experiment = replication_page.ESTIMATOR_EXPERIMENTS[0]
    n = replication_page.numbers(folder)
    text = replication_page.estimators_section(experiment, folder, "1 trial complete", n, docs)

    assert "Here: 2 repetitions per network x 60 epochs" in text
    assert "- **echo**: the exact phases in 1 of 1 networks (compression differs in 0); I(X;T) off by 0.00 bits" in text
    assert "- **flat**: the exact phases in 0 of 1 networks (compression differs in 1)" in text
    assert (
        "- **tanh, 8-bit**: exact MI shows compression in layers 1, 2; the same: echo (1, 2); otherwise: flat (none)."
        in text
    )
    assert "| I(X;T) \\|error\\|: mean / worst |" in text  # bars inside a cell escaped
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| tanh, 8-bit |")}
    assert set(rows) == {"echo", "flat"}
    assert rows["echo"].endswith("| 1,2 / 1,2 | the same phases as exact MI |")
    assert rows["flat"].endswith(
        "| 1,2 / none | no compression in layers 1, 2, where exact MI shows it; "
        "no fitting in layers 1, 2, where exact MI shows it |"
    )
    flat_error = (exact["mi_xt"] - 3.0).abs()
    assert f"| {flat_error.mean():.2f} / {flat_error.max():.2f} |" in rows["flat"]
    png = docs / "replication" / "estimators" / "tanh-8-estimators-plane.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"](replication/estimators/{png.name})" in text
