"""The user's own data files as data sets: .npz, .parquet and .csv, checked and pinned.

.npz: arrays x (samples, features), or images (samples, height, width) or (samples, channels,
height, width), and y (labels), optionally `split`; .parquet / .csv:
numeric feature columns and a label column, optionally a `split` column. A file is read once
into memory, hashed (SHA-256) and parsed from those same bytes, so the hash names exactly the
data that was checked. Every problem a user can fix raises DataError naming the file, what is
wrong and the fix.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np

from ibray.data_names import DATA_FILE_TYPES, DEFAULT_LABEL_COLUMN, DataFile
from ibray.dataset import Dataset, stratified_split
from ibray.errors import DataError

# Data files. The output layer has a neuron per class, so labels are a small set 0..K-1.
MAX_CLASSES = 1000
# The exact count packs a float network's 32-bit codes beside a sample's rank (bit_length of
# the sample count) into a 63-bit word, so 2^30 samples is as many as it takes.
MAX_SAMPLES = 2**30
SPLIT_NAME = "split"  # the array (.npz) or column (tables) that fixes the train/test split


def load_file(
    file: DataFile, train_fraction: float = 0.8, split_seed: int = 0, label_column: str = DEFAULT_LABEL_COLUMN
) -> Dataset:
    """A data file as a Dataset named by its pinned value (absolute path, label column when
    not 'label', SHA-256 of its bytes), which is what a TrialConfig holds for it.

    .npz: array x (samples, features), or images (samples, height, width) or (samples, channels,
    height, width), kept flat with their image shape; array y (samples,) of labels, optional
    array `split`.
    .parquet / .csv: a column `label_column` of labels, optional column `split`, every other
    column a numeric feature. Labels are integers 0..K-1 (2 <= K <= MAX_CLASSES), each
    occurring; `split` marks each sample 1/true/'train' or 0/false/'test'. A relative path is
    taken from the working directory. A pinned value whose file now has another SHA-256 is
    refused: the trials of one sweep must all see the same data.
    """
    path = os.path.abspath(os.path.expanduser(file.path))
    column = file.label_column or label_column
    if file.label_column and label_column not in (DEFAULT_LABEL_COLUMN, file.label_column):
        raise DataError(
            f"{path}: the value names label column {file.label_column!r}, the caller {label_column!r}; give one of them"
        )
    suffix = file.suffix
    if suffix not in DATA_FILE_TYPES:
        raise DataError(f"{path}: unknown file type {suffix!r}; give a .npz, .parquet or .csv file")
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file; check the path (a relative path is taken from the working directory, {os.getcwd()})"
        ) from None
    except OSError as error:
        raise DataError(
            f"{path}: cannot read the data file ({error.strerror or error}); check that it is a readable file"
        ) from None
    sha256 = hashlib.sha256(raw).hexdigest()
    if file.sha256 is not None and sha256 != file.sha256:
        raise DataError(
            f"{path}: the file changed: its SHA-256 is {sha256[:12]}..., but this trial was set up with "
            f"{file.sha256[:12]}...; put that version back, or start over on the new file (ibray sweep --overwrite, "
            f"or a new --out for ibray trial)"
        )
    image_shape = None
    if suffix == ".npz":
        x, y, split, image_shape = _read_npz(path, raw)
    else:
        x, y, split = _read_table(path, raw, suffix, column)
    x, y = _checked_samples(path, x, y, f"label column {column!r}" if suffix != ".npz" else "y")
    n_classes = int(y.max()) + 1
    if split is not None:
        train_idx, test_idx = _marked_split(path, split, y.shape[0])
    else:
        _check_class_sizes(path, y, n_classes, train_fraction)
        train_idx, test_idx = stratified_split(y, train_fraction, split_seed)
    name = DataFile(path, None, sha256).identity(column)
    return Dataset(name, x, y, train_idx, test_idx, n_classes=n_classes, image_shape=image_shape)


def _read_npz(path: str, raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, ...] | None]:
    """x flattened to (samples, features), y, the split marks and x's image shape (None for
    feature rows)."""
    how = "save it with numpy.savez(path, x=features, y=labels)"
    try:
        # allow_pickle=False: a data file must never run code; an object array is refused
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            names = list(archive.files)
            missing = [n for n in ("x", "y") if n not in names]
            if missing:
                found = ", ".join(names) if names else "none"
                raise DataError(f"{path}: no array {' or '.join(map(repr, missing))} (arrays found: {found}); {how}")
            arrays = {n: archive[n] for n in ("x", "y", SPLIT_NAME) if n in names}
    except DataError:
        raise
    except ValueError as error:
        if "pickle" in str(error):
            raise DataError(
                f"{path}: holds Python objects (pickled arrays), which ibray does not load; {how} from numeric arrays"
            ) from None
        raise DataError(f"{path}: not a readable .npz file ({_first_line(error)}); {how}") from None
    except Exception as error:  # zipfile, zlib and numpy's format reader each raise their own kinds
        raise DataError(
            f"{path}: not a readable .npz file ({type(error).__name__}: {_first_line(error)}); {how}"
        ) from None
    x, y = arrays["x"], arrays["y"]
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: x holds {x.dtype} values, not numbers; {how} with numeric features")
    shapes = "(samples, features), or images as (samples, height, width) or (samples, channels, height, width)"
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{path}: x has shape {x.shape}; give it as {shapes}")
    if x.ndim > 2 and 0 in x.shape[1:]:
        raise DataError(f"{path}: x has shape {x.shape}, images without pixels; give it as {shapes}")
    image_shape = tuple(int(side) for side in x.shape[1:]) if x.ndim > 2 else None
    return x.reshape(x.shape[0], math.prod(x.shape[1:])), y, arrays.get(SPLIT_NAME), image_shape


def _read_table(
    path: str, raw: bytes, suffix: str, label_column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import pyarrow as pa  # tables only; pyarrow is already a dependency of the results

    kind = "Parquet" if suffix == ".parquet" else "CSV"
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(pa.BufferReader(raw))
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(pa.BufferReader(raw))
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
        raise DataError(
            f"{path}: not a readable {kind} file ({_first_line(error)}); write a table with a header of column names, "
            f"the features and a {label_column!r} column"
        ) from None
    names = table.column_names
    if label_column not in names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise DataError(
            f"{path}: no label column {label_column!r} (columns: {shown}); set label_column (--label-column) to the "
            f"column that holds the labels"
        )
    features = [n for n in names if n not in (label_column, SPLIT_NAME)]
    if not features:
        raise DataError(f"{path}: no feature columns besides {label_column!r}; add at least one numeric column")
    columns = []
    for name in features:
        column = table.column(name)
        if not (
            pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)
        ):
            raise DataError(
                f"{path}: feature column {name!r} holds {column.type} values, not numbers; encode it as numbers or drop it"
            )
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{path}: feature column {name!r} has {column.null_count} empty value(s), the first at row {row} (counting from 0); fill or drop them"
            )
        columns.append(column.to_numpy(zero_copy_only=False).astype(np.float64))
    x = np.stack(columns, axis=1)
    labels = _column_values(path, table.column(label_column), f"label column {label_column!r}")
    split = _column_values(path, table.column(SPLIT_NAME), f"column {SPLIT_NAME!r}") if SPLIT_NAME in names else None
    return x, labels, split


def _column_values(path: str, column, what: str) -> np.ndarray:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{path}: {what} has {column.null_count} empty value(s), the first at row {row} (counting from 0); fill or drop them"
        )
    return column.to_numpy(zero_copy_only=False)


def _checked_samples(path: str, x: np.ndarray, y: np.ndarray, label_name: str) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 (samples, features) and y as int64 labels 0..K-1, or a DataError."""
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:  # a column or row vector is one label per sample too
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"{path}: {label_name} has shape {y.shape}; give one label per sample, shape (samples,)")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{path}: x has {x.shape[0]:,} samples but {label_name} has {y.shape[0]:,} labels; give one label per sample"
        )
    if x.shape[0] < 2:
        raise DataError(f"{path}: {x.shape[0]} sample(s); a data set needs at least two (one to train on, one to test)")
    if x.shape[0] > MAX_SAMPLES:
        raise DataError(f"{path}: {x.shape[0]:,} samples; at most {MAX_SAMPLES:,} (the exact MI's counting)")
    if x.shape[1] < 1:
        raise DataError(f"{path}: x has no features (shape {x.shape}); give at least one feature per sample")
    with np.errstate(over="ignore", invalid="ignore"):
        features = x.astype(np.float32)
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: x holds {int(bad.sum()):,} value(s) that are NaN, infinite or beyond float32's range, the first at "
            f"row {row}, feature {col} (counting from 0); replace or drop those samples"
        )
    labels = _labels(path, y, label_name)
    return features, labels


def _labels(path: str, y: np.ndarray, label_name: str) -> np.ndarray:
    remap = "map the labels to 0..K-1 (e.g. np.unique(y, return_inverse=True)[1])"
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuf":
        example = _plain(y[0]) if y.size else ""
        kind = "text" if isinstance(example, (str, bytes)) else str(y.dtype)
        raise DataError(
            f"{path}: {label_name} holds {kind} values (e.g. {example!r}), not integer class labels; {remap}"
        )
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise DataError(
                f"{path}: {label_name} holds {_plain(y[row])!r} at row {row}, not an integer class label; {remap}"
            )
    low, high = _plain(y.min()), _plain(y.max())
    if low < 0:
        raise DataError(f"{path}: {label_name} holds the negative label {low!r}; labels are classes 0..K-1; {remap}")
    if high >= MAX_CLASSES:
        raise DataError(
            f"{path}: {label_name} holds the label {high!r}; at most {MAX_CLASSES} classes (labels 0..{MAX_CLASSES - 1}); {remap}"
        )
    labels = y.astype(np.int64)
    counts = np.bincount(labels)
    if (counts == 0).any():
        absent = np.flatnonzero(counts == 0)
        shown = ", ".join(map(str, absent[:5])) + (", ..." if absent.size > 5 else "")
        raise DataError(
            f"{path}: {label_name} runs from 0 to {int(high)} but never holds {shown}; every class 0..K-1 must occur; {remap}"
        )
    if counts.size < 2:
        raise DataError(f"{path}: {label_name} holds one class only (0); a classification needs at least two classes")
    return labels


def _smallest_class_for(train_fraction: float) -> int:
    """The fewest samples a class needs so that the stratified split sends some to each part."""
    n = 2
    while not 1 <= int(round(train_fraction * n)) <= n - 1:
        n += 1
    return n


def _check_class_sizes(path: str, y: np.ndarray, n_classes: int, train_fraction: float) -> None:
    counts = np.bincount(y, minlength=n_classes)
    sizes = [int(round(train_fraction * c)) for c in counts]
    short = [k for k, (count, size) in enumerate(zip(counts, sizes)) if not 1 <= size <= count - 1]
    if short:
        k = short[0]
        raise DataError(
            f"{path}: too few samples of class {k} ({int(counts[k])}) to split it with train_fraction {train_fraction}; "
            f"give every class at least {_smallest_class_for(train_fraction)} samples, or a {SPLIT_NAME!r} "
            f"{'array' if path.lower().endswith('.npz') else 'column'} that fixes the split"
        )


def _marked_split(path: str, split: np.ndarray, samples: int) -> tuple[np.ndarray, np.ndarray]:
    split = np.asarray(split)
    where = "array" if path.lower().endswith(".npz") else "column"
    if split.shape != (samples,):
        raise DataError(
            f"{path}: the {SPLIT_NAME!r} {where} has shape {split.shape}, expected ({samples},): one mark per sample"
        )
    if split.dtype.kind in "biuf":
        train, test = split == 1, split == 0
    elif split.dtype.kind in "OUS" and all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in split.tolist()):
        marks = np.char.lower(np.char.strip(split.astype(str)))
        train, test = marks == "train", marks == "test"
    else:
        train = test = np.zeros(samples, dtype=bool)
    if not (train | test).all():
        row = int(np.flatnonzero(~(train | test))[0])
        raise DataError(
            f"{path}: the {SPLIT_NAME!r} {where} holds {_plain(split[row])!r} at row {row}; mark each sample 1, true "
            f"or 'train' (training set), or 0, false or 'test' (test set)"
        )
    if not train.any() or not test.any():
        empty = "training" if not train.any() else "test"
        raise DataError(f"{path}: the {SPLIT_NAME!r} {where} leaves the {empty} set empty; mark some samples for each")
    return np.flatnonzero(train).astype(np.int64), np.flatnonzero(test).astype(np.int64)


def _plain(value):
    """A numpy scalar as the Python value it holds, so messages show 2, not np.int64(2)."""
    return value.item() if isinstance(value, np.generic) else value


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
