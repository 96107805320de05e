"""The Parquet schema of ibray's results, declared once, and the atomic writer.

A results folder holds two tables, each as many Parquet part files:

    <out>/mi/part-<first>-<last>.parquet       a row per (seed, phase, epoch, layer, estimator)
    <out>/metrics/part-<first>-<last>.parquet  a row per (seed, phase, epoch)

A sweep puts one such folder per trial under <root>/<sweep>/trials/<trial>/, so that
`<root>/<sweep>/**/mi/*.parquet` is one data set. Every row carries its axes (sweep, trial,
dataset, architecture, activation, bits, seed, restarts), so analysis never parses paths.
This schema is the contract with `analysis/`, which checks it on load.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

AXES = [
    ("sweep", pa.string()),  # sweep name ('' for a bare `ibray trial`)
    ("trial", pa.string()),  # trial id (TrialConfig.trial_id)
    ("dataset", pa.string()),
    ("architecture", pa.string()),
    ("activation", pa.string()),
    ("bits", pa.int32()),  # 2..16, or 32 for the float32 network
    ("seed", pa.int64()),  # the repetition's seed as asked for
    ("restarts", pa.int32()),  # times this seed was rerun after a dead start
    ("phase", pa.string()),  # 'prefit' (shuffled labels) or 'train'
    ("epoch", pa.int32()),  # epochs completed in this phase; 0 = before any training
]

MI_SCHEMA = pa.schema(
    AXES
    + [
        ("estimator", pa.string()),  # 'exact' or 'bin<n>'
        ("layer", pa.int32()),  # 1 = first hidden layer; the last is the softmax output
        ("layer_name", pa.string()),
        ("width", pa.int32()),  # neurons in the layer's output T
        ("mi_xt", pa.float64()),  # I(X;T) in bits
        ("mi_ty", pa.float64()),  # I(T;Y) in bits
        ("h_t", pa.float64()),  # H(T) in bits (= I(X;T) for a deterministic network)
        ("n_states", pa.int64()),  # distinct values of T over the data set
        ("t_min", pa.float64()),  # smallest activation of the layer over the data set
        ("t_max", pa.float64()),  # largest activation of the layer over the data set
    ]
)

METRICS_SCHEMA = pa.schema(
    AXES
    + [
        ("train_loss", pa.float64()),  # cross-entropy on the training split, true labels
        ("test_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("test_acc", pa.float64()),
    ]
)

TABLES = {"mi": MI_SCHEMA, "metrics": METRICS_SCHEMA}
MI_KEY = ["sweep", "trial", "seed", "phase", "epoch", "estimator", "layer"]
METRICS_KEY = ["sweep", "trial", "seed", "phase", "epoch"]


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file so that `path` is either absent or complete: write, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class ResultsWriter:
    """Buffers columnar batches of both tables and writes them as part files."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._batches: dict[str, list[pa.Table]] = {name: [] for name in TABLES}

    def add(self, measurement) -> None:
        """Buffer a measurement: an object with `.mi` and `.metrics` dicts of equal-length columns."""
        for name in TABLES:
            columns = getattr(measurement, name)
            if columns and len(columns["seed"]):
                self._batches[name].append(pa.Table.from_pydict(columns, schema=TABLES[name]))

    def pending(self) -> int:
        return sum(t.num_rows for batches in self._batches.values() for t in batches)

    def flush(self, tag: str) -> list[Path]:
        """Write the buffered rows as `<table>/part-<tag>.parquet`; returns the files written.

        Part names follow the epochs they cover, so a resumed run rewrites the same files with
        the same rows instead of adding duplicates.
        """
        written = []
        for name, batches in self._batches.items():
            if not batches:
                continue
            path = self.out / name / f"part-{tag}.parquet"
            write_atomic(pa.concat_tables(batches), path)
            written.append(path)
            batches.clear()
        return written

    def drop_seed(self, seed: int, restarts: int) -> None:
        """Remove a discarded attempt of a seed from the buffer and from files already written."""
        for name, batches in self._batches.items():
            batches[:] = [t.filter(pc.invert(_attempt(t, seed, restarts))) for t in batches]
            for path in sorted((self.out / name).glob("part-*.parquet")):
                table = pq.read_table(path)
                stale = _attempt(table, seed, restarts)
                if pc.any(stale).as_py():
                    write_atomic(table.filter(pc.invert(stale)), path)


def _attempt(table: pa.Table, seed: int, restarts: int):
    return pc.and_(pc.equal(table["seed"], seed), pc.equal(table["restarts"], restarts))
