"""Estimated MI of a layer, beside the exact count: the estimators of the earlier studies.

Knows nothing of networks, as `mutual_information` does not: every estimator takes a layer's
values, (samples, neurons) or (seeds, samples, neurons), as NumPy or torch (a tensor stays on
its device: a GPU's measurements estimate there), and the labels, and returns bits per seed.
X is uniform over the samples and T = f(X) is deterministic, so I(X;T) is an entropy of T.

- `kde`, `kde_lower`: Kolchinsky & Tracey (2017)'s upper and lower bounds on the MI of T plus
  Gaussian noise of variance s2, as Saxe et al. (2018) used them. With D_ij = ||t_i - t_j||^2,
  I(X;T) = -(1/N) sum_i ln[(1/N) sum_j exp(-D_ij / (2 s2))], in [0, ln N]; the lower
  (Bhattacharyya) bound is the same with 8 s2. I(T;Y) = H(T) - sum_y p(y) H(T|Y=y), the same
  bound on each class (the constants cancel). O(N^2 d) per seed, in blocks of rows; over the
  distinct rows with their counts (the same sums, regrouped) where they are few.
- `knn`: I(X;T) is a Kozachenko-Leonenko entropy of T (max-norm, k neighbours); I(T;Y) Ross
  (2014)'s estimator for a discrete Y (KSG's algorithm 1 within and across classes). A
  quantized layer ties (the k-th neighbour at distance 0, where ln 0 would give -inf): a point
  whose k-th neighbour ties is taken as an atom, as Gao et al. (2017) do, its k replaced by the
  number of samples tied with it (see `kl_entropy`, `knn_information`). O(N^2 d) per seed.
- `edge`: Noshad, Zeng & Hero (2019)'s ensemble dependence-graph estimator: hash T into cells
  of width eps, plug-in MI of the cells with each point's log ratio clipped at U, the median
  over L shifted hashes. O(N d L).
- `renyi`: the matrix-based Renyi alpha-entropy of Giraldo, Rao & Principe (2015), as Yu et al.
  (2019) and Wickstrom et al. (2019) used it on networks: the eigenvalues of T's normalised
  Gaussian Gram matrix, alpha = 1.01, the kernel width from the data (Wickstrom et al.'s rule:
  the mean distance to the 50th neighbour); I(X;T) = S(T), I(T;Y) = S(T) + S(Y) - S(T,Y). See
  `renyi_information`. O(N^3) per seed (an eigendecomposition), over T's distinct rows.
- `abin<n>`: equal-frequency binning, n bins per neuron, then the exact count.

The quadratic and cubic ones (kde, kde_lower, knn, renyi) see at most `samples` samples, one
fixed subset (SUBSAMPLE_SEED) for every seed, layer and epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ibray.config import SAMPLED_ESTIMATORS, adaptive_bins
from ibray.mutual_information import LayerInformation, device_layer_information, float_codes, layer_information, row_ids

SUBSAMPLE_SEED = 0  # the subset of samples the quadratic estimators see, the same every time
# Elements of one block of pairwise distances, all seeds together (float64: 8 MiB, near the
# caches); a few such tensors are alive at once, so the quadratic estimators never hold an
# N x N matrix.
BLOCK_ELEMENTS = 2**20
# KDE sums over a seed's distinct rows (weighted by their counts) when they are fewer than this
# share of the samples: (share)^2 of the pairwise cost, plus a sort of the rows.
UNIQUE_SHARE = 0.7
# EDGE's published defaults (Noshad et al.'s code, version 4.4.1, and its information-plane
# experiment): an ensemble of 10 hashes, cell widths rising arithmetically over [eps, 1.1 eps],
# the l-th hash shifted by l/L of its width, the median; each point's log ratio clipped at
# U = 20 bits for I(X;T) and 10 bits for I(T;Y).
EDGE_ENSEMBLE = 10
EDGE_WIDTH_RANGE = 0.1
EDGE_CLIP_XT = 20.0
EDGE_CLIP_TY = 10.0
# The matrix-based Renyi entropy's order (Yu et al. 2019 and Wickstrom et al. 2019: near 1, so
# near Shannon's) and the neighbour whose mean distance sets its kernel width (Wickstrom et
# al.'s published code for the information plane of their networks: 50).
RENYI_ALPHA = 1.01
RENYI_NEIGHBOUR = 50
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class Settings:
    """The estimators' parameters (TrialConfig's kde_noise_var, knn_k, estimator_samples)."""

    noise_var: float = 1e-3  # KDE's noise variance s2, in the layer's squared units
    k: int = 3  # kNN's neighbours
    samples: int = 4096  # at most this many samples for kde, kde_lower, knn, renyi


def estimated_information(estimator: str, values, labels, settings: Settings = Settings()) -> LayerInformation:
    """One estimator's H(T), I(X;T), I(T;Y) (bits) and the distinct rows of T, per seed.

    h_t is the estimator's I(X;T) (as binning's is its H(T)); n_states counts the distinct
    rows of T among the samples the estimator used (the occupied bins for abin<n>)."""
    values, labels = _as_values(values), _as_labels(labels)
    if values.shape[1] != labels.shape[0]:
        raise ValueError(f"{values.shape[1]} samples of values but {labels.shape[0]} labels")
    bins = adaptive_bins(estimator)
    if bins is not None:
        codes = adaptive_bin_codes(values, bins)
        if codes.device.type != "cpu":
            return device_layer_information(codes, labels)
        return layer_information(codes.numpy(), labels.numpy())
    if estimator in SAMPLED_ESTIMATORS:
        index = sample_index(values.shape[1], settings.samples)
        if index is not None:
            values, labels = values[:, index.to(values.device)], labels[index.to(labels.device)]
    if estimator in ("kde", "kde_lower"):
        mi_xt, mi_ty = kde_information(values, labels, settings.noise_var, lower=estimator == "kde_lower")
    elif estimator == "knn":
        mi_xt, mi_ty = knn_information(values, labels, settings.k)
    elif estimator == "edge":
        mi_xt, mi_ty = edge_information(values, labels)
    elif estimator == "renyi":
        mi_xt, mi_ty = renyi_information(values, labels)
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    states = row_ids(float_codes(values.cpu().numpy())).max(axis=1) + 1
    return LayerInformation(h_t=mi_xt.copy(), mi_xt=mi_xt, mi_ty=mi_ty, n_states=states)


def sample_index(samples: int, size: int) -> torch.Tensor | None:
    """The samples a quadratic estimator sees: None (all) when there are at most `size`, else
    `size` of them drawn without replacement by SUBSAMPLE_SEED, in ascending order."""
    if samples <= size:
        return None
    generator = torch.Generator().manual_seed(SUBSAMPLE_SEED)
    return torch.randperm(samples, generator=generator)[:size].sort().values


# -- KDE ----------------------------------------------------------------------------------------


def kde_information(values, labels, noise_var: float, lower: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Kolchinsky & Tracey's pairwise-distance bound on I(X;T) and I(T;Y), bits per seed: the
    KL upper bound, or with `lower` the Bhattacharyya lower bound (kernel width 8 s2 instead of
    2 s2; its d/2 ln(1/4) shift cancels in both differences). See the module docstring.

    Both are means over the points i of ln S_i = ln sum_j K_ij and ln S_i^y = ln sum_j K_ij
    [y_j = y_i]. Equal rows have equal sums, so over the distinct rows u (counts c_u, c_uy):
    S_u^y = sum_v K_uv c_vy, and the means are (1/N) sum_u c_u ln S_u and (1/N) sum_u sum_y
    c_uy ln S_u^y. That is the same sum, regrouped (exact, not an approximation), and it costs
    (distinct / N)^2 of the pairwise one: a quantized layer often has few distinct rows. Each
    seed whose distinct rows are fewer than UNIQUE_SHARE N is computed so; the others (each row
    its own, counts 1) together, batched. See `_kernel_sums` for the sums."""
    values, labels = _as_values(values), _as_labels(labels).to(values.device)
    seeds, samples, _ = values.shape
    width = (8.0 if lower else 2.0) * noise_var
    values = values - values.mean(dim=1, keepdim=True)  # smaller norms: less cancellation below
    _, label_index, class_sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    one_hot = torch.nn.functional.one_hot(label_index).to(values.dtype)  # (samples, classes)
    spread_all = torch.empty(seeds, dtype=values.dtype, device=values.device)  # mean of ln S_i
    spread_class = torch.empty_like(spread_all)  # mean of ln S_i^{y_i}
    pairwise = []
    for seed in range(seeds):
        rows, inverse, counts = torch.unique(values[seed], dim=0, return_inverse=True, return_counts=True)
        if rows.shape[0] >= UNIQUE_SHARE * samples:
            pairwise.append(seed)
            continue
        by_class = torch.zeros(rows.shape[0], one_hot.shape[1], dtype=values.dtype, device=values.device)
        by_class.index_add_(0, inverse, one_hot)  # c_uy
        sums = _kernel_sums(rows[None], by_class, width)[0]  # S_u^y
        spread_all[seed] = (counts.to(values.dtype) * sums.sum(dim=1).log()).sum() / samples
        # where c_uy = 0, S_u^y may be 0 and its log -inf: those terms are 0
        spread_class[seed] = torch.where(by_class > 0, by_class * sums.log(), 0.0).sum() / samples
    if pairwise:
        index = torch.tensor(pairwise, device=values.device)
        sums = _kernel_sums(values[index], one_hot, width)  # (seeds, samples, classes): S_i^y
        spread_all[index] = sums.sum(dim=2).log().mean(dim=1)
        own = sums.gather(2, label_index.view(1, -1, 1).expand(len(pairwise), -1, 1)).squeeze(2)
        spread_class[index] = own.log().mean(dim=1)
    mi_xt = math.log(samples) - spread_all
    # H(T) - sum_y p(y) H(T|y), each term a mean over the points of -ln (1/n) sum_j K_ij
    class_share = torch.log(samples / class_sizes[label_index].to(values.dtype)).mean()
    mi_ty = class_share - spread_all + spread_class
    return _bits(mi_xt), _bits(mi_ty)


def _kernel_sums(points: torch.Tensor, weights: torch.Tensor, width: float) -> torch.Tensor:
    """sum_v exp(-|t_u - t_v|^2 / width) weights_vc for every point u: (seeds, points, columns)
    from points (seeds, points, neurons) and weights (points, columns).

    Per block of rows, one matrix product gives -D_uv / width (the rows extended by |t|^2 and
    1), and a second the weighted sums. A point's own term exp(0) = 1 is its largest, so a sum
    over weights that include its own is at least 1 and needs no log-sum-exp shift."""
    seeds, count, _ = points.shape
    squares = points.square().sum(dim=2, keepdim=True)
    ones = torch.ones_like(squares)
    # rows (2 t_u, -|t_u|^2, -1) / width against columns (t_v, 1, |t_v|^2): -D_uv / width
    rows = torch.cat([2 * points, -squares, -ones], dim=2) / width
    columns = torch.cat([points, ones, squares], dim=2).transpose(1, 2)
    sums = torch.empty(seeds, count, weights.shape[1], dtype=points.dtype, device=points.device)
    for start, stop in _row_blocks(seeds, count):
        kernel = torch.bmm(rows[:, start:stop], columns).clamp_(max=0).exp_()
        sums[:, start:stop] = kernel @ weights
    return sums


# -- kNN ----------------------------------------------------------------------------------------


def kl_entropy(values, k: int = 3) -> np.ndarray:
    """Kozachenko-Leonenko entropy of T (max-norm, k neighbours), bits per seed, with ties.

    A point whose k-th neighbour lies at distance r > 0 adds psi(N) - psi(k) + d ln(2r), the
    differential entropy (of a density w.r.t. Lebesgue measure; it may be negative). A point
    whose k-th neighbour ties with it (r = 0, which would add -inf) lies on an atom: as Gao
    et al. (2017) do for ties, k is replaced by the count m of the atom's samples (the point
    itself included, m > k), and it adds psi(N) - psi(m), the plug-in -ln p of the atom. That
    is the entropy w.r.t. Lebesgue measure plus counting measure on the atoms: on a layer whose
    every state repeats more than k times it is the discrete H(T) (plug-in with digammas for
    logs; 0 on a constant layer); without ties, Kozachenko-Leonenko's. k is cut to N - 1."""
    values = _as_values(values)
    entropy, _ = _knn_terms(values, None, k)
    return _bits(entropy)


def knn_information(values, labels, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """I(X;T) = H(T) by `kl_entropy` and I(T;Y) by Ross (2014), bits per seed.

    I(T;Y) = psi(N) - <psi(N_y)> + <psi(k)> - <psi(m)>: for each point the max-norm distance r
    to its k-th neighbour of the same class (k cut to N_y - 1), and m the samples of any class
    closer than r (the point itself included). Samples of a class of one are left out (as
    scikit-learn's mutual_info_classif does). Ties, as in `kl_entropy`: where r = 0, k becomes
    the count of the atom's samples of the point's class and m the count of all its samples
    (the point itself included in both), so that on a layer of atoms each point adds the
    plug-in ln p(y|t) / p(y) (digammas for logs; exactly 0 on a constant layer). Not clipped at
    0: on a layer that says nothing of Y it scatters around 0."""
    values, labels = _as_values(values), _as_labels(labels)
    entropy, information = _knn_terms(values, labels.to(values.device), k)
    return _bits(entropy), _bits(information)


def _knn_terms(values: torch.Tensor, labels: torch.Tensor | None, k: int):
    """H(T) in nats per seed, and I(T;Y) in nats per seed when labels are given (else None)."""
    seeds, samples, width = values.shape
    digamma = torch.special.digamma
    k = max(1, min(k, samples - 1))
    dtype, device = values.dtype, values.device
    entropy_terms = torch.empty(seeds, samples, dtype=dtype, device=device)
    if labels is not None:
        _, label_index, class_sizes = torch.unique(labels, return_inverse=True, return_counts=True)
        own_size = class_sizes[label_index]
        kept = own_size > 1  # a class of one has no neighbour of its class
        kept_total = int(kept.sum())
        class_k = torch.clamp(own_size - 1, max=k)
        information_terms = torch.zeros(seeds, samples, dtype=dtype, device=device)
    for start, stop in _row_blocks(seeds, samples):
        distances = torch.cdist(values[:, start:stop], values, p=math.inf)  # (seeds, rows, samples)
        tied = distances == 0
        # the (k+1)-th smallest with the point's own 0 is the k-th neighbour's distance
        nearest = distances.topk(k + 1, dim=2, largest=False).values[..., k]
        others_tied = tied.sum(dim=2) - 1
        atom = nearest == 0
        spread = width * torch.log(2 * nearest.masked_fill(atom, 1.0)) - digamma(torch.tensor(float(k), dtype=dtype))
        entropy_terms[:, start:stop] = torch.where(atom, -digamma((others_tied + 1).to(dtype)), spread)
        if labels is None:
            continue
        rows = slice(start, stop)
        other_class = label_index[rows, None] != label_index[None, :]
        within = distances.masked_fill(other_class, math.inf)
        # column k of the (k+1) smallest, row by row: class_k (at most k) of each point
        smallest = within.topk(k + 1, dim=2, largest=False).values
        radius = smallest.gather(2, class_k[rows].view(1, -1, 1).expand(seeds, -1, 1)).squeeze(2)
        counted = distances.masked_fill(~kept[None, None, :], math.inf)
        closer = (counted < radius[..., None]).sum(dim=2)
        class_tied = (tied & ~other_class).sum(dim=2)  # the point itself included
        all_tied = (tied & kept[None, None, :]).sum(dim=2)
        on_atom = radius == 0
        neighbours = torch.where(on_atom, class_tied, class_k[rows].expand(seeds, -1))
        reach = torch.where(on_atom, all_tied, closer).clamp(min=1)
        terms = digamma(neighbours.to(dtype)) - digamma(reach.to(dtype)) - digamma(own_size[rows].to(dtype))
        information_terms[:, rows] = torch.where(kept[rows], terms, 0.0)
    entropy = digamma(torch.tensor(float(samples), dtype=dtype)) + entropy_terms.mean(dim=1)
    if labels is None:
        return entropy, None
    if kept_total == 0:
        return entropy, torch.zeros(seeds, dtype=dtype, device=device)
    information = digamma(torch.tensor(float(kept_total), dtype=dtype)) + information_terms.sum(dim=1) / kept_total
    return entropy, information


def ksg_information(a, b, k: int = 3) -> np.ndarray:
    """Kraskov, Stoegbauer & Grassberger's estimator (algorithm 1, max-norm) of I(A;B) of two
    continuous variables, bits per seed: psi(k) + psi(N) - <psi(n_a + 1) + psi(n_b + 1)>, n_a
    the other samples strictly closer in A than the k-th neighbour in (A, B). Not what the
    `knn` estimator reports (T = f(X) is deterministic, so I(X;T) is an entropy); it checks
    the neighbour counting against a closed form."""
    a, b = _as_values(a), _as_values(b)
    seeds, samples, _ = a.shape
    digamma = torch.special.digamma
    total = torch.zeros(seeds, dtype=a.dtype, device=a.device)
    for start, stop in _row_blocks(seeds, samples):
        in_a = torch.cdist(a[:, start:stop], a, p=math.inf)
        in_b = torch.cdist(b[:, start:stop], b, p=math.inf)
        radius = torch.maximum(in_a, in_b).topk(k + 1, dim=2, largest=False).values[..., k : k + 1]
        count_a = (in_a < radius).sum(dim=2)  # the point itself included: n_a + 1
        count_b = (in_b < radius).sum(dim=2)
        total += (digamma(count_a.to(a.dtype)) + digamma(count_b.to(a.dtype))).sum(dim=1)
    k_term = digamma(torch.tensor(float(k), dtype=a.dtype)) + digamma(torch.tensor(float(samples), dtype=a.dtype))
    return _bits(k_term.to(a.device) - total / samples)


# -- EDGE ---------------------------------------------------------------------------------------


def edge_information(
    values,
    labels,
    width: float | np.ndarray | None = None,
    ensemble: int = EDGE_ENSEMBLE,
    clip_xt: float = EDGE_CLIP_XT,
    clip_ty: float = EDGE_CLIP_TY,
) -> tuple[np.ndarray, np.ndarray]:
    """Noshad et al.'s EDGE, bits per seed: the median over `ensemble` hashes of the plug-in MI
    of T's cells, each point's log2 ratio clipped at U (clip_xt, clip_ty).

    Hash l puts t in the cell floor((t - min + l/L * eps_l) / eps_l) per neuron, eps_l rising
    from eps to 1.1 eps. The cell width eps per neuron: `width`, or by default the neuron's
    range / N^(1/d) (about N cells over the layer's box; the published code's own rule, from
    k-NN distances of random projections with a second normalising pass, is not taken over).
    Cells are told apart exactly (sorted keys): the collision-free limit of the paper's second
    hash. X is uniform over the samples, each its own cell, so I(X;T) = (1/N) sum_i
    min(log2(N / n_cell(i)), U); Y's cells are the labels.

    On quantized codes: where eps is below the quantization step every state is its own cell
    and EDGE is the exact plug-in H(T) and I(T;Y) with the log ratios clipped (so I(X;T) <=
    U); where it is wider, EDGE is uniform binning of cell width eps, median over the shifts."""
    values, labels = _as_values(values), _as_labels(labels)
    seeds, samples, neurons = values.shape
    low = values.amin(dim=1, keepdim=True)
    span = values.amax(dim=1, keepdim=True) - low
    if width is None:
        base = span * samples ** (-1.0 / max(neurons, 1))
    else:
        base = torch.as_tensor(width, dtype=values.dtype, device=values.device).expand_as(span)
    base = torch.where(base > 0, base, torch.ones_like(base))  # a constant neuron: one cell
    label_ids = np.unique(labels.cpu().numpy(), return_inverse=True)[1].reshape(-1)
    classes = int(label_ids.max()) + 1 if samples else 1
    label_counts = np.bincount(label_ids, minlength=classes)
    offsets = np.arange(seeds)[:, None]
    estimates_xt, estimates_ty = [], []
    for step in range(ensemble):
        eps = base * (1 + EDGE_WIDTH_RANGE * step / max(ensemble - 1, 1))
        cells = torch.floor((values - low + step / ensemble * eps) / eps).to(torch.int64).cpu().numpy()
        cell = row_ids(cells)  # (seeds, samples) dense ids < samples
        cell_counts = np.bincount((cell + offsets * samples).reshape(-1), minlength=seeds * samples).reshape(
            seeds, samples
        )
        joint = (cell * classes + label_ids[None, :]) + offsets * samples * classes
        joint_counts = np.bincount(joint.reshape(-1), minlength=seeds * samples * classes).reshape(seeds, -1)
        n_cell = np.take_along_axis(cell_counts, cell, axis=1)
        n_joint = np.take_along_axis(joint_counts, cell * classes + label_ids[None, :], axis=1)
        ratio_xt = np.log2(samples / n_cell)
        ratio_ty = np.log2(samples * n_joint / (n_cell * label_counts[label_ids][None, :]))
        estimates_xt.append(np.minimum(ratio_xt, clip_xt).mean(axis=1))
        estimates_ty.append(np.minimum(ratio_ty, clip_ty).mean(axis=1))
    return np.median(estimates_xt, axis=0), np.median(estimates_ty, axis=0)


# -- matrix-based Renyi entropy -----------------------------------------------------------------


def renyi_information(
    values,
    labels,
    width: float | None = None,
    alpha: float = RENYI_ALPHA,
    neighbour: int = RENYI_NEIGHBOUR,
) -> tuple[np.ndarray, np.ndarray]:
    """Matrix-based Renyi alpha-entropies (Giraldo, Rao & Principe 2015), bits per seed: I(X;T)
    and I(T;Y) as Yu et al. (2019) and Wickstrom et al. (2019) estimate them in networks.

    T's Gram matrix K_ij = exp(-D_ij / (2 sigma^2)), D_ij = ||t_i - t_j||^2, normalised to
    A_ij = K_ij / (N sqrt(K_ii K_jj)) = K_ij / N (trace 1); S(A) = log2(sum_k lambda_k^alpha) /
    (1 - alpha) over A's eigenvalues. The joint entropy is S(A o B / tr(A o B)), o the Hadamard
    product. The width sigma: `width`, or by default Wickstrom et al.'s rule (their published
    code): r = the mean over the samples of the Euclidean distance to the `neighbour`-th nearest
    other sample (cut to N - 1; tied samples count), in their kernel exp(-D / r^2), that is
    sigma = r / sqrt(2) here. Where r = 0 (every sample has at least `neighbour` others equal
    to it) the kernel is its limit, K_ij = [t_i = t_j].

    X: every sample is its own input (X uniform over the samples, as the exact count has it),
    so A_X = I / N, A_X o A_T / tr = I / N: S(X,T) = S(X) = log2 N, and I(X;T) = S(X) + S(T) -
    S(X,T) = S(T). (Wickstrom et al.'s code gives the inputs a Gaussian Gram matrix of their
    own; here X is the sample, not its pixels.) Y: the Gaussian kernel of the one-hot labels in
    its zero-width limit, K_Y[i,j] = [y_i = y_j] (their rule gives exactly this whenever every
    class holds more than `neighbour` samples), so S(Y) is the Renyi entropy of the label
    frequencies and A_T o A_Y / tr = K_T o K_Y / N is block diagonal by class: S(T,Y) from the
    eigenvalues of the classes' blocks. I(T;Y) = S(T) + S(Y) - S(T,Y).

    Computed over T's distinct rows u (counts c_u): with P the samples' membership of the rows,
    K = P K_u P^T, and (1/N) P K_u P^T has the nonzero eigenvalues of (1/N) C^1/2 K_u C^1/2,
    C = diag(c) (AB and BA share them): the same entropies (not an approximation) from a
    matrix of side `distinct` instead of N; so too each class's block. Each seed alone."""
    values, labels = _as_values(values), _as_labels(labels).to(values.device)
    seeds, samples, _ = values.shape
    classes, label_index, class_sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    frequencies = class_sizes.to(values.dtype) / samples
    label_entropy = _renyi_of_spectrum(frequencies, alpha)
    mi_xt = torch.empty(seeds, dtype=values.dtype, device=values.device)
    mi_ty = torch.empty_like(mi_xt)
    for seed in range(seeds):
        rows, inverse, counts = torch.unique(values[seed], dim=0, return_inverse=True, return_counts=True)
        sigma = renyi_kernel_width(rows, counts, neighbour) if width is None else float(width)
        gram = _gaussian_gram(rows, sigma)
        entropy = _renyi_of_spectrum(_weighted_spectrum(gram, counts, samples), alpha)
        joint = []
        for label in range(len(classes)):
            # the class's distinct rows, with their counts within the class
            ids, class_counts = torch.unique(inverse[label_index == label], return_counts=True)
            joint.append(_weighted_spectrum(gram[ids][:, ids], class_counts, samples))
        joint_entropy = _renyi_of_spectrum(torch.cat(joint), alpha)
        mi_xt[seed] = entropy
        mi_ty[seed] = entropy + label_entropy - joint_entropy
    return mi_xt.double().cpu().numpy(), mi_ty.double().cpu().numpy()


def renyi_kernel_width(rows: torch.Tensor, counts: torch.Tensor, neighbour: int = RENYI_NEIGHBOUR) -> float:
    """sigma = r / sqrt(2), r the mean over the samples of the Euclidean distance to their
    `neighbour`-th nearest other sample (cut to N - 1), from the distinct rows (distinct, d)
    and their counts: a row's k-th neighbour is where the counts of the rows sorted by distance
    from it (itself first) reach k + 1, so a row repeated more than k times is at distance 0."""
    samples = int(counts.sum())
    k = max(0, min(neighbour, samples - 1))
    total = torch.zeros((), dtype=rows.dtype, device=rows.device)
    for start, stop in _row_blocks(1, rows.shape[0]):
        distances = torch.cdist(rows[start:stop], rows, compute_mode="donot_use_mm_for_euclid_dist")
        ordered, order = distances.sort(dim=1)
        reached = counts[order].cumsum(dim=1)
        position = (reached < k + 1).sum(dim=1, keepdim=True)  # the first where the counts reach k + 1
        total += (ordered.gather(1, position).squeeze(1) * counts[start:stop].to(rows.dtype)).sum()
    return float(total / samples) / math.sqrt(2.0)


def _gaussian_gram(rows: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(-||r_u - r_v||^2 / (2 sigma^2)) of distinct rows; at sigma = 0, its limit: the identity."""
    if sigma <= 0:
        return torch.eye(rows.shape[0], dtype=rows.dtype, device=rows.device)
    squared = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist").square_()
    return squared.div_(-2.0 * sigma * sigma).exp_()


def _weighted_spectrum(gram: torch.Tensor, counts: torch.Tensor, samples: int) -> torch.Tensor:
    """The eigenvalues of (1/N) C^1/2 K C^1/2, the nonzero ones of the samples' normalised Gram
    matrix (each distinct row repeated its count times), clipped at 0 (rounding)."""
    root = counts.to(gram.dtype).sqrt()
    weighted = gram * root[:, None] * root[None, :] / samples
    return torch.linalg.eigvalsh(weighted).clamp_(min=0)


def _renyi_of_spectrum(eigenvalues: torch.Tensor, alpha: float) -> torch.Tensor:
    """log2(sum lambda^alpha) / (1 - alpha): the Renyi alpha-entropy of a spectrum summing to 1."""
    return torch.log2(eigenvalues.pow(alpha).sum()) / (1.0 - alpha)


# -- adaptive binning ---------------------------------------------------------------------------


def adaptive_bin_codes(values, bins: int):
    """Equal-frequency binning: each neuron's values (per seed) into `bins` bins holding about
    N / bins samples each; a value's bin is floor(bins * (samples below it) / N), so equal
    values share a bin (a bin may hold more, and bins may stay empty, where values tie, as on
    quantized codes). Returns int32 codes of the values' kind (NumPy or torch, same device)."""
    was_numpy = not isinstance(values, torch.Tensor)
    values = _as_values(values)
    samples = values.shape[1]
    by_neuron = values.transpose(1, 2).contiguous()  # (seeds, neurons, samples)
    below = torch.searchsorted(by_neuron.sort(dim=2).values, by_neuron, side="left")
    codes = (below * bins // max(samples, 1)).to(torch.int32).transpose(1, 2)
    return codes.numpy() if was_numpy else codes


# -- shared -------------------------------------------------------------------------------------


def _as_values(values) -> torch.Tensor:
    """(seeds, samples, neurons) float64 tensor on the values' device."""
    values = torch.as_tensor(values)
    if values.dim() == 2:
        values = values[None]
    if values.dim() != 3:
        raise ValueError(
            f"values must be (samples, neurons) or (seeds, samples, neurons), got shape {tuple(values.shape)}"
        )
    values = values.to(torch.float64)
    if torch.isnan(values).any():
        raise ValueError("activations contain NaN; the network diverged")
    return values


def _as_labels(labels) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        return labels.reshape(-1).to(torch.int64)
    return torch.as_tensor(np.asarray(labels).reshape(-1).astype(np.int64))


def _row_blocks(seeds: int, samples: int):
    """(start, stop) of row blocks whose distances to all samples, over all seeds, fit
    BLOCK_ELEMENTS."""
    rows = max(1, BLOCK_ELEMENTS // max(1, seeds * samples))
    for start in range(0, samples, rows):
        yield start, min(start + rows, samples)


def _bits(nats: torch.Tensor) -> np.ndarray:
    return (nats / _LN2).double().cpu().numpy()
