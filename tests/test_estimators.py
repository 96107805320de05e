"""The estimators beside exact counting, against answers known in advance; one trial runs them all."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch

from ibray.cli import main
from ibray.config import ConfigError, TrialConfig
from ibray.estimators import (
    Settings,
    adaptive_bin_codes,
    edge_information,
    estimated_information,
    kde_information,
    kl_entropy,
    knn_information,
    ksg_information,
    renyi_information,
    renyi_kernel_width,
    sample_index,
)
from ibray.mutual_information import layer_information


def grid_points() -> tuple[np.ndarray, np.ndarray]:
    """16 distinct points on a 4 x 4 grid of spacing 1, and a parity label."""
    points = np.array([[i % 4, i // 4] for i in range(16)], dtype=np.float64)
    return points, np.arange(16) % 2


def quantized_layer(samples: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 neurons of 4 levels (codes and their values k/4, exact in float32) and a noisy label of them."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(samples, 3))
    labels = (codes.sum(axis=1) + rng.integers(0, 2, samples)) % 3
    return codes, codes / 4.0, labels


def gaussian_pair(r: float, samples: int = 3000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(samples)
    b = r * a + math.sqrt(1 - r * r) * rng.standard_normal(samples)
    return a[:, None], b[:, None]


# -- KDE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lower", [False, True])
def test_kde_of_well_separated_points_is_log_n_and_a_parity_label_one_bit(lower):
    points, parity = grid_points()
    mi_xt, mi_ty = kde_information(points, parity, noise_var=1e-3, lower=lower)
    assert mi_xt == pytest.approx([4.0], abs=1e-9) and mi_ty == pytest.approx([1.0], abs=1e-9)


def test_kde_bounds_approach_the_exact_mi_of_quantized_codes_as_the_noise_shrinks():
    codes, values, labels = quantized_layer()
    exact = layer_information(codes, labels)
    gaps = []
    for noise_var in (1e-1, 1e-2, 1e-3, 1e-6):
        upper_xt, upper_ty = kde_information(values, labels, noise_var)
        lower_xt, lower_ty = kde_information(values, labels, noise_var, lower=True)
        assert lower_xt[0] <= upper_xt[0] + 1e-9 <= exact.mi_xt[0] + 2e-9  # smoothing only loses information
        gaps.append(exact.mi_xt[0] - lower_xt[0])
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 1.0  # far off at s2 = 0.1
    assert upper_xt == pytest.approx(exact.mi_xt, abs=1e-9) and lower_xt == pytest.approx(exact.mi_xt, abs=1e-9)
    assert upper_ty == pytest.approx(exact.mi_ty, abs=1e-9) and lower_ty == pytest.approx(exact.mi_ty, abs=1e-9)


def test_kde_batched_over_seeds_and_in_blocks_equals_each_seed_alone(monkeypatch):
    import ibray.estimators as estimators

    rng = np.random.default_rng(2)
    values = rng.standard_normal((3, 500, 4)) * 0.05
    labels = rng.integers(0, 3, 500)
    alone = [kde_information(values[s], labels, 1e-3) for s in range(3)]
    monkeypatch.setattr(estimators, "BLOCK_ELEMENTS", 7 * 3 * 500)  # blocks of 7 rows
    together = kde_information(values, labels, 1e-3)
    for s in range(3):
        assert together[0][s] == pytest.approx(alone[s][0][0], abs=1e-12)
        assert together[1][s] == pytest.approx(alone[s][1][0], abs=1e-12)


@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize("noise_var", [1e-3, 1e-8])  # at 1e-8 a code's kernel to any other is 0
def test_kde_over_distinct_rows_with_counts_equals_the_pairwise_sums(monkeypatch, lower, noise_var):
    from ibray import estimators

    rng = np.random.default_rng(5)
    samples, levels = 1500, np.linspace(-1, 1, 256)  # 8-bit codes' values
    few_codes = rng.integers(0, 256, size=(12, 5))[rng.integers(0, 12, samples)]  # 12 states
    few = levels[few_codes]
    many = levels[rng.integers(0, 256, size=(samples, 5))]
    many[::3] = many[1::3][: len(many[::3])]  # a third repeat another row: about 2/3 distinct
    distinct = rng.standard_normal((samples, 5)) * 0.1  # float: every row its own
    values = np.stack([few, many, distinct])
    labels = rng.integers(0, 3, samples)
    sizes = []
    kernel_sums = estimators._kernel_sums
    monkeypatch.setattr(
        estimators, "_kernel_sums", lambda points, *rest: sizes.append(points.shape[:2]) or kernel_sums(points, *rest)
    )
    chosen = kde_information(values, labels, noise_var, lower)  # distinct rows where fewer than 0.7 N
    assert sizes == [(1, 12), (1, len(np.unique(many, axis=0))), (1, samples)]  # the float seed pairwise
    monkeypatch.setattr(estimators, "UNIQUE_SHARE", 0.0)  # every seed pairwise
    pairwise = kde_information(values, labels, noise_var, lower)
    monkeypatch.setattr(estimators, "UNIQUE_SHARE", 2.0)  # every seed over its distinct rows
    regrouped = kde_information(values, labels, noise_var, lower)
    assert np.isfinite(pairwise).all()
    for result in (chosen, regrouped):
        assert np.abs(np.asarray(result) - np.asarray(pairwise)).max() < 1e-9
    if noise_var == 1e-8:  # no smoothing left: the exact count of the 12 states (to the expansion's rounding)
        exact = layer_information(few_codes, labels)
        assert regrouped[0][0] == pytest.approx(exact.mi_xt[0], abs=1e-6)
        assert regrouped[1][0] == pytest.approx(exact.mi_ty[0], abs=1e-6)


# -- kNN ------------------------------------------------------------------------------------------
def test_ksg_of_a_correlated_gaussian_pair_matches_the_closed_form():
    for r in (0.5, 0.9):
        a, b = gaussian_pair(r)
        assert ksg_information(a, b, k=3)[0] == pytest.approx(-0.5 * math.log2(1 - r * r), abs=0.03)


def test_kozachenko_leonenko_entropies_give_the_gaussian_pairs_mi():
    r = 0.9
    a, b = gaussian_pair(r)
    assert kl_entropy(a)[0] == pytest.approx(0.5 * math.log2(2 * math.pi * math.e), abs=0.05)
    joint = np.hstack([a, b])
    assert (kl_entropy(a) + kl_entropy(b) - kl_entropy(joint))[0] == pytest.approx(
        -0.5 * math.log2(1 - r * r), abs=0.08
    )


def test_knn_mi_with_labels_agrees_with_scikit_learn_on_one_feature():
    feature_selection = pytest.importorskip("sklearn.feature_selection")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1500)
    labels = (x + rng.standard_normal(1500) > 0).astype(int) + (x > 1)
    theirs = feature_selection.mutual_info_classif(x[:, None], labels, n_neighbors=3, random_state=0)[0] / math.log(2)
    ours = knn_information(x[:, None], labels, k=3)[1][0]
    assert theirs > 0.3 and ours == pytest.approx(theirs, abs=1e-6)


def test_knn_on_tied_quantized_codes_is_finite_and_near_the_exact_count():
    codes, values, labels = quantized_layer()
    exact = layer_information(codes, labels)
    # every one of the 64 states repeats about 64 times: every k-th neighbour ties
    assert np.isfinite(kl_entropy(values)).all()
    mi_xt, mi_ty = knn_information(values, labels, k=3)
    assert mi_xt == pytest.approx(exact.mi_xt, abs=0.05)
    assert mi_ty == pytest.approx(exact.mi_ty, abs=0.05)
    # a constant layer: one atom, no information
    constant = np.zeros((200, 2))
    xt, ty = knn_information(constant, np.arange(200) % 2, k=3)
    assert xt == pytest.approx([0.0], abs=1e-9) and ty == pytest.approx([0.0], abs=1e-9)


def test_knn_with_some_ties_stays_finite():
    rng = np.random.default_rng(4)
    values = rng.standard_normal((1000, 2))
    values[:300] = np.round(values[:300])  # a few atoms beside a continuous part
    mi_xt, mi_ty = knn_information(values, rng.integers(0, 2, 1000), k=3)
    assert np.isfinite(mi_xt).all() and np.isfinite(mi_ty).all()


# -- EDGE and adaptive binning --------------------------------------------------------------------
def test_edge_with_cells_finer_than_the_levels_is_the_exact_count_and_clips_at_u():
    codes, values, labels = quantized_layer()
    exact = layer_information(codes, labels)
    mi_xt, mi_ty = edge_information(values, labels, width=0.2)  # levels 1/4 apart
    assert mi_xt == pytest.approx(exact.mi_xt, abs=1e-9) and mi_ty == pytest.approx(exact.mi_ty, abs=1e-9)
    points, parity = grid_points()
    assert edge_information(points, parity, width=0.5)[0] == pytest.approx([4.0])
    assert edge_information(points, parity, width=0.5, clip_xt=3.0)[0] == pytest.approx([3.0])


def test_adaptive_bins_hold_equal_shares_and_keep_ties_together():
    values = np.arange(1000, dtype=np.float64)[:, None]
    codes = adaptive_bin_codes(values, 10)
    assert np.bincount(codes[0, :, 0]).tolist() == [100] * 10
    tied = np.repeat([0.0, 1.0, 2.0], [500, 250, 250])[:, None]
    codes = adaptive_bin_codes(tied, 10)[0, :, 0]
    assert [set(codes[tied[:, 0] == v]) for v in (0.0, 1.0, 2.0)] == [{0}, {5}, {7}]


# -- matrix-based Renyi -------------------------------------------------------------------------
def renyi_of_counts(counts, alpha: float = 1.01) -> float:
    """The Renyi alpha-entropy (bits) of the frequencies of some counts."""
    p = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    return float(np.log2((p**alpha).sum()) / (1 - alpha))


def direct_renyi(values: np.ndarray, labels: np.ndarray, alpha: float = 1.01, k: int = 50) -> tuple[float, float]:
    """The matrix-based I(X;T), I(T;Y) of one seed as written: N x N Gram matrices, eigvalsh."""
    samples = len(values)
    distances = np.sqrt(((values[:, None, :] - values[None, :, :]) ** 2).sum(axis=2))
    width = np.sort(distances, axis=1)[:, min(k, samples - 1)].mean()  # column 0: the point itself
    gram = np.exp(-(distances**2) / width**2)  # Wickstrom et al.'s exp(-D / r^2)
    a_t = gram / samples
    a_y = (labels[:, None] == labels[None, :]) / samples
    joint = a_t * a_y / np.trace(a_t * a_y)

    def entropy(matrix):
        eigenvalues = np.clip(np.linalg.eigvalsh(matrix), 0, None)
        return np.log2((eigenvalues**alpha).sum()) / (1 - alpha)

    return entropy(a_t), entropy(a_t) + entropy(a_y) - entropy(joint)


@pytest.mark.parametrize("alpha", [1.01, 2.0])
def test_renyi_of_well_separated_points_is_log_n_and_a_parity_label_one_bit(alpha):
    points, parity = grid_points()
    # points 1 apart, kernel width 0.01: A = I / N, whose eigenvalues 1/N give log2 N at any alpha
    mi_xt, mi_ty = renyi_information(points, parity, width=0.01, alpha=alpha)
    assert mi_xt == pytest.approx([4.0], abs=1e-9) and mi_ty == pytest.approx([1.0], abs=1e-9)


def test_renyi_of_identical_points_is_zero():
    mi_xt, mi_ty = renyi_information(np.full((200, 3), 0.25), np.arange(200) % 3)
    assert mi_xt == pytest.approx([0.0], abs=1e-12) and mi_ty == pytest.approx([0.0], abs=1e-12)


def test_renyi_says_nothing_of_a_label_that_every_state_splits_alike():
    # 150 distinct continuous rows, each once with label 0 and once with label 1: T and Y are
    # independent in the sample, so S(T,Y) = S(T) + 1 whatever the (data-driven) kernel width
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((150, 3))
    values, labels = np.vstack([rows, rows]), np.repeat([0, 1], 150)
    mi_xt, mi_ty = renyi_information(values, labels)
    assert 0 < mi_xt[0] < math.log2(150) and mi_ty == pytest.approx([0.0], abs=1e-9)


def test_renyi_of_states_repeated_past_the_neighbour_is_the_plug_in_renyi_entropy():
    # 64 states of 3 neurons, 64 samples each: every sample's 50th neighbour is at distance 0, so
    # the kernel is [t_i = t_j] and the entropies are the Renyi entropies of the frequencies
    rng = np.random.default_rng(7)
    codes = np.array([[i % 4, i // 4 % 4, i // 16] for i in range(64)]).repeat(64, axis=0)
    labels = rng.integers(0, 2, len(codes))  # independent of T
    values = torch.as_tensor(codes / 4.0)
    assert renyi_kernel_width(*torch.unique(values, dim=0, return_counts=True)) == 0.0
    mi_xt, mi_ty = renyi_information(values, labels)
    _, joint = np.unique(np.column_stack([codes, labels]), axis=0, return_counts=True)
    plug_in = renyi_of_counts([64] * 64) + renyi_of_counts(np.bincount(labels)) - renyi_of_counts(joint)
    assert mi_xt == pytest.approx([6.0], abs=1e-9) and mi_ty == pytest.approx([plug_in], abs=1e-9)
    # near the exact count's I(T;Y) of a label independent of T: both near 0
    exact = layer_information(codes, labels).mi_ty[0]
    assert abs(plug_in) < 0.02 and mi_ty[0] == pytest.approx(exact, abs=1e-3)


def test_renyi_agrees_with_the_gram_matrices_written_out():
    rng = np.random.default_rng(8)
    values = np.round(rng.standard_normal((2, 160, 3)), 0)  # many ties: the regrouped rows are tested
    values[1] = rng.standard_normal((160, 3))  # and a seed of distinct rows
    labels = rng.integers(0, 3, 160)
    mi_xt, mi_ty = renyi_information(values, labels)
    assert len(np.unique(values[0], axis=0)) < 80
    for seed in range(2):
        direct_xt, direct_ty = direct_renyi(values[seed], labels)
        assert mi_xt[seed] == pytest.approx(direct_xt, abs=1e-9) and mi_ty[seed] == pytest.approx(direct_ty, abs=1e-9)


# -- all of them ----------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["kde", "kde_lower", "knn", "edge", "abin10", "renyi"])
def test_every_estimator_is_invariant_to_the_order_of_the_samples(estimator):
    rng = np.random.default_rng(5)
    values = np.round(rng.standard_normal((2, 600, 3)), 1)
    labels = rng.integers(0, 3, 600)
    order = rng.permutation(600)
    settings = Settings(noise_var=1e-2, k=3, samples=1000)
    first = estimated_information(estimator, values, labels, settings)
    again = estimated_information(estimator, values[:, order], labels[order], settings)
    for name in ("mi_xt", "mi_ty", "h_t", "n_states"):
        assert getattr(again, name) == pytest.approx(getattr(first, name), abs=1e-9)


def test_torch_tensors_give_the_numpy_answers():
    codes, values, labels = quantized_layer(800)
    for estimator in ("kde", "knn", "edge", "abin10", "renyi"):
        from_numpy = estimated_information(estimator, values, labels)
        from_torch = estimated_information(
            estimator, torch.as_tensor(values, dtype=torch.float32), torch.as_tensor(labels)
        )
        assert from_torch.mi_xt == pytest.approx(from_numpy.mi_xt, abs=1e-6)
        assert from_torch.mi_ty == pytest.approx(from_numpy.mi_ty, abs=1e-6)


def test_quadratic_estimators_see_one_fixed_subset():
    assert sample_index(100, 100) is None
    index = sample_index(70000, 4096)
    assert len(index) == 4096 and len(set(index.tolist())) == 4096 and torch.equal(index, sample_index(70000, 4096))
    codes, values, labels = quantized_layer(3000)
    small = estimated_information("kde", values, labels, Settings(noise_var=1e-6, samples=500))
    assert small.n_states[0] <= 64 and small.mi_xt[0] < math.log2(500)
    index = sample_index(3000, 500).numpy()
    assert small.mi_xt == pytest.approx(layer_information(codes[index], labels[index]).mi_xt, abs=1e-9)


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(estimators=("exact", "mine")),
            "estimators: unknown estimator 'mine'; allowed: exact, bin<n> with n >= 2",
        ),
        (dict(estimators=("abin1",)), "estimators: unknown estimator 'abin1'"),
        (dict(kde_noise_var=0.0), "kde_noise_var: 0.0 is not allowed; give a finite number > 0"),
        (dict(kde_noise_var=float("inf")), "kde_noise_var: inf is not allowed"),
        (dict(kde_noise_var=True), "kde_noise_var: True is not allowed"),
        (dict(knn_k=0), "knn_k: 0 must be a positive integer"),
        (dict(estimator_samples=1), "estimator_samples: 1 is not allowed; give an integer >= 2"),
    ],
)
def test_bad_estimator_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as error:
        TrialConfig(**overrides)
    assert message in str(error.value)
    assert "kde, kde_lower, knn, edge, renyi" in str(error.value) or "estimators" not in message


def test_new_fields_leave_existing_trial_ids_alone_and_round_trip():
    # the ids computed before these fields existed
    assert TrialConfig().trial_id() == "synthetic12-syn-tanh-8b-ce18e8c613"
    assert (
        TrialConfig(dataset="mnist", architecture="conv", bits=4, seeds="0-9").trial_id()
        == "mnist-conv-tanh-4b-741cb9914b"
    )
    binning = TrialConfig(seeds="0-2", estimators=("exact", "bin30"), bits=32, bin_bounds="layer")
    assert binning.trial_id() == "synthetic12-syn-tanh-32b-36471d88a6"
    config = TrialConfig(
        estimators=("exact", "kde", "knn", "abin30"), kde_noise_var=1e-2, knn_k=5, estimator_samples=1000
    )
    again = TrialConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.trial_id() == config.trial_id()
    assert TrialConfig(knn_k=5).trial_id() != TrialConfig().trial_id()
    assert (TrialConfig().kde_variance, TrialConfig(dataset="mnist", architecture="4x10").kde_variance) == (1e-3, 1e-1)
    assert TrialConfig(kde_noise_var=0.5).kde_variance == 0.5


# -- one trial ------------------------------------------------------------------------------------
def test_a_trial_writes_rows_of_every_estimator(tmp_path):
    out = tmp_path / "trial"
    estimators = ["exact", "kde", "knn", "edge", "abin10", "renyi", "bin30"]
    args = [
        "trial",
        "--bin-bounds",
        "neuron",
        "--seeds",
        "0-1",
        "--epochs",
        "2",
        "--estimators",
        ",".join(estimators),
        "--estimator-samples",
        "512",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    mi = pl.read_parquet(out / "mi" / "*.parquet")
    layers = mi["layer"].n_unique()
    assert sorted(mi["estimator"].unique().to_list()) == sorted(estimators)
    assert mi.group_by("estimator").len()["len"].to_list() == [2 * 3 * layers] * len(estimators)
    assert mi.select(pl.col("mi_xt", "mi_ty", "h_t").is_finite().all()).row(0) == (True, True, True)
    bounded = mi.filter(pl.col("estimator") != "knn")  # knn's I(X;T) is a differential entropy where T does not tie
    assert bounded["mi_xt"].min() >= 0 and bounded["mi_xt"].max() <= math.log2(4096) + 1e-9
    for sampled in ("kde", "renyi"):  # the subset they saw
        assert mi.filter(pl.col("estimator") == sampled)["mi_xt"].max() <= math.log2(512) + 1e-9
    assert mi["mi_ty"].min() >= -0.05 and mi["mi_ty"].max() <= 1 + 1e-9  # two balanced classes: H(Y) = 1
    config = json.loads((out / "trial.json").read_text())["config"]
    assert config["estimator_samples"] == 512 and config["knn_k"] == 3 and config["kde_noise_var"] is None
    assert config["bin_bounds"] == "neuron"
