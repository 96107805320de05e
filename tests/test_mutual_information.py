"""Known answers for exact MI: brute-force counts, injective and constant layers, bounds."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from ibray.mutual_information import (
    bin_codes,
    device_layer_information,
    float_codes,
    layer_information,
    rank_rows,
    row_ids,
)


def brute_force(codes: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """H(T) and I(T;Y) by counting rows as Python tuples."""
    n = len(labels)
    rows = [tuple(r) for r in codes.tolist()]
    h = lambda counter: -sum(c / n * math.log2(c / n) for c in counter.values())  # noqa: E731
    h_t = h(Counter(rows))
    h_ty = h(Counter(zip(rows, labels.tolist())))
    h_y = h(Counter(labels.tolist()))
    return h_t, h_t + h_y - h_ty, len(set(rows))


@pytest.mark.parametrize(
    "samples, width, levels, classes",
    [(500, 3, 4, 2), (2000, 10, 256, 2), (3000, 16, 256, 10), (1000, 5, 65536, 3), (800, 40, 3, 2), (4096, 1, 2, 2)],
)
def test_agrees_with_brute_force_count(samples, width, levels, classes):
    rng = np.random.default_rng(samples + width)
    codes = rng.integers(0, levels, size=(samples, width))
    # Make collisions likely too: repeat a block of rows.
    codes[samples // 2 :] = codes[: samples - samples // 2]
    labels = rng.integers(0, classes, size=samples)
    info = layer_information(codes, labels)
    h_t, mi_ty, states = brute_force(codes, labels)
    assert info.h_t[0] == pytest.approx(h_t, abs=1e-9)
    assert info.mi_xt[0] == pytest.approx(h_t, abs=1e-9)
    assert info.mi_ty[0] == pytest.approx(mi_ty, abs=1e-9)
    assert info.n_states[0] == states


def test_wide_rows_that_share_a_long_prefix_stay_distinct():
    # 64 columns of 8 bits (512 bits a row); rows differ only in the very last column.
    codes = np.full((256, 64), 7, dtype=np.uint8)
    codes[:, -1] = np.arange(256)
    info = layer_information(codes, np.arange(256) % 2)
    assert info.n_states[0] == 256 and info.h_t[0] == pytest.approx(8.0)


def test_injective_layer_gives_log2_n_and_all_of_h_y():
    n = 4096
    codes = np.array([[i >> 6, i & 63] for i in range(n)])
    labels = np.random.default_rng(0).integers(0, 2, n)
    info = layer_information(codes, labels)
    p = labels.mean()
    h_y = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert info.mi_xt[0] == pytest.approx(12.0, abs=1e-12)
    assert info.mi_ty[0] == pytest.approx(h_y, abs=1e-12)


def test_constant_layer_gives_zero():
    info = layer_information(np.full((1000, 7), 3), np.arange(1000) % 2)
    assert info.mi_xt[0] == 0.0 and info.mi_ty[0] == 0.0 and info.n_states[0] == 1


def test_mi_ty_never_exceeds_h_y_nor_h_t():
    rng = np.random.default_rng(1)
    for _ in range(20):
        levels = int(rng.integers(2, 50))
        codes = rng.integers(0, levels, size=(300, int(rng.integers(1, 4))))
        labels = rng.integers(0, 3, size=300)
        info = layer_information(codes, labels)
        py = np.bincount(labels) / 300
        h_y = -(py[py > 0] * np.log2(py[py > 0])).sum()
        assert 0.0 <= info.mi_ty[0] <= h_y + 1e-12
        assert info.mi_ty[0] <= info.h_t[0] + 1e-12


def test_seeds_are_counted_separately():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 5, size=(4, 600, 3))
    labels = rng.integers(0, 2, size=600)
    together = layer_information(batch, labels)
    for seed in range(4):
        alone = layer_information(batch[seed], labels)
        assert together.h_t[seed] == alone.h_t[0]
        assert together.mi_ty[seed] == alone.mi_ty[0]
        assert together.n_states[seed] == alone.n_states[0]


def test_rank_rows():
    assert rank_rows(np.array([[5, -1, 5, 9]])).tolist() == [[1, 0, 1, 2]]


def test_float_codes_are_exact_and_fold_negative_zero():
    values = np.array(
        [[0.0, 1.0], [-0.0, 1.0], [0.0, np.nextafter(np.float32(1.0), np.float32(2.0))]], dtype=np.float32
    )
    codes = float_codes(values)
    assert (codes[0] == codes[1]).all()
    assert not (codes[0] == codes[2]).all()
    assert layer_information(codes, np.array([0, 1, 0])).n_states[0] == 2
    with pytest.raises(ValueError, match="NaN"):
        float_codes(np.array([[np.nan]], dtype=np.float32))


def test_binning_uses_exactly_n_uniform_bins():
    values = np.linspace(-1, 1, 10001)[:, None]
    for bins in (30, 100, 256):
        codes = bin_codes(values, bins, -1.0, 1.0)
        assert codes.min() == 0 and codes.max() == bins - 1
        assert len(np.unique(codes)) == bins
        counts = np.bincount(codes[:, 0])
        assert counts.max() - counts.min() <= 2  # uniform widths
    # out of range values fall into the edge bins; a per-seed range broadcasts
    assert bin_codes(np.array([[-5.0], [5.0]]), 30, -1, 1)[:, 0].tolist() == [0, 29]
    per_seed = bin_codes(np.array([[[0.5]], [[0.5]]]), 10, np.array([0.0, 0.4])[:, None, None], 1.0)
    assert per_seed[:, 0, 0].tolist() == [5, 1]


def test_bins_per_neuron_and_per_layer_give_the_hand_counted_mi():
    from ibray.measure import bin_bounds

    # neuron a spans [0, 1], neuron b only [0, 0.1], and b's half of its range is the label
    a = [0, 0, 0, 0, 0, 0, 1, 1]
    b = [0, 0, 0, 0.1, 0.1, 0.1, 0, 0.1]
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    values = np.array([a, b], dtype=np.float64).T[None]  # one seed, 8 samples, 2 neurons
    extremes = ([0.0], [1.0])  # the layer's min and max per seed
    # per layer: 2 bins over [0, 1]; b lies in the first, so T = a: states 6 and 2, no label
    layer = layer_information(bin_codes(values, 2, *bin_bounds("layer", extremes, None, (-1, 1), values)), labels)
    assert layer.h_t[0] == pytest.approx(2 - 0.75 * math.log2(3), abs=1e-12)  # H(3/4, 1/4)
    assert layer.mi_ty[0] == pytest.approx(0.0, abs=1e-12) and layer.n_states[0] == 2
    # per neuron: b's 2 bins over [0, 0.1] tell 0 from 0.1; states 3, 3, 1, 1 and b is Y
    low, high = bin_bounds("neuron", extremes, None, (-1, 1), values)
    assert (low.tolist(), high.tolist()) == ([[[0.0, 0.0]]], [[[1.0, 0.1]]])
    neuron = layer_information(bin_codes(values, 2, low, high), labels)
    assert neuron.h_t[0] == pytest.approx(3 - 0.75 * math.log2(3), abs=1e-12)  # H(3/8, 3/8, 1/8, 1/8)
    assert neuron.mi_ty[0] == pytest.approx(1.0, abs=1e-12) and neuron.n_states[0] == 4
    # each seed its own bounds: a second seed of the values scaled and shifted bins alike
    seeds = np.concatenate([values, 5 * values - 3])
    both = layer_information(bin_codes(seeds, 2, *bin_bounds("neuron", extremes, None, (-1, 1), seeds)), labels)
    assert both.h_t.tolist() == [neuron.h_t[0]] * 2 and both.mi_ty.tolist() == [1.0, 1.0]


def test_rejects_bad_codes():
    with pytest.raises(ValueError):
        layer_information(np.array([[0.5]]), np.array([0]))
    with pytest.raises(ValueError):
        layer_information(np.array([[-1]]), np.array([0]))
    with pytest.raises(ValueError):
        layer_information(np.zeros((3, 2), dtype=int), np.array([0, 1]))


@pytest.mark.parametrize("seeds", [1, 3])
def test_wide_injective_rows_take_the_shortcut_and_agree_with_brute_force(seeds):
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, size=(seeds, 3000, 16))
    labels = rng.integers(0, 10, size=3000)
    info = layer_information(codes, labels)
    for seed in range(seeds):
        h_t, mi_ty, states = brute_force(codes[seed], labels)
        assert states == 3000
        assert info.h_t[seed] == pytest.approx(h_t, abs=1e-9)
        assert info.mi_ty[seed] == pytest.approx(mi_ty, abs=1e-9)
        assert info.n_states[seed] == states
    # one seed with a repeated row: no shortcut for anyone, and the counts stay exact
    codes[-1, 1] = codes[-1, 0]
    info = layer_information(codes, labels)
    assert info.n_states[-1] == 2999
    assert info.h_t[-1] == pytest.approx(brute_force(codes[-1], labels)[0], abs=1e-9)


@pytest.mark.parametrize("samples", [3000, 4096])
def test_a_seed_gets_the_same_bits_whatever_its_batch_mates(samples):
    # Seed 0's layer is injective; its mates are not, so the batch cannot take the shortcut.
    # Each seed's numbers alone and in the mixed batch must agree to the last bit.
    rng = np.random.default_rng(samples)
    labels = rng.integers(0, 3, size=samples)
    injective = rng.permutation(samples)[:, None] // np.array([[1 << 6, 1]]) % 64
    merged = rng.integers(0, 5, size=(samples, 2))
    mixed = np.stack([injective, merged, merged[::-1]])
    together = layer_information(mixed, labels)
    assert together.n_states[0] == samples and together.n_states[1] == len(set(map(tuple, merged.tolist()))) < samples
    for seed in range(3):
        alone = layer_information(mixed[seed], labels)
        for field in ("h_t", "mi_xt", "mi_ty", "n_states"):
            assert getattr(together, field)[seed] == getattr(alone, field)[0], (seed, field)
    # the injective seed's values are exactly log2 N and H(Y), on both paths
    p = np.bincount(labels) / samples
    assert together.h_t[0] == np.log2(samples)
    assert together.mi_ty[0] == float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize(
    "seeds, samples, width, levels",
    [
        (1, 20000, 3, 256),  # a long row, 25-bit keys: torch's flat sort on 32-bit integers
        (3, 20000, 3, 256),  # long rows with the row number on top, 32-bit
        (8, 3000, 3, 256),  # many 25-bit keys, 3 bits of row number: torch, 32-bit
        (8, 3000, 2, 2**15),  # short rows of 31-bit keys, no room for the row: NumPy on 32-bit integers
        (2, 3000, 5, 256),  # few 41-bit keys: NumPy on 64-bit integers
        (8, 3000, 5, 256),  # many 41-bit keys: torch's flat sort with row numbers
        (16, 2000, 4, 2**15),  # 61 bits + 4 bits of row number do not fit: NumPy row by row
    ],
)
def test_every_way_of_sorting_agrees_with_brute_force(seeds, samples, width, levels):
    # The keys are sorted by whichever way is fastest for their shape (_sorted_rows); rows are
    # repeated so that states merge, and each seed's rows differ.
    rng = np.random.default_rng(seeds * samples + width)
    codes = rng.integers(0, levels, size=(seeds, samples, width)).astype(np.uint8 if levels <= 256 else np.uint16)
    codes[:, samples // 3 :] = np.concatenate([codes[:, : samples // 3]] * 3, axis=1)[:, : samples - samples // 3]
    labels = rng.integers(0, 2, size=samples)
    info = layer_information(codes, labels)
    for seed in range(seeds):
        h_t, mi_ty, states = brute_force(codes[seed], labels)
        assert states < samples
        assert info.n_states[seed] == states
        assert info.h_t[seed] == pytest.approx(h_t, abs=1e-9)
        assert info.mi_ty[seed] == pytest.approx(mi_ty, abs=1e-9)


@pytest.mark.parametrize(
    "seeds, samples, width, levels",
    [
        (1, 4096, 10, 256),  # 81 bits: the key is full after 7 columns, ranked, then packed on
        (8, 3000, 3, 256),
        (16, 2000, 4, 2**15),  # 15-bit codes
        (5, 4096, 2, 4),  # few states
        (3, 1000, 16, 256),  # two rankings
        (4, 500, 1, 1),  # a constant layer
    ],
)
def test_counting_on_the_device_equals_numpys(seeds, samples, width, levels):
    # What a GPU measurement runs (device_layer_information), here on CPU tensors: the same
    # states as the NumPy counting, the same bits up to the sums' rounding.
    rng = np.random.default_rng(seeds + samples + width)
    codes = rng.integers(0, levels, size=(seeds, samples, width)).astype(np.int32)
    codes[:, samples // 3 :] = np.concatenate([codes[:, : samples // 3]] * 3, axis=1)[:, : samples - samples // 3]
    labels = rng.integers(0, 3, size=samples)
    on_host = layer_information(codes, labels)
    on_device = device_layer_information(torch.from_numpy(codes), labels)
    assert on_device.n_states.tolist() == on_host.n_states.tolist()
    np.testing.assert_allclose(on_device.h_t, on_host.h_t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(on_device.mi_ty, on_host.mi_ty, rtol=0, atol=1e-12)
    for seed in range(seeds):
        h_t, mi_ty, states = brute_force(codes[seed], labels)
        assert on_device.n_states[seed] == states
        assert on_device.h_t[seed] == pytest.approx(h_t, abs=1e-9)
        # a seed counted alone gets the same bits as in its batch
        alone = device_layer_information(torch.from_numpy(codes[seed : seed + 1].copy()), labels)
        assert (alone.h_t[0], alone.mi_ty[0], alone.n_states[0]) == (
            on_device.h_t[seed],
            on_device.mi_ty[seed],
            on_device.n_states[seed],
        )


def test_counting_on_the_device_knows_an_injective_layer():
    samples = 4096
    codes = torch.arange(samples, dtype=torch.int32).reshape(1, samples, 1).expand(2, -1, -1).contiguous()
    # every row distinct in its first 2 columns (12 bits); 8 more of 8 bits overfill the key,
    # where the rows are found all distinct (the shortcut, as layer_information's)
    noise = torch.randint(0, 256, (2, samples, 8), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    codes = torch.cat([codes % 256, codes // 256, noise], dim=2)
    assert layer_information(codes.numpy(), np.arange(samples) % 2).n_states.tolist() == [samples, samples]
    labels = np.arange(samples) % 2
    info = device_layer_information(codes, labels)
    assert info.h_t.tolist() == [12.0, 12.0] and info.mi_ty.tolist() == [1.0, 1.0]
    assert info.n_states.tolist() == [samples, samples]
    with pytest.raises(ValueError, match="integer tensor"):
        device_layer_information(codes.float(), labels)


def test_conv_like_wide_rows_count_exactly_and_alone_as_in_a_batch():
    # A conv layer's codes: hundreds of neurons, samples-major (the copy into neuron order runs
    # in blocks), a border that is constant within each seed but not across seeds (left out of
    # the key), rows that part only at a few centre neurons, and repeated rows. Each seed is
    # counted exactly, and to the last bit as when alone.
    rng = np.random.default_rng(12)
    seeds, samples, width = 3, 5000, 300
    codes = np.empty((seeds, samples, width), dtype=np.uint8)
    for seed in range(seeds):
        codes[seed] = seed + 7  # the constant border, another per seed
        centre = rng.integers(0, 6, size=(samples, 4))
        centre[samples // 2 :] = centre[: samples - samples // 2]  # repeated rows
        codes[seed, :, 148:152] = centre
    assert not codes.flags.f_contiguous and np.moveaxis(codes, 2, 0).strides[-1] != 1
    labels = rng.integers(0, 4, size=samples)
    together = layer_information(codes, labels)
    ids = row_ids(codes)
    for seed in range(seeds):
        states = _exact_and_as_alone(codes, labels, together, seed)
        _, inverse = np.unique(codes[seed], axis=0, return_inverse=True)
        pairs = set(zip(ids[seed].tolist(), inverse.reshape(-1).tolist()))  # the same partition of the rows
        assert len(pairs) == len(set(ids[seed].tolist())) == states and sorted(set(ids[seed].tolist())) == list(
            range(states)
        )


@pytest.mark.parametrize("seeds, width", [(1, 40), (3, 40), (2, 150)])
def test_rows_that_part_only_after_several_words_count_exactly_and_alone_as_in_a_batch(seeds, width):
    # Rows of `width` neurons, all but 8 of them one of 50 patterns and those 8 of three values,
    # half of the rows repeated: never all told apart, so ranked word after word (past the first
    # word with one sort of all seeds' keys, more keys than _SMALL, giving both the answer and
    # the ranks) to the last neuron (150: copied into neuron order in three blocks of 64).
    rng = np.random.default_rng(seeds * width)
    samples = 20000
    patterns = rng.integers(0, 256, size=(seeds, 50, width - 8))
    codes = np.empty((seeds, samples, width), dtype=np.uint8)
    for seed in range(seeds):
        codes[seed, :, : width - 8] = patterns[seed][rng.integers(0, 50, size=samples)]
    codes[:, :, width - 8 :] = rng.integers(0, 3, size=(seeds, samples, 8))
    codes[:, samples // 2 :] = codes[:, : samples - samples // 2]
    labels = rng.integers(0, 10, size=samples)
    together = layer_information(codes, labels)
    for seed in range(seeds):
        _exact_and_as_alone(codes, labels, together, seed)


def _exact_and_as_alone(codes, labels, together, seed: int) -> int:
    """Asserts that seed's entry of `together` (layer_information of all seeds' codes) is the
    brute-force count and, to the last bit, what the seed gets alone; returns its state count."""
    h_t, mi_ty, states = brute_force(codes[seed], labels)
    assert 0 < together.n_states[seed] == states < codes.shape[1]
    assert together.h_t[seed] == pytest.approx(h_t, abs=1e-9)
    assert together.mi_ty[seed] == pytest.approx(mi_ty, abs=1e-9)
    alone = layer_information(codes[seed], labels)
    for field in ("h_t", "mi_xt", "mi_ty", "n_states"):
        assert getattr(together, field)[seed] == getattr(alone, field)[0], (seed, field)
    return states
