"""What a data set is to ibray: arrays, labels and a train/test split, and its one error.

`Dataset` is what every loader returns (built-in sets in data.py, the user's files in
data_files.py) and what a trial trains on; `DataError` is what every loader raises for a
problem the user can fix, its message saying how.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ibray.errors import DataError


# eq=False: generated __eq__/__hash__ would compare arrays element-wise and fail.
@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # a built-in's name, or a file's pinned value (absolute path@SHA-256, see TrialConfig)
    # (samples, features) float32; synthetic: 0/1 bits, mnist: pixels in [0, 1]; files: as given
    # (images: each sample's pixels flat, in C order: channel by channel, row by row)
    x: np.ndarray
    y: np.ndarray  # (samples,) int64 class labels 0..n_classes-1
    train_idx: np.ndarray  # int64 indices into x / y, sorted
    test_idx: np.ndarray  # int64 indices, sorted; disjoint from train_idx, together all samples
    n_classes: int
    # images: (height, width) in pixels, one channel (mnist, a file's x of (N, H, W)), or
    # (channels, height, width) (a file's x of (N, C, H, W)); None: feature rows
    image_shape: tuple[int, ...] | None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: its image shape, or (features,)."""
        return self.image_shape if self.image_shape is not None else (int(self.x.shape[1]),)


def stratified_split(y: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 (train, test) indices; each class sends round(fraction * size) to train."""
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train_parts = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_train = int(round(train_fraction * members.size))
        train_parts.append(rng.permutation(members)[:n_train])
    train_idx = np.sort(np.concatenate(train_parts)).astype(np.int64)
    in_train = np.zeros(y.shape[0], dtype=bool)
    in_train[train_idx] = True
    test_idx = np.flatnonzero(~in_train).astype(np.int64)
    return train_idx, test_idx
