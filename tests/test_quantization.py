"""k-bit fake quantization: levels, ranges, straight-through gradient, frozen MI pass."""

from __future__ import annotations

import pytest
import torch

from ibray.quantization import Quantizer


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_at_most_2_to_the_k_levels_per_neuron(bits):
    q = Quantizer(bits, seeds=3).train()
    values = torch.randn(3, 5000, 4) * torch.tensor([1.0, 5.0, 0.1]).reshape(3, 1, 1)
    out, codes = q(values)
    for seed in range(3):
        levels = torch.unique(out[seed])
        assert len(levels) <= 2**bits
        assert codes[seed].min() >= 0 and codes[seed].max() <= 2**bits - 1
        # levels are uniformly spaced between the seed's own min and max
        low, high = values[seed].min(), values[seed].max()
        assert q.low[seed] == low and q.high[seed] == high
        expected = low + codes[seed] * (high - low) / (2**bits - 1)
        assert torch.allclose(out[seed], expected, atol=1e-6 * float(high - low))
    if bits <= 8:  # 5000 normal samples fill every level of a small grid... nearly
        assert len(torch.unique(codes[0])) > 2 ** (bits - 1)


def test_straight_through_gradient():
    q = Quantizer(2, seeds=1).train()
    values = torch.linspace(-1, 1, 11).reshape(1, 11, 1).requires_grad_()
    out, _ = q(values)
    assert len(torch.unique(out.detach())) == 4
    (out * torch.arange(11.0).reshape(1, 11, 1)).sum().backward()
    assert torch.equal(values.grad.reshape(-1), torch.arange(11.0))


def test_epoch_tracking_widens_over_the_epoch_and_resets():
    q = Quantizer(8, seeds=1, tracking="epoch").train()
    q(torch.tensor([[[0.0], [1.0]]]))
    q(torch.tensor([[[-2.0], [0.5]]]))
    assert (q.low.item(), q.high.item()) == (-2.0, 1.0)
    q.reset()
    q(torch.tensor([[[0.2], [0.3]]]))
    assert q.low.item() == pytest.approx(0.2) and q.high.item() == pytest.approx(0.3)


def test_batch_and_moving_average_tracking():
    batch = Quantizer(8, seeds=1, tracking="batch").train()
    batch(torch.tensor([[[0.0], [4.0]]]))
    batch(torch.tensor([[[1.0], [2.0]]]))
    assert (batch.low.item(), batch.high.item()) == (1.0, 2.0)
    ema = Quantizer(8, seeds=1, tracking="moving_average", ema_decay=0.9).train()
    ema(torch.tensor([[[0.0], [4.0]]]))
    ema(torch.tensor([[[1.0], [2.0]]]))
    assert ema.low.item() == pytest.approx(0.1) and ema.high.item() == pytest.approx(3.8)


def test_frozen_range_clamps_and_stays_fixed():
    q = Quantizer(4, seeds=1).train()
    q(torch.tensor([[[0.0], [1.0]]]))
    q.eval()
    out, codes = q(torch.tensor([[[-3.0], [0.6], [7.0]]]))
    assert (q.low.item(), q.high.item()) == (0.0, 1.0)
    assert codes.reshape(-1).tolist() == [0.0, 9.0, 15.0]
    assert out.reshape(-1).tolist() == pytest.approx([0.0, 9 / 15, 1.0])


def test_constant_layer_maps_to_code_zero():
    q = Quantizer(8, seeds=2).train()
    out, codes = q(torch.full((2, 10, 3), 0.25))
    assert torch.all(codes == 0) and torch.all(out == 0.25)


def test_seeds_keep_their_own_range():
    q = Quantizer(8, seeds=2).train()
    q(torch.stack([torch.tensor([[0.0], [1.0]]), torch.tensor([[-10.0], [10.0]])]))
    assert q.low.tolist() == [0.0, -10.0] and q.high.tolist() == [1.0, 10.0]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_codes_of_quantized_values_are_their_codes(bits):
    # what the conv network relies on: pooled quantized values give back their codes exactly
    quantizer = Quantizer(bits, seeds=3).train()
    values = torch.randn(3, 4000) * torch.tensor([[1.0], [1e-3], [50.0]]) + torch.tensor([[0.0], [7.0], [-3.0]])
    quantized, codes = quantizer(values)
    assert codes.max() == 2**bits - 1 and codes.min() == 0
    assert torch.equal(quantizer.codes_of(quantized), codes)
    constant = Quantizer(bits, seeds=1).train()
    flat_values, flat_codes = constant(torch.full((1, 10), 0.25))
    assert torch.equal(constant.codes_of(flat_values), flat_codes) and flat_codes.eq(0).all()
