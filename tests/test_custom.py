"""Your own networks and your own data, end to end: a sweep on the real Ray cluster of a custom
dense network on a generated .npz and a .csv (MI within its known bounds, DPI across layers,
every row once, the data files pinned by SHA-256; a grid of several networks, each measured with
its own layers, is test_cluster's), a custom network's seed alone and in a batch (identical
rows), and a data file that changes under a trial or a sweep (refused)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from ibray.cli import main
from ibray.config import TrialConfig
from ibray.data import DataError, load_dataset, pin_dataset
from ibray.run import run_trial
from ibray.sweep import SweepError, load_sweep
from ibray.sweep_folder import check_data_unchanged

# architecture -> measured layers (hidden + softmax). One: a trial worker costs seconds of CPU,
# and a second network would add two trials that check nothing more
NETWORKS = {"8-4-2": 4}


def write_npz(path: Path, samples: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes by the largest of three noisy projections of five features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 5)).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.3 * rng.normal(size=(samples, 3)), axis=1)
    np.savez(path, x=x, y=y)
    return x, y


def write_csv(path: Path, samples: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Two classes, integer features, a 'target' label column and a fixed 'split' column."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 8, size=(samples, 4))
    y = (x[:, 0] + x[:, 1] > 7).astype(int)
    split = np.where(np.arange(samples) % 4 == 0, "test", "train")
    rows = "".join(f"{a},{b},{c},{d},{label},{part}\n" for (a, b, c, d), label, part in zip(x, y, split))
    path.write_text("a,b,c,d,target,split\n" + rows)
    return x, y


def entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / labels.size
    return float(-(p[p > 0] * np.log2(p[p > 0])).sum())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_dpi(mi: pl.DataFrame) -> None:
    """I(X;T) and I(T;Y) never grow from a layer to the next one (exact counts: exactly)."""
    wide = mi.sort("layer").group_by("trial", "seed", "epoch").agg(pl.col("mi_xt", "mi_ty"))
    for row in wide.iter_rows(named=True):
        assert np.all(np.diff(row["mi_xt"]) <= 1e-9), row
        assert np.all(np.diff(row["mi_ty"]) <= 1e-9), row


def test_a_sweep_of_custom_networks_on_an_npz_and_a_csv(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the sweep file's relative data paths are taken from here
    (tmp_path / "data").mkdir()
    _, npz_y = write_npz(tmp_path / "data" / "blobs.npz")
    _, csv_y = write_csv(tmp_path / "data" / "sums.csv")
    sweep = {
        "name": "custom",
        "dataset": ["data/blobs.npz", "data/sums.csv"],
        "label_column": "target",
        "architecture": list(NETWORKS),
        "seeds": 2,
        "epochs": 6,
        "learning_rate": 0.01,
        "write_every": 3,
    }
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    root = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(root), "--view-every", "60"]) == 0
    assert "sweep 'custom': 2/2 trials complete" in capsys.readouterr().out
    folder = root / "custom"

    npz_sha, csv_sha = sha256_of(tmp_path / "data" / "blobs.npz"), sha256_of(tmp_path / "data" / "sums.csv")
    pinned = {
        "npz": f"{tmp_path}/data/blobs.npz@{npz_sha}",
        "csv": f"{tmp_path}/data/sums.csv#target@{csv_sha}",
    }
    configs = [json.loads(p.read_text())["config"] for p in folder.glob("trials/*/trial.json")]
    assert sorted((c["dataset"], c["architecture"]) for c in configs) == sorted(
        (d, a) for d in pinned.values() for a in NETWORKS
    )

    mi = pl.read_parquet(f"{folder}/trials/*/mi/*.parquet")
    # Parquet keeps its schema; its dataset axis names the file and the first digits of its hash
    assert {(a, mi.filter(pl.col("architecture") == a)["layer"].max()) for a in NETWORKS} == set(NETWORKS.items())
    labels = {"npz": f"blobs.npz@{npz_sha[:8]}", "csv": f"sums.csv#target@{csv_sha[:8]}"}
    for kind, label in labels.items():
        assert mi.filter(pl.col("dataset").str.contains(label, literal=True)).height == 2 * 7 * sum(NETWORKS.values())
    assert mi.height == 2 * 2 * 7 * sum(NETWORKS.values())  # datasets x seeds x epochs 0..6 x layers

    # the known bounds: I(X;T) <= log2 N, I(T;Y) <= H(Y), N and Y of the whole set
    for kind, labels_of in (("npz", npz_y), ("csv", csv_y)):
        rows = mi.filter(pl.col("dataset").str.contains(labels[kind], literal=True))
        assert rows["mi_xt"].max() <= np.log2(labels_of.size) + 1e-9
        assert rows["mi_ty"].max() <= entropy(labels_of) + 1e-9
        assert rows["mi_ty"].max() > 0.01  # the bound is met by numbers that moved, not by zeros
    assert_dpi(mi)

    # ibray verify counts the custom networks' layers; the report groups them like the study's
    assert main(["verify", str(folder)]) == 0
    assert "verified 2 trial(s): 2 complete with every row exactly once" in capsys.readouterr().out
    assert main(["report", str(folder), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    for network in NETWORKS:
        for label in labels.values():
            assert re.search(rf"{re.escape(label)}[0-9a-f]* · {re.escape(network)} · tanh · 8-bit", page), (
                label,
                network,
            )

    # the same files: the sweep may go on; a changed file: refused, naming both hashes
    spec = load_sweep(path)
    check_data_unchanged(spec, str(folder))
    write_npz(tmp_path / "data" / "blobs.npz", seed=7)
    changed = load_sweep(path)
    new_sha = sha256_of(tmp_path / "data" / "blobs.npz")
    assert changed.trials[0].dataset == f"{tmp_path}/data/blobs.npz@{new_sha}"
    with pytest.raises(SweepError) as refused:
        check_data_unchanged(changed, str(folder))
    message = str(refused.value)
    assert f"started on the data file {tmp_path}/data/blobs.npz with SHA-256 {npz_sha[:12]}..." in message
    assert f"but it now has SHA-256 {new_sha[:12]}...: the file changed or moved since" in message
    assert "\n" not in message


def test_a_custom_network_seed_does_not_depend_on_its_batch_mates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "blobs.npz")
    common = dict(
        dataset="blobs.npz", architecture="9-5-3-2", activation="relu", epochs=5, batch_size=32, learning_rate=0.01
    )
    run_trial(TrialConfig(seeds=(3,), **common), tmp_path / "alone")
    run_trial(TrialConfig(seeds=(1, 3, 4), **common), tmp_path / "shared")
    alone = pl.read_parquet(f"{tmp_path}/alone/mi/*.parquet")
    shared = pl.read_parquet(f"{tmp_path}/shared/mi/*.parquet").filter(pl.col("seed") == 3)
    columns = [c for c in alone.columns if c != "trial"]
    assert alone.height == 6 * 5  # epochs 0..5 x four hidden layers and the output
    assert alone.select(columns).sort("epoch", "layer").equals(shared.select(columns).sort("epoch", "layer"))
    metrics = [
        pl.read_parquet(f"{tmp_path}/{name}/metrics/*.parquet").filter(pl.col("seed") == 3)
        for name in ("alone", "shared")
    ]
    columns = [c for c in metrics[0].columns if c != "trial"]
    assert metrics[0].select(columns).sort("epoch").equals(metrics[1].select(columns).sort("epoch"))


def test_a_trial_refuses_a_file_that_changed_since_it_was_set_up(tmp_path):
    write_npz(tmp_path / "blobs.npz")
    config = pin_dataset(TrialConfig(dataset=str(tmp_path / "blobs.npz"), architecture="4-2", epochs=1))
    before = config.dataset.rsplit("@", 1)[1]
    write_npz(tmp_path / "blobs.npz", seed=3)
    with pytest.raises(DataError) as refused:
        run_trial(config, tmp_path / "out")
    assert str(refused.value) == (
        f"{tmp_path}/blobs.npz: the file changed: its SHA-256 is {sha256_of(tmp_path / 'blobs.npz')[:12]}..., but this "
        f"trial was set up with {before[:12]}...; put that version back, or start over on the new file "
        f"(ibray sweep --overwrite, or a new --out for ibray trial)"
    )
    assert not (tmp_path / "out").exists()
    # the pinned value alone loads the same data as the path did
    write_npz(tmp_path / "blobs.npz")
    assert np.array_equal(load_dataset(config.dataset).x, load_dataset(str(tmp_path / "blobs.npz")).x)


def test_the_trial_command_on_a_file_it_generated_in_one_line(tmp_path, monkeypatch, capsys):
    """The README's example: a generated .npz, a custom network, results that verify."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(512, 10))
    np.savez("my.npz", x=x, y=(x.sum(axis=1) > 5).astype(int))
    args = [
        "trial",
        "--dataset",
        "my.npz",
        "--architecture",
        "8-4-2",
        "--seeds",
        "0-1",
        "--epochs",
        "3",
        "--out",
        "results/mine",
    ]
    assert main(args) == 0
    sha = sha256_of(tmp_path / "my.npz")
    assert f"trial my.npz-{sha[:8]}-8-4-2-tanh-8b-" in capsys.readouterr().out
    info = json.loads((tmp_path / "results" / "mine" / "trial.json").read_text())
    assert info["config"]["dataset"] == f"{tmp_path}/my.npz@{sha}" and info["status"] == "complete"
    assert main(["verify", "results/mine"]) == 0
