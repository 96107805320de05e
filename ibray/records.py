"""The Parquet schema of ibray's results, declared once, and the atomic writer.

A results folder holds two tables, each as many Parquet part files:

    <out>/mi/part-w<write>-e<epoch>.parquet       a row per (seed, phase, epoch, layer, estimator)
    <out>/metrics/part-w<write>-e<epoch>.parquet  a row per (seed, phase, epoch)

<write> counts the trial's writes (1, 2, ...), kept in its checkpoint, so two writes never
share a name, whatever the seeds' epochs (a restarted seed starts again at epoch 0); <epoch>
is the slowest seed's epoch at that write, for people reading the folder. Folders written
before this scheme (part-<first>-<last>.parquet) load the same.

A sweep puts one such folder per trial under <root>/<sweep>/trials/<trial>/, so that
`<root>/<sweep>/**/mi/*.parquet` is one data set. Every row carries its axes (sweep, trial,
dataset, architecture, activation, bits, seed, restarts), so analysis never parses paths.
This schema is the contract with `analysis/`, which checks it on load.

A results folder is a local path or any filesystem URI pyarrow resolves (s3://, gs://,
file://, ...), written atomically through ibray.storage; a Parquet part is serialized in
memory first, so a failed serialization never leaves a partial object behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ibray.errors import TrialStateError
from ibray.storage import (
    is_uri,
    join,
    read_text,
    replace_atomically,
    resolve,
    write_bytes_atomic,
    write_text_atomic,
)

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
        ("estimator", pa.string()),  # 'exact', 'bin<n>', 'abin<n>', 'kde', 'kde_lower', 'knn', 'edge' or 'renyi'
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


def write_atomic(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file so that `path` is either absent or complete."""
    if is_uri(path):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        write_bytes_atomic(buffer.getvalue(), path)
        return
    replace_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


# -- trial.json -------------------------------------------------------------------------------
TRIAL_FILE = "trial.json"


TRIAL_LOCK = "trial.lock"  # in a trial folder written by `ibray trial`: who is writing it
CHECKPOINT_FILE = "checkpoint.pt"  # in a trial folder: the state it resumes from (ibray.run writes it)


@contextlib.contextmanager
def trial_lock(folder: str | Path):
    """Hold `<folder>/trial.lock` while a trial writes there: a second writer is refused with a
    TrialStateError naming the holder (host, pid, since when).

    An exclusive flock on a local file: the kernel frees it when its process ends, however
    (kill -9 included), so a dead writer never blocks a rerun. The file stays beside the
    trial's results, its contents describing the last holder; a holder that wrote no
    trial.json (bad input, refused before anything started) removes the lock file and the
    folder it made, so that a failed command leaves nothing behind."""
    import fcntl
    import socket
    import time

    folder = Path(folder)
    made_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TRIAL_LOCK
    made_file = not path.exists()
    handle = open(path, "a+", encoding="utf-8")
    held = False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TrialStateError(
                f"--out {folder}: {holder} is writing a trial there; wait for it to end (or stop it) "
                f"and run again to continue, or pick another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        handle.write(f"ibray trial (pid {os.getpid()} on {socket.gethostname()}, since {since})")
        handle.flush()
        held = True
        yield
    finally:
        if held and made_file and not (folder / TRIAL_FILE).exists():
            path.unlink(missing_ok=True)
            if made_folder and not any(folder.iterdir()):
                folder.rmdir()
        handle.close()  # closing releases the lock


def write_trial_info(
    out: str | Path,
    *,
    sweep: str,
    trial: str,
    status: str,
    epochs_run: int,
    parts: int,
    restarts: dict[int, int],
    config: dict,
    layers: list[str] | None = None,
) -> None:
    """Replace a trial folder's trial.json: what the folder holds and how far it got.

    status: 'running' or 'complete'; epochs_run: epochs of the slowest seed; parts: the
    writes so far (part files are numbered by them); restarts: each seed's kept attempt;
    config: the TrialConfig as a dict. `ibray verify` checks the rows against it, and
    analysis reads it (by its keys, never by importing ibray). layers: the measured layers'
    names, given for an own module (its layers are known once it is built).
    """
    info = {
        "sweep": sweep,
        "trial": trial,
        "status": status,
        "epochs_run": epochs_run,
        "parts": parts,
        "restarts": {str(seed): count for seed, count in restarts.items()},
        "config": config,
        **({"layers": layers} if layers is not None else {}),
    }
    write_text_atomic(json.dumps(info, indent=2), join(out, TRIAL_FILE))


def read_trial_info(out: str | Path) -> dict | None:
    """The trial.json of a trial folder (path or URI); None when there is none."""
    where = join(out, TRIAL_FILE)
    try:
        text = read_text(where)
        return None if text is None else json.loads(text)
    except (OSError, ValueError) as error:
        raise TrialStateError(
            f"{where} is unreadable ({error}); move the folder aside or pick another --out"
        ) from error


def list_parts(folder: str | Path) -> list[str | Path]:
    """The part-*.parquet files in a table folder, sorted; [] when the folder does not exist."""
    if not is_uri(folder):
        return sorted(Path(folder).glob("part-*.parquet"))
    filesystem, inner = resolve(folder)
    infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join(folder, n) for n in names if n.startswith("part-") and n.endswith(".parquet")]


def remove_temporaries(out: str | Path) -> None:
    """Delete the temporary files a killed writer left in a local results folder.

    They never hold results a reader would see (those appear only by rename); a resumed run
    writes its own."""
    if is_uri(out) or not Path(out).is_dir():
        return
    for leftover in Path(out).glob("**/.*.tmp"):
        leftover.unlink(missing_ok=True)


class ResultsWriter:
    """Buffers columnar batches of both tables and writes them as part files."""

    def __init__(self, out: str | Path) -> None:
        self.out = out if is_uri(out) else Path(out)
        self._batches: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
        self._pending: list = []

    def add(self, measurement) -> None:
        """Buffer a measurement: an object with `.mi` and `.metrics` dicts of equal-length
        columns. `.mi` is read only at the next flush, so it may still be computing."""
        self._pending.append(measurement)

    def _settle(self) -> None:
        for measurement in self._pending:
            for name in TABLES:
                columns = getattr(measurement, name)
                if columns and len(columns["seed"]):
                    self._batches[name].append(pa.Table.from_pydict(columns, schema=TABLES[name]))
        self._pending.clear()

    def flush(self, write: int, epoch: int) -> list[Path]:
        """Write the buffered rows as `<table>/part-w<write>-e<epoch>.parquet`; returns the files.

        `write` numbers the trial's writes; a run resumed from the checkpoint of write k
        rewrites the parts k+1, ... under the same names with the same rows (training is
        deterministic) instead of adding duplicates.
        """
        self._settle()
        written = []
        for name, batches in self._batches.items():
            if not batches:
                continue
            path = join(self.out, name, part_name(write, epoch))
            write_atomic(pa.concat_tables(batches), path)
            written.append(path)
            batches.clear()
        return written

    def remove_parts_after(self, write: int) -> None:
        """Delete the parts of writes after `write`: a run that resumes from the checkpoint of
        `write` (0: from scratch) writes them again, and rows must never be there twice.

        From scratch, parts of the older naming go too: nothing in the folder is kept."""
        for name in TABLES:
            for path in list_parts(join(self.out, name)):
                number = part_write(str(path).rsplit("/", 1)[-1])
                if (number is None and write == 0) or (number is not None and number > write):
                    _delete(path)

    def drop_seed(self, seed: int, restarts: int) -> None:
        """Remove a discarded attempt of a seed from the buffer and from files already written."""
        self._settle()
        for name, batches in self._batches.items():
            batches[:] = [t.filter(pc.invert(_attempt(t, seed, restarts))) for t in batches]
            for path in list_parts(join(self.out, name)):
                table = pq.read_table(str(path))
                stale = _attempt(table, seed, restarts)
                if pc.any(stale).as_py():
                    write_atomic(table.filter(pc.invert(stale)), path)


_PART = re.compile(r"^part-w(\d+)-e(\d+)\.parquet$")


def part_name(write: int, epoch: int) -> str:
    return f"part-w{write:06d}-e{epoch:06d}.parquet"


def part_write(name: str) -> int | None:
    """The write number of a part file's name; None for a name of the older scheme."""
    match = _PART.match(name)
    return int(match.group(1)) if match else None


def _delete(path: str | Path) -> None:
    if is_uri(path):
        filesystem, inner = resolve(path)
        filesystem.delete_file(inner)
    else:
        Path(path).unlink(missing_ok=True)


def _attempt(table: pa.Table, seed: int, restarts: int):
    return pc.and_(pc.equal(table["seed"], seed), pc.equal(table["restarts"], restarts))
