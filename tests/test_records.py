"""The Parquet schema and its atomic writer."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ibray.records import METRICS_SCHEMA, ResultsWriter, part_name, part_write, write_atomic
from ibray.storage import replace_atomically


def rows(seed, restarts, epochs):
    n = len(epochs)
    axes = dict(
        sweep=[""] * n,
        trial=["t"] * n,
        dataset=["synthetic12"] * n,
        architecture=["syn"] * n,
        activation=["tanh"] * n,
        bits=[8] * n,
        seed=[seed] * n,
        restarts=[restarts] * n,
        phase=["train"] * n,
        epoch=list(epochs),
    )
    metrics = {**axes, "train_loss": [0.5] * n, "test_loss": [0.6] * n, "train_acc": [0.9] * n, "test_acc": [0.8] * n}
    return SimpleNamespace(mi={}, metrics=metrics)


def test_writer_writes_parts_and_drops_a_discarded_attempt(tmp_path):
    writer = ResultsWriter(tmp_path)
    writer.add(rows(0, 0, [0, 1]))
    writer.add(rows(1, 0, [0, 1]))
    assert writer.flush(1, 1) == [tmp_path / "metrics" / "part-w000001-e000001.parquet"]
    writer.add(rows(0, 0, [2]))
    writer.drop_seed(0, 0)
    writer.add(rows(0, 1, [0]))
    # the slowest seed is back at epoch 0: the write number keeps the name new
    assert writer.flush(2, 0) == [tmp_path / "metrics" / "part-w000002-e000000.parquet"]
    table = pq.read_table(tmp_path / "metrics").to_pydict()
    assert sorted(zip(table["seed"], table["restarts"], table["epoch"])) == [(0, 1, 0), (1, 0, 0), (1, 0, 1)]
    assert pq.read_schema(tmp_path / "metrics" / "part-w000001-e000001.parquet").equals(METRICS_SCHEMA)


def test_parts_after_a_checkpoint_are_removed_and_older_names_kept_on_resume(tmp_path):
    writer = ResultsWriter(tmp_path)
    for write in (1, 2, 3):
        writer.add(rows(0, 0, [write]))
        writer.flush(write, write)
    legacy = tmp_path / "metrics" / "part-000000-000400.parquet"
    write_atomic(pq.read_table(tmp_path / "metrics" / part_name(1, 1)), legacy)
    writer.remove_parts_after(2)  # resuming from the checkpoint of write 2
    names = sorted(p.name for p in (tmp_path / "metrics").iterdir())
    assert names == ["part-000000-000400.parquet", part_name(1, 1), part_name(2, 2)]
    assert [part_write(n) for n in names] == [None, 1, 2]
    writer.remove_parts_after(0)  # from scratch: nothing stays
    assert list((tmp_path / "metrics").iterdir()) == []


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "part.parquet"
    write_atomic(pa.table({"x": [0]}), target)

    class Broken(Exception):
        pass

    def half_then_fail(tmp):
        tmp.write_bytes(b"PAR1 half a file")  # the temporary file exists when the write fails
        assert tmp.exists() and tmp.parent == tmp_path
        raise Broken

    with pytest.raises(Broken):
        replace_atomically(target, half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]
    assert pq.read_table(target).to_pydict() == {"x": [0]}
    write_atomic(pa.table({"x": [1]}), target)
    assert pq.read_table(target).to_pydict() == {"x": [1]}
