"""Tests of analysis.aggregate against statistics known in advance."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from analysis_fixtures import table, write_trial

from analysis import aggregate
from analysis.load import load


def crafted(tmp_path, mi: pa.Table, metrics: pa.Table | None = None):
    write_trial(tmp_path / "t", mi, metrics if metrics is not None else table("metrics", epoch=[0]))
    return load([tmp_path])


def test_mean_variance_std_count(tmp_path):
    mi = table(
        "mi", seed=[0, 1, 2, 0, 1, 2], epoch=[0, 0, 0, 1, 1, 1], mi_xt=[1.0, 2.0, 3.0, 4.0, 4.0, 4.0], mi_ty=[0.5] * 6
    )
    stats = aggregate.mi_stats(crafted(tmp_path, mi).mi).collect()
    assert stats["epoch"].to_list() == [0, 1]
    assert stats["mi_xt_mean"].to_list() == [2.0, 4.0]
    assert stats["mi_xt_var"].to_list() == [1.0, 0.0]
    assert stats["mi_xt_std"].to_list() == [1.0, 0.0]
    assert stats["mi_ty_mean"].to_list() == [0.5, 0.5]
    assert stats["n"].to_list() == [3, 3]


def test_single_repetition_has_null_variance(tmp_path):
    stats = aggregate.mi_stats(crafted(tmp_path, table("mi", epoch=[0], mi_xt=[1.0])).mi).collect()
    assert stats["mi_xt_var"].to_list() == [None]
    assert stats["n"].to_list() == [1]


def test_metrics_stats_and_final(tmp_path):
    metrics = table(
        "metrics", seed=[0, 1, 0, 1], epoch=[0, 0, 5, 5], train_acc=[0.5, 0.5, 0.8, 1.0], test_acc=[0.5, 0.5, 0.7, 0.9]
    )
    results = crafted(tmp_path, table("mi", epoch=[0]), metrics)
    stats = aggregate.metrics_stats(results.metrics).collect()
    assert stats["train_acc_mean"].to_list() == pytest.approx([0.5, 0.9])
    assert stats["train_acc_var"].to_list() == pytest.approx([0.0, 0.02])
    final = aggregate.final_metrics(results.metrics).collect().row(0, named=True)
    assert final["test_acc_mean"] == pytest.approx(0.8)
    assert final["test_acc_std"] == pytest.approx(math.sqrt(0.02))
    assert (final["repetitions"], final["last_phase"], final["last_epoch"]) == (2, "train", 5)


def test_global_epoch_follows_prefit(tmp_path):
    mi = table("mi", phase=["prefit", "prefit", "prefit", "train", "train"], epoch=[0, 1, 2, 1, 2])
    stats = aggregate.mi_stats(crafted(tmp_path, mi).mi).collect()
    assert stats.select("phase", "epoch", "global_epoch").rows() == [
        ("prefit", 0, 0),
        ("prefit", 1, 1),
        ("prefit", 2, 2),
        ("train", 1, 3),
        ("train", 2, 4),
    ]


def test_median_deviating_repetition(tmp_path):
    # constant offsets 0, 1, 5 around a mean of 2 over 4 points: distances 4, 2, 6 -> seed 0
    epochs = [0, 1, 2, 3]
    parts = [
        table("mi", seed=seed, epoch=epochs, mi_xt=[offset] * 4, mi_ty=[0.0] * 4)
        for seed, offset in ((0, 0.0), (1, 1.0), (2, 5.0))
    ]
    results = crafted(tmp_path, pa.concat_tables(parts))
    distances = aggregate.deviation(results.mi).sort("seed").collect()
    assert distances["distance"].to_list() == pytest.approx([4.0, 2.0, 6.0])
    chosen = aggregate.median_deviating(results.mi).collect()
    assert chosen.select("seed", "repetitions").rows() == [(0, 3)]
    rows = aggregate.repetition_rows(results.mi, aggregate.median_deviating(results.mi)).collect()
    assert rows["seed"].unique().to_list() == [0] and rows.height == 4


def test_median_of_an_even_count_is_the_lower(tmp_path):
    parts = [
        table("mi", seed=seed, epoch=[0], mi_xt=[offset]) for seed, offset in ((0, 0.0), (1, 1.0), (2, 3.0), (3, 8.0))
    ]
    # mean 3: distances 3, 2, 0, 5 -> ranked seeds 2, 1, 0, 3 -> the second, seed 1
    chosen = aggregate.median_deviating(crafted(tmp_path, pa.concat_tables(parts)).mi).collect()
    assert chosen["seed"].to_list() == [1]


def test_same_seed_from_two_trials_counts_twice(tmp_path):
    mi = pa.concat_tables(
        [table("mi", trial="a", epoch=[0], mi_xt=[1.0]), table("mi", trial="b", epoch=[0], mi_xt=[3.0])]
    )
    stats = aggregate.mi_stats(crafted(tmp_path, mi).mi).collect()
    assert stats.select("mi_xt_mean", "n").rows() == [(2.0, 2)]


def test_progress_names_trials_without_trial_json(tmp_path):
    results = crafted(tmp_path, table("mi", trial="t0", epoch=[0, 3]))
    extra = tmp_path / "u" / "mi"
    extra.mkdir(parents=True)
    from ibray.records import write_atomic

    write_atomic(table("mi", trial="orphan", epoch=[0, 1]), extra / "part-0.parquet")
    results = load([tmp_path])
    rows = aggregate.progress(results.mi, results.trials).collect()
    assert rows.select("trial", "status", "seeds_written", "last_epoch").rows() == [
        ("orphan", "unknown", 1, 1),
        ("t0", "complete", 1, 3),
    ]


def test_completeness_names_the_epochs_where_repetitions_are_missing(tmp_path):
    # three repetitions at epochs 0 and 3, seed 2 missing at epochs 1 and 2 (as a lost part would)
    seeds = [0, 1, 2, 0, 1, 0, 1, 0, 1, 2]
    epochs = [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    mi = table("mi", seed=seeds, epoch=epochs, mi_xt=[1.0, 2.0, 9.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 9.0])
    stats = aggregate.mi_stats(crafted(tmp_path, mi).mi)
    rows = stats.collect()
    assert rows.select("epoch", "n", "repetitions", "complete").rows() == [
        (0, 3, 3, True),
        (1, 2, 3, False),
        (2, 2, 3, False),
        (3, 3, 3, True),
    ]
    summary = aggregate.completeness(stats).collect().row(0, named=True)
    assert {
        k: summary[k]
        for k in ("repetitions", "epochs", "incomplete_epochs", "fewest", "first_incomplete", "last_incomplete")
    } == {
        "repetitions": 3,
        "epochs": 4,
        "incomplete_epochs": 2,
        "fewest": 2,
        "first_incomplete": 1,
        "last_incomplete": 2,
    }
