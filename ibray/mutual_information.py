"""Exact entropy and mutual information from the discrete states of a layer; binning.

Knows nothing of networks: it takes the integer codes of a layer (one row per sample, one
column per neuron) and the labels, and returns bits. X is uniform over the N samples and the
network is deterministic, so I(X;T) = H(T) and I(T;Y) = H(T) + H(Y) - H(T,Y).

Exact means exact: rows are identified by sorting bit-packed integer keys, never by a hash
that can collide. A row wider than one 64-bit word is packed word by word: when the key is
full it is replaced by its dense rank among the seed's rows, which needs only log2(rows)
bits, so the next columns fit beside it. All seeds are sorted in one call: row by row, or as
one flat array whose keys carry their row's number on top, whichever is faster for the shape.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch

_WORD_BITS = 63  # keys stay non-negative int64
_SMALL = 16384  # keys (or rows of 32-bit keys) up to this many sort fastest in NumPy


@dataclass(frozen=True)
class LayerInformation:
    """Per-seed results for one layer: arrays of shape (seeds,)."""

    h_t: np.ndarray  # H(T) in bits
    mi_xt: np.ndarray  # I(X;T) in bits
    mi_ty: np.ndarray  # I(T;Y) in bits
    n_states: np.ndarray  # distinct rows of T


def _bits(top: int) -> int:
    """Bits needed to hold the non-negative integer `top`."""
    return int(top).bit_length()


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3:
        raise ValueError(f"codes must be (samples, neurons) or (seeds, samples, neurons), got shape {codes.shape}")
    if codes.dtype.kind not in "ui":
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codes.dtype.kind == "i" and codes.size and codes.min() < 0:
        raise ValueError("codes must be non-negative")
    return codes


def rank_rows(keys: np.ndarray) -> np.ndarray:
    """Dense rank of each value within its row: keys (seeds, samples) int64 -> ranks 0..distinct-1.

    Equal values get equal ranks and the order is kept, so a rank can stand in for the value
    when more columns are appended to the key.
    """
    order = np.argsort(keys, axis=1)
    ordered = np.take_along_axis(keys, order, axis=1)
    steps = np.zeros(keys.shape, dtype=np.int64)
    steps[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ranks = np.empty_like(steps)
    np.put_along_axis(ranks, order, np.cumsum(steps, axis=1), axis=1)
    return ranks


def _ranks_unless_distinct(keys: np.ndarray, used: int, first: bool) -> np.ndarray | None:
    """`rank_rows(keys)` of non-negative `used`-bit keys, or None where every row's keys are all
    distinct. With `first`, or where the row number does not fit above the keys: a sort, then
    (rows not all distinct) `rank_rows`. Else one sort of a flat array (torch's, with the order
    it took) answers both, about twice as fast as a sort, NumPy's argsort row by row and its
    gathers (a conv layer's codes: 0.86 s against 1.29 s for 70,000 x 338 codes of 10 seeds)."""
    seeds, samples = keys.shape
    if first or used + max(seeds - 1, 0).bit_length() > _WORD_BITS or keys.size <= _SMALL:
        ordered = _sorted_rows(keys, used)
        return None if (ordered[:, 1:] != ordered[:, :-1]).all() else rank_rows(keys)
    flat = keys | (np.arange(seeds, dtype=np.int64)[:, None] << used) if seeds > 1 else keys
    ordered, order = torch.sort(torch.from_numpy(np.ascontiguousarray(flat).reshape(-1)))
    ordered = ordered.numpy().reshape(seeds, samples)  # each row's keys in a block of its own, sorted
    new = ordered[:, 1:] != ordered[:, :-1]
    if new.all():
        return None
    steps = np.zeros(keys.shape, dtype=np.int64)
    steps[:, 1:] = new
    ranks = np.empty(keys.size, dtype=np.int64)
    ranks[order.numpy()] = np.cumsum(steps, axis=1).reshape(-1)
    return ranks.reshape(seeds, samples)


def _sorted_rows(keys: np.ndarray, used: int) -> np.ndarray:
    """Each row of non-negative `used`-bit keys sorted, as a (seeds, samples) array.

    The values may carry their row's number above bit `used` (then rows never share a value):
    the fastest sort here depends on the shape (measured on this project's machine). Few keys:
    NumPy, row by row (on 32-bit integers where they fit). Otherwise one torch.sort of a flat
    array whose keys have the row number on top: on 32-bit integers where the row number fits
    beside the key (about twice as fast again), else on 64-bit ones (several times faster than
    NumPy's on long int64 arrays), except short rows of 31-bit keys (NumPy on int32, row by
    row); NumPy row by row where the row number does not fit in the 63 bits.
    """
    seeds, samples = keys.shape
    fits_32 = used <= 31
    row_bits = max(seeds - 1, 0).bit_length()
    if keys.size <= _SMALL:
        return np.sort(keys.astype(np.int32) if fits_32 else keys, axis=1)
    if used + row_bits <= 31:
        flat = keys.astype(np.int32)
        if seeds > 1:
            flat |= np.arange(seeds, dtype=np.int32)[:, None] << used
    elif fits_32 and samples <= _SMALL:
        return np.sort(keys.astype(np.int32), axis=1)
    elif used + row_bits <= _WORD_BITS:
        flat = keys | (np.arange(seeds, dtype=np.int64)[:, None] << used) if seeds > 1 else keys
    else:
        return np.sort(keys, axis=1)
    return torch.sort(torch.from_numpy(np.ascontiguousarray(flat).reshape(-1))).values.numpy().reshape(seeds, samples)


_TRANSPOSE_BLOCK = 4096  # samples per block of the transposing copy (fits the caches)


def _by_neuron(codes: np.ndarray) -> np.ndarray:
    """codes (seeds, samples, width) as (width, seeds, samples), samples contiguous: in place
    when laid out so (the dense networks' codes), else copied over in blocks of samples (four
    times faster than one np.ascontiguousarray for a conv layer's 70,000 x 338 codes a seed)."""
    by_neuron = np.moveaxis(codes, 2, 0)
    if by_neuron.strides[-1] == by_neuron.itemsize:
        return by_neuron
    seeds, samples, width = codes.shape
    out = np.empty((width, seeds, samples), dtype=codes.dtype)
    for seed in range(seeds):
        for start in range(0, samples, _TRANSPOSE_BLOCK):
            out[:, seed, start : start + _TRANSPOSE_BLOCK] = codes[seed, start : start + _TRANSPOSE_BLOCK].T
    return out


@functools.lru_cache(maxsize=64)
def _spread_order(width: int) -> tuple[int, ...]:
    """0..width-1 in bit-reversed order (0, w/2, w/4, 3w/4, ...): every prefix spread evenly."""
    bits = max(1, (width - 1).bit_length())
    return tuple(sorted(range(width), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2)))


# Neurons copied into neuron order at a time, for rows wider than this (narrower rows are copied
# at once: NumPy's reductions over the samples of samples-major codes are slow where rows are short)
_COLUMN_BLOCK = 64


def _columns(codes: np.ndarray, neuron_major: np.ndarray | None, order, bits: list[int]):
    """(block, bits) of neurons `order` of codes (seeds, samples, width), each block (seeds,
    samples) with samples contiguous: views of `neuron_major` where given, else copied from codes
    _COLUMN_BLOCK neurons at a time, as they are reached (a conv layer's rows are mostly told
    apart within its first few words: 0.1 s against 0.34 for copying all of its 338 neurons,
    10 seeds x 70,000 samples)."""
    order = list(order)
    for start in range(0, len(order), 1 if neuron_major is not None else _COLUMN_BLOCK):
        if neuron_major is not None:
            yield neuron_major[order[start]], bits[order[start]]
            continue
        picked = order[start : start + _COLUMN_BLOCK]
        block = _by_neuron(np.take(codes, picked, axis=2))
        for number, neuron in enumerate(picked):
            yield block[number], bits[neuron]


def _packed_keys(codes: np.ndarray, tail: np.ndarray | None, tail_bits: int) -> tuple[np.ndarray, int]:
    """One int64 key per (seed, sample) such that keys are equal exactly when the rows of
    codes (and the tail column, if given) are equal, and ordered like the rows (rows wider
    than one key: like the rows with their neurons in `_spread_order`); and the
    number of bits the key uses, or -1 when the rows alone are all distinct already (then the
    key holds no tail and only tells the rows apart)."""
    seeds, samples, width = codes.shape
    rank_bits = max(1, int(samples).bit_length())
    key = np.zeros((seeds, samples), dtype=np.int64)
    used = used_words = 0
    # One (seeds, samples) block per neuron, samples contiguous: the packing reads each block
    # once. Codes laid out neurons before samples (the dense networks' layout) are read in
    # place; others are copied into that order first, or, rows of more than _COLUMN_BLOCK
    # neurons, in blocks of neurons as the packing reaches them (`_columns`).
    neuron_major = np.moveaxis(codes, 2, 0)
    if width <= _COLUMN_BLOCK:
        neuron_major = _by_neuron(codes)
    in_place = neuron_major.strides[-1] == neuron_major.itemsize
    if codes.size == 0:
        highs = np.zeros((width, seeds), dtype=np.int64)
    else:  # read in the codes' own order
        highs = neuron_major.max(axis=2) if in_place else codes.max(axis=1).T  # (width, seeds)
    bits = [_bits(top) for top in highs.max(axis=1)] if seeds else [0] * width
    order = range(width)
    if sum(bits) + tail_bits > _WORD_BITS and samples > 1:
        # Rows wider than one key (a conv layer's hundreds of neurons): ranked word by word, and
        # done once the rows are told apart. A neuron that is constant within every seed tells
        # no rows apart: left out. The others in `_spread_order`, so that neurons far apart (in an
        # image: the centre, not only the border) come first and the rows part sooner. Both
        # leave each seed's order of its rows, and so its numbers, independent of its batch
        # mates: the order is fixed by the width, and a left-out neuron is constant within it.
        lows = neuron_major.min(axis=2) if in_place else codes.min(axis=1).T
        varying = (lows != highs).any(axis=1)
        order = [i for i in _spread_order(width) if varying[i]]
    columns = _columns(codes, neuron_major if in_place else None, order, bits)
    if tail is not None:
        columns = itertools.chain(columns, [(np.broadcast_to(tail, (seeds, samples)), tail_bits)])
    for column, bits in columns:
        if bits > _WORD_BITS - rank_bits:
            raise ValueError(f"a code of {bits} bits is too wide; at most {_WORD_BITS - rank_bits} supported")
        if used + bits > _WORD_BITS:  # the key is full: replace it by its rank, then go on
            # Are every seed's rows told apart already? Then later columns cannot merge them.
            # The first time, the cheaper question first (a sort, not an argsort and gathers: rows
            # of a dense layer are mostly told apart by their first word); after that (rows that
            # did not part at once seldom part at the next word) one sort answers both.
            ranks = _ranks_unless_distinct(key, used, first=used_words == 0)
            if ranks is None:
                return key, -1
            key = ranks
            used = rank_bits
            used_words += 1
        key <<= bits
        key |= column
        used += bits
    return key, used


@functools.lru_cache(maxsize=8)
def _surprisal_table(samples: int) -> np.ndarray:
    """-p log2 p for p = c / samples, every count c = 0..samples (0 for c = 0 and c = samples)."""
    p = np.arange(1, samples + 1, dtype=np.float64) / samples
    return np.concatenate([[0.0], -p * np.log2(p)])


def _group_sums(starts: np.ndarray, row_starts: np.ndarray, total: int, surprisal: np.ndarray):
    """Per row of a flat sorted array: the sum of -p log2 p over its groups, and how many
    groups it has. `starts`: every group's first position, ascending, each row's first
    position among them; `row_starts`: each row's first position; `total`: the array's size.

    Each row is summed on its own (NumPy's pairwise sum over its groups), so a row's sums do
    not depend on the rows around it."""
    counts = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = total - starts[-1]
    first = np.searchsorted(starts, row_starts)  # each row's first group
    groups = np.diff(first, append=len(starts))
    return np.add.reduceat(surprisal[counts], first), groups


def _entropies(keys: np.ndarray, label_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H(T), H(T, Y) (bits) and the number of states per row of sorted keys whose lowest
    `label_bits` bits are the label.

    (T, Y) changes wherever the key does; T changes only where (T, Y) does, so the states are
    found among the joint groups' starts, not among all the samples again. A group's size is
    the distance to the next group's start; -p log2 p is looked up by size, not computed.
    """
    seeds, samples = keys.shape
    flat = keys.reshape(-1)
    new = np.empty(flat.shape, dtype=bool)
    new[0] = True
    np.not_equal(flat[1:], flat[:-1], out=new[1:])
    new[::samples] = True  # every row starts a group
    starts = np.flatnonzero(new)
    row_starts = np.arange(seeds) * samples
    surprisal = _surprisal_table(samples)
    h_ty, _ = _group_sums(starts, row_starts, flat.size, surprisal)
    state = flat[starts] >> label_bits
    state_new = np.empty(starts.shape, dtype=bool)
    state_new[0] = True
    np.not_equal(state[1:], state[:-1], out=state_new[1:])
    state_new[np.searchsorted(starts, row_starts)] = True  # every row starts a state
    h_t, n_states = _group_sums(starts[state_new], row_starts, flat.size, surprisal)
    return h_t, h_ty, n_states


def _label_entropy(labels: np.ndarray) -> float:
    """H(Y) in bits of integer labels."""
    label_p = np.bincount(labels) / len(labels)
    label_p = label_p[label_p > 0]
    return float(-(label_p * np.log2(label_p)).sum())


def _information(h_t: np.ndarray, h_ty: np.ndarray, n_states: np.ndarray, h_y: float, samples: int) -> LayerInformation:
    """The per-seed results from H(T), H(T,Y), the state counts and H(Y)."""
    mi_ty = np.maximum(h_t + h_y - h_ty, 0.0)  # float rounding can dip a hair below zero
    # An injective seed gets the shortcut's exact values whatever its batch mates: the sums
    # round differently from log2 N and H(Y), and a seed must not depend on its mates.
    injective = n_states == samples
    h_t[injective] = np.log2(samples)
    mi_ty[injective] = h_y
    return LayerInformation(h_t=h_t, mi_xt=h_t.copy(), mi_ty=mi_ty, n_states=n_states)


def _injective(seeds: int, samples: int, h_y: float) -> LayerInformation:
    """Every seed's rows all distinct: H(T) = log2 N and T determines Y."""
    everything = np.full(seeds, np.log2(samples))
    return LayerInformation(everything, everything.copy(), np.full(seeds, h_y), np.full(seeds, samples))


def layer_information(codes: np.ndarray, labels: np.ndarray) -> LayerInformation:
    """Exact H(T), I(X;T), I(T;Y) and the number of states, for one or many seeds.

    codes: (samples, neurons) or (seeds, samples, neurons) non-negative integers.
    labels: (samples,) non-negative integers.
    Each seed's rows are packed into one integer key with the label as its lowest bits and
    sorted; (T, Y) changes wherever the key does, T wherever the key without the label does.
    """
    codes = _check_codes(codes)
    seeds, samples, _ = codes.shape
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.shape[0] != samples:
        raise ValueError(f"{samples} rows of codes but {labels.shape[0]} labels")
    label_bits = max(_bits(labels.max()), 1)
    h_y = _label_entropy(labels)
    keys, used = _packed_keys(codes, labels[None, :], label_bits)
    if used < 0:
        return _injective(seeds, samples, h_y)
    keys = _sorted_rows(keys, used)
    return _information(*_entropies(keys, label_bits), h_y, samples)


def row_ids(codes: np.ndarray) -> np.ndarray:
    """Dense ids of each seed's rows: (seeds, samples) int64, equal exactly where the rows of
    codes are equal (the same packed keys as `layer_information`, never a hash)."""
    codes = _check_codes(codes)
    key, _ = _packed_keys(codes, None, 0)
    return rank_rows(key)


# -- on the device ------------------------------------------------------------------------------
# The same counting with torch operations on the codes' device (a GPU's), for measurements that
# run there: the codes never leave the device, only a few numbers per seed do. Dense,
# fixed-shape steps (no data-dependent sizes but the packing's), sums by torch's reductions.


def _rank_rows_on_device(keys: torch.Tensor) -> torch.Tensor:
    """`rank_rows` with torch: the dense rank of each value within its row."""
    ordered, order = torch.sort(keys, dim=1)
    steps = torch.zeros_like(keys)
    steps[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.empty_like(keys).scatter_(1, order, steps.cumsum(dim=1))


def _groups_on_device(ordered: torch.Tensor, surprisal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of sorted keys: the sum of -p log2 p over its groups of equal keys, and how many
    groups it has. A group's size is the distance from its first position to the next group's,
    found by a cumulative minimum from the right; every position that starts no group adds 0."""
    samples = ordered.shape[1]
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    positions = torch.arange(samples, device=ordered.device).expand_as(ordered)
    following = torch.full_like(positions, samples)
    following[:, :-1] = torch.where(new[:, 1:], positions[:, 1:], samples)
    next_start = following.flip(1).cummin(dim=1).values.flip(1)
    sizes = torch.where(new, next_start - positions, 0)
    return surprisal[sizes].sum(dim=1), new.sum(dim=1)


def device_layer_information(codes: torch.Tensor, labels) -> LayerInformation:
    """`layer_information` of a (seeds, samples, neurons) integer tensor, counted on its device.

    The states are the same as `layer_information`'s (exact, sorted packed keys, never hashed);
    H(T) and H(T,Y) are summed by torch instead of NumPy, so they may differ in the last bits.
    """
    if codes.dim() != 3 or codes.dtype.is_floating_point:
        raise ValueError(
            f"codes must be a (seeds, samples, neurons) integer tensor, got {tuple(codes.shape)} {codes.dtype}"
        )
    seeds, samples, width = codes.shape
    labels_host = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).reshape(-1)
    if labels_host.shape[0] != samples:
        raise ValueError(f"{samples} rows of codes but {labels_host.shape[0]} labels")
    label_bits = max(_bits(labels_host.max()), 1)
    h_y = _label_entropy(labels_host)
    device = codes.device
    rank_bits = max(1, int(samples).bit_length())
    maxima = codes.amax(dim=(0, 1)).tolist() if codes.numel() else [0] * width
    columns = [(codes[:, :, neuron].to(torch.int64), _bits(top)) for neuron, top in enumerate(maxima)]
    columns.append((torch.as_tensor(labels_host, device=device).expand(seeds, samples), label_bits))
    key = torch.zeros(seeds, samples, dtype=torch.int64, device=device)
    used = 0
    for column, bits in columns:
        if bits > _WORD_BITS - rank_bits:
            raise ValueError(f"a code of {bits} bits is too wide; at most {_WORD_BITS - rank_bits} supported")
        if used + bits > _WORD_BITS:  # full: are the rows told apart already? else rank, go on
            ordered = torch.sort(key, dim=1).values
            if bool((ordered[:, 1:] != ordered[:, :-1]).all()):
                return _injective(seeds, samples, h_y)
            key, used = _rank_rows_on_device(key), rank_bits
        key = (key << bits) | column
        used += bits
    ordered = torch.sort(key, dim=1).values
    surprisal = torch.as_tensor(_surprisal_table(samples), device=device)
    h_ty, _ = _groups_on_device(ordered, surprisal)
    h_t, n_states = _groups_on_device(ordered >> label_bits, surprisal)
    return _information(h_t.cpu().numpy(), h_ty.cpu().numpy(), n_states.cpu().numpy(), h_y, samples)


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
