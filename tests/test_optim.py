"""The per-seed Adam against the Keras update formula, computed independently in float64."""

from __future__ import annotations

import math

import numpy as np
import torch

from ibray.optim import BETAS, EPSILON, SeedAdam


def keras_adam(param: np.ndarray, grads: list[np.ndarray], lr: float) -> np.ndarray:
    """Keras' Adam, one seed, float64: bias corrections folded into the learning rate."""
    beta1, beta2 = BETAS
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        lr_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        param = param - lr_t * m / (np.sqrt(v) + EPSILON)
    return param


def test_each_seed_follows_keras_adam_with_its_own_step_count():
    rng = np.random.default_rng(0)
    seeds, width, lr = 3, 5, 1e-3
    start = rng.normal(size=(seeds, width))
    grads = [rng.normal(size=(seeds, width)) for _ in range(7)]
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
    adam = SeedAdam([param], seeds, lr)
    restart_at = 4  # seed 1 is re-initialised after 4 steps and starts counting again
    for step, g in enumerate(grads, start=1):
        param.grad = torch.tensor(g, dtype=torch.float32)
        adam.step()
        assert param.grad is None
        if step == restart_at:
            with torch.no_grad():
                param[1] = torch.tensor(start[1], dtype=torch.float32)
            adam.reset_slot(1)
    assert adam.steps == [7, 3, 7]
    got = param.detach().double().numpy()
    for seed in (0, 2):
        expected = keras_adam(start[seed], [g[seed] for g in grads], lr)
        np.testing.assert_allclose(got[seed], expected, rtol=0, atol=2e-6)
    expected = keras_adam(start[1], [g[1] for g in grads[restart_at:]], lr)
    np.testing.assert_allclose(got[1], expected, rtol=0, atol=2e-6)
    assert np.abs(got[0] - start[0]).max() > 2 * lr  # it moved: seven steps of up to ~lr each


def test_a_seed_gets_the_same_bits_in_any_slot():
    rng = np.random.default_rng(1)
    start = rng.normal(size=(1, 37)).astype(np.float32)
    grads = [rng.normal(size=(1, 37)).astype(np.float32) for _ in range(5)]
    results = []
    for slots, slot in ((1, 0), (4, 3)):
        others = rng.normal(size=(slots, 37)).astype(np.float32)
        others[slot] = start[0]
        param = torch.nn.Parameter(torch.tensor(others))
        adam = SeedAdam([param], slots, 1e-4)
        for g in grads:
            full = rng.normal(size=(slots, 37)).astype(np.float32)
            full[slot] = g[0]
            param.grad = torch.tensor(full)
            adam.step()
        results.append(param.detach()[slot].clone())
    assert torch.equal(results[0], results[1])
