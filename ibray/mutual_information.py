"""Exact entropy and mutual information from the discrete states of a layer; binning.

Knows nothing of networks: it takes the integer codes of a layer (one row per sample, one
column per neuron) and the labels, and returns bits. X is uniform over the N samples and the
network is deterministic, so I(X;T) = H(T) and I(T;Y) = H(T) + H(Y) - H(T,Y).

Exact means exact: rows are identified by sorting (numpy.unique on bit-packed words), never
by a hash that can collide. Rows wider than one 64-bit word are identified word by word:
after each word the rows are replaced by their dense rank, which needs only log2(rows) bits,
so the next word fits beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_WORD_BITS = 63  # keys stay non-negative int64


@dataclass(frozen=True)
class LayerInformation:
    """Per-seed results for one layer: arrays of shape (seeds,)."""

    h_t: np.ndarray  # H(T) in bits
    mi_xt: np.ndarray  # I(X;T) in bits
    mi_ty: np.ndarray  # I(T;Y) in bits
    n_states: np.ndarray  # distinct rows of T


def _bits(top: int) -> int:
    return max(int(top).bit_length(), 0)


def _pack_words(columns: list[np.ndarray], widths: list[int], rank_bits: int) -> list[list[int]]:
    """Group consecutive columns into words: the first holds 63 bits, later ones leave room
    for the dense rank of everything before them."""
    words: list[list[int]] = [[]]
    used = 0
    for index, width in enumerate(widths):
        budget = _WORD_BITS if len(words) == 1 else _WORD_BITS - rank_bits
        if width > _WORD_BITS - rank_bits:
            raise ValueError(f"column {index} needs {width} bits; at most {_WORD_BITS - rank_bits} supported")
        if used + width > budget:
            words.append([])
            used = 0
        words[-1].append(index)
        used += width
    return words


def _unique(key: np.ndarray, inverse: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Sorted distinct values of an int64 key, the index of each row's value, and the counts.

    torch's sort-based unique is several times faster than numpy's on the CPU, and exact.
    """
    values, *rest = torch.unique(torch.from_numpy(key), sorted=True, return_inverse=inverse, return_counts=True)
    if inverse:
        return values.numpy(), rest[0].numpy(), rest[1].numpy()
    return values.numpy(), None, rest[0].numpy()


def dense_ids(codes: np.ndarray) -> np.ndarray:
    """Map each row of a non-negative integer matrix (rows, columns) to its dense rank.

    Two rows get the same id exactly when they are equal; ids are 0..(distinct rows - 1) and
    follow the lexicographic order of the rows.
    """
    codes = _check_codes(codes)
    columns = [codes[:, j] for j in range(codes.shape[1])]
    return _rank_columns(columns, final=None)[0]


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (rows, columns), got shape {codes.shape}")
    if codes.dtype.kind not in "ui":
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codes.dtype.kind == "i" and codes.size and codes.min() < 0:
        raise ValueError("codes must be non-negative")
    return codes


def _rank_columns(columns: list[np.ndarray], final: np.ndarray | None):
    """Rank rows given as columns, word by word. With `final` (the labels), the last word also
    holds the label, and the result is (ids of the rows with label, distinct values, counts)."""
    rows = len(columns[0]) if columns else len(final)
    widths = [_bits(c.max()) if len(c) else 0 for c in columns]
    if final is not None:
        columns = columns + [final]
        widths = widths + [max(_bits(final.max()), 1)]
    rank_bits = max(1, int(rows).bit_length())
    words = _pack_words(columns, widths, rank_bits)
    ids = None
    for number, word in enumerate(words):
        key = np.zeros(rows, dtype=np.int64) if ids is None else ids
        for index in word:
            key = (key << widths[index]) | columns[index].astype(np.int64)
        last = number == len(words) - 1
        values, ids, counts = _unique(key, inverse=not last or final is None)
        if last:
            return ids, values, counts
    raise AssertionError("unreachable")


def _entropy(counts: np.ndarray, owner: np.ndarray, groups: int, n: int) -> np.ndarray:
    """Entropy in bits per group, from the counts of states and the group that owns each state."""
    p = counts / n
    return np.bincount(owner, weights=-p * np.log2(p), minlength=groups)


def layer_information(codes: np.ndarray, labels: np.ndarray) -> LayerInformation:
    """Exact H(T), I(X;T), I(T;Y) and the number of states, for one or many seeds.

    codes: (samples, neurons) or (seeds, samples, neurons) non-negative integers.
    labels: (samples,) non-negative integers.
    All seeds are counted in one sort: the seed is the leading column of every row.
    """
    codes = np.asarray(codes)
    if codes.ndim == 2:
        codes = codes[None]
    seeds, n, width = codes.shape
    flat = _check_codes(codes.reshape(seeds * n, width))
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"{n} rows of codes but {labels.shape[0]} labels")
    seed_of_row = np.repeat(np.arange(seeds, dtype=np.int64), n)
    columns = [seed_of_row] + [flat[:, j] for j in range(width)]
    _, joint, joint_counts = _rank_columns(columns, final=np.tile(labels, seeds))

    # Distinct (seed, T, Y) values come sorted, so the label is the lowest bits of each value
    # and the (seed, T) part changes exactly where a new state of T starts.
    label_bits = max(_bits(labels.max()), 1)
    state_part = joint >> label_bits
    starts = np.flatnonzero(np.concatenate([[True], state_part[1:] != state_part[:-1]]))
    state_counts = np.add.reduceat(joint_counts, starts)
    # The seed owning each distinct value: values are sorted with the seed leading, so the
    # owner is non-decreasing; recover it from how many rows each seed contributes.
    first_row = np.cumsum(joint_counts) - joint_counts
    joint_owner = first_row // n
    state_owner = joint_owner[starts]

    h_t = _entropy(state_counts, state_owner, seeds, n)
    h_ty = _entropy(joint_counts, joint_owner, seeds, n)
    label_p = np.bincount(labels) / n
    label_p = label_p[label_p > 0]
    h_y = float(-(label_p * np.log2(label_p)).sum())
    mi_ty = np.maximum(h_t + h_y - h_ty, 0.0)  # float rounding can dip a hair below zero
    n_states = np.bincount(state_owner, minlength=seeds)
    return LayerInformation(h_t=h_t, mi_xt=h_t.copy(), mi_ty=mi_ty, n_states=n_states)


def float_codes(values: np.ndarray) -> np.ndarray:
    """Exact integer codes of float32 values: their bit patterns, with -0.0 taken as 0.0.

    The 32-bit network's MI is computed on its exact float32 values; equal floats give equal
    codes and different floats different codes.
    """
    values = np.ascontiguousarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 = 0.0
    if np.isnan(values).any():
        raise ValueError("activations contain NaN; the network diverged")
    return values.view(np.uint32)


def bin_codes(values: np.ndarray, bins: int, low, high) -> np.ndarray:
    """Uniform binning of activations into `bins` bins over [low, high] (the earlier studies).

    low/high broadcast against values (e.g. one range per seed of shape (seeds, 1, 1)).
    Values outside the range fall into the first or last bin.
    """
    values = np.asarray(values, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    span = np.asarray(high, dtype=np.float64) - low
    span = np.where(span > 0, span, 1.0)
    index = np.floor((values - low) / span * bins)
    return np.clip(index, 0, bins - 1).astype(np.int32)
