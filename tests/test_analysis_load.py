"""Tests of analysis.load: the schema contract, finding files, deduplication, bad input."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from analysis_fixtures import curves, table, write_sweep, write_trial

from analysis.load import KEYS, SCHEMAS, ResultsError, load
from ibray import records


@pytest.mark.parametrize("name", ["mi", "metrics"])
def test_schema_matches_ibray_records(name):
    ibray_schema = pl.from_arrow(records.TABLES[name].empty_table()).schema
    assert dict(ibray_schema) == SCHEMAS[name]
    assert KEYS[name] == {"mi": records.MI_KEY, "metrics": records.METRICS_KEY}[name]


def test_load_sweep_finds_rows_trials_and_sweep_file(tmp_path):
    write_sweep(tmp_path, "alpha", trials=2, seeds_per_trial=3, epochs=10, layers=3, parts=3)
    results = load([tmp_path])
    assert results.mi.select(pl.len()).collect().item() == 6 * 11 * 3
    assert results.metrics.select(pl.len()).collect().item() == 6 * 11
    assert sorted(results.trials["trial"].to_list()) == ["trial000", "trial001"]
    assert results.incomplete == []
    assert list(results.sweep_files.values()) == ["name: alpha\nseeds: 0-5\n"]
    # a trial folder alone also finds its sweep's file; overlapping paths read each file once
    trial = tmp_path / "alpha" / "trials" / "trial000"
    alone = load([trial, trial / "mi"])
    assert alone.mi.select(pl.len()).collect().item() == 3 * 11 * 3
    assert len(alone.sweep_files) == 1


def test_duplicate_rows_are_kept_once(tmp_path):
    mi, metrics = curves([0, 1], epochs=4, layers=2, sweep="s", trial="t")
    folder = write_trial(tmp_path / "t", mi, metrics)
    records.write_atomic(mi.slice(0, 5), folder / "mi" / "part-again.parquet")
    records.write_atomic(metrics, folder / "metrics" / "part-again.parquet")
    results = load([tmp_path])
    assert results.mi.select(pl.len()).collect().item() == mi.num_rows
    assert results.metrics.select(pl.len()).collect().item() == metrics.num_rows


def test_only_the_highest_restart_of_a_seed_is_kept(tmp_path):
    mi = pa.concat_tables(
        [
            table("mi", epoch=[0, 1], seed=0, restarts=0, mi_xt=[9.0, 9.0]),
            table("mi", epoch=[0, 1], seed=0, restarts=1, mi_xt=[1.0, 2.0]),
            table("mi", epoch=[0, 1], seed=1, restarts=0, mi_xt=[3.0, 4.0]),
        ]
    )
    write_trial(tmp_path / "t", mi, table("metrics", epoch=[0, 1]))
    rows = load([tmp_path]).mi.sort("seed", "epoch").collect()
    assert rows.select("seed", "restarts", "mi_xt").rows() == [(0, 1, 1.0), (0, 1, 2.0), (1, 0, 3.0), (1, 0, 4.0)]


def test_running_trial_is_listed_as_incomplete(tmp_path):
    mi, metrics = curves([0], epochs=3, layers=2, sweep="s", trial="late")
    write_trial(tmp_path / "late", mi, metrics, status="running")
    write_trial(tmp_path / "done", *curves([1], epochs=3, layers=2, sweep="s", trial="done"))
    results = load([tmp_path])
    assert results.incomplete == ["s/late"]


def test_empty_folder(tmp_path):
    with pytest.raises(ResultsError, match="no ibray results"):
        load([tmp_path])


def test_missing_path(tmp_path):
    with pytest.raises(ResultsError, match="no such file or folder"):
        load([tmp_path / "nowhere"])


def test_folder_of_other_parquet_files(tmp_path):
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "data.parquet")
    with pytest.raises(ResultsError, match="not ibray output"):
        load([tmp_path])


def test_foreign_parquet_in_mi_folder(tmp_path):
    (tmp_path / "t" / "mi").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "t" / "mi" / "part-0.parquet")
    with pytest.raises(ResultsError, match=r"part-0.parquet: not an ibray mi table \(missing columns"):
        load([tmp_path])


def test_truncated_file(tmp_path):
    mi, metrics = curves([0], epochs=3, layers=2)
    folder = write_trial(tmp_path / "t", mi, metrics)
    part = folder / "mi" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(ResultsError, match="part-00000.parquet: not a readable Parquet file"):
        load([tmp_path])


def test_mixed_schemas(tmp_path):
    mi, metrics = curves([0], epochs=3, layers=2)
    write_trial(tmp_path / "a", mi, metrics)
    odd = mi.set_column(mi.schema.get_field_index("bits"), "bits", mi["bits"].cast(pa.string()))
    write_trial(tmp_path / "b", odd, metrics)
    with pytest.raises(ResultsError, match="bits is String, expected Int32"):
        load([tmp_path])


def test_broken_trial_json(tmp_path):
    folder = write_trial(tmp_path / "t", *curves([0], epochs=3, layers=2))
    (folder / "trial.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not an ibray trial.json"):
        load([tmp_path])


def test_started_trials_without_rows(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "trial.json").write_text(
        json.dumps({"sweep": "s", "trial": "t", "status": "running", "config": {}})
    )
    with pytest.raises(ResultsError, match="written no MI rows yet"):
        load([tmp_path])


def test_results_under_a_filesystem_uri_are_fetched_and_read(tmp_path):
    write_sweep(tmp_path, "alpha", trials=2, seeds_per_trial=2, epochs=3, layers=3)
    (tmp_path / "alpha" / "tune").mkdir()
    (tmp_path / "alpha" / "tune" / "part-0.parquet").write_bytes(b"Tune's, not ours")
    remote = load([(tmp_path / "alpha").as_uri()])
    local = load([tmp_path / "alpha"])
    assert remote.mi.collect().sort(KEYS["mi"]).equals(local.mi.collect().sort(KEYS["mi"]))
    assert list(remote.sweep_files.values()) == list(local.sweep_files.values())
    with pytest.raises(ResultsError, match="no such file or folder"):
        load([(tmp_path / "nowhere").as_uri()])
