"""The study's networks, batched over seeds: shapes, initialisation, independence of seeds."""

from __future__ import annotations

import math

import pytest
import torch

from ibray.config import DENSE_WIDTHS, hidden_widths, layer_count
from ibray.models import ConvNetwork, DenseNetwork, activation_function, batched_network

MNIST = dict(inputs=784, classes=10, image_shape=(28, 28))


def network(architecture, bits=8, seeds=2, **kwargs):
    shape = MNIST if architecture != "syn" else dict(inputs=12, classes=2)
    net = batched_network(
        architecture, "relu" if architecture != "syn" else "tanh", bits=bits, seeds=seeds, **shape, **kwargs
    )
    for slot in range(seeds):
        net.init_slot(slot, torch.Generator().manual_seed(slot))
    return net


def test_tanh_is_tanh_to_within_2e_7():
    # ibray's tanh is 2 sigmoid(2x) - 1 (torch's tanh kernel is six times slower on the CPU)
    tanh = activation_function("tanh")
    x = torch.linspace(-30, 30, 600_001)
    values = tanh(x)
    assert (values.double() - torch.tanh(x.double())).abs().max().item() <= 2e-7
    assert (values[1:] >= values[:-1]).all()  # monotone, as the quantizer's codes assume
    special = tanh(torch.tensor([0.0, -0.0, 1e-9, float("inf"), float("-inf"), 100.0]))
    assert special.tolist() == [0.0, 0.0, 0.0, 1.0, -1.0, 1.0]
    # autograd through it (the conv network, the tests' reference) gives tanh's derivative
    x = torch.linspace(-5, 5, 1001, requires_grad=True)
    tanh(x).sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ["syn", "bottleneck2", "bottleneck4", "hourglass", "4x10", "conv"])
@pytest.mark.parametrize("bits", [4, 8, 32])
def test_every_network_runs_at_4_8_32_bits(architecture, bits):
    net = network(architecture, bits)
    inputs = 12 if architecture == "syn" else 784
    result = net.train()(torch.rand(2, 64, inputs))
    classes = 2 if architecture == "syn" else 10
    assert result.log_probs.shape == (2, 64, classes)
    widths = [spec.width for spec in net.layers]
    if architecture == "conv":
        assert widths == [2 * 13 * 13, 2 * 5 * 5, 16, 10]
    else:
        assert widths == list(DENSE_WIDTHS[architecture]) + [classes]
    for spec, values, codes in zip(net.layers, result.values, result.codes):
        assert values.shape == (2, 64, spec.width)
        if bits == 32:
            assert codes is None
        else:
            assert codes.shape == (2, 64, spec.width) and codes.max() <= 2**bits - 1
    result.log_probs.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_truncated_normal_init_uses_the_layers_own_width():
    net = network("4x10", seeds=1)
    for weight in net.weights:
        width = weight.shape[-1]
        std = 1 / math.sqrt(width)
        values = weight[0]
        assert values.abs().max() <= 2 * std + 1e-6
        if values.numel() > 1000:
            # a normal cut at 2 std has std 0.88 of the uncut one
            assert values.std().item() == pytest.approx(0.88 * std, rel=0.1)
    assert all(torch.all(b == 0) for b in net.biases)


def test_glorot_init():
    net = network("bottleneck2", seeds=1, init="glorot")
    first = net.weights[0][0]
    limit = math.sqrt(6 / (784 + 16))
    assert first.abs().max() <= limit and first.abs().max() > 0.9 * limit


def test_slots_are_independent_networks():
    torch.manual_seed(0)
    x = torch.rand(3, 50, 12)
    together = network("syn", seeds=3).train()(x)
    for slot in range(3):
        alone = batched_network("syn", "tanh", 12, 2, bits=8, seeds=1)
        alone.init_slot(0, torch.Generator().manual_seed(slot))
        result = alone.train()(x[slot : slot + 1])
        assert torch.equal(result.log_probs[0], together.log_probs[slot])
        for a, b in zip(result.codes, together.codes):
            assert torch.equal(a[0], b[slot])


@pytest.mark.parametrize("architecture, samples", [("conv", 48), ("bottleneck2", 2048)])
def test_shared_input_mi_pass_matches_per_seed_input(architecture, samples):
    # dense networks multiply shared inputs with all seeds' weights stacked (one addmm)
    net = network(architecture, seeds=3).train()
    x = torch.rand(samples, 784) * (torch.rand(samples, 784) > 0.7)  # sparse, as MNIST
    net(x)  # set ranges
    net.eval()
    shared = net(x)
    stacked = net(x.unsqueeze(0).expand(3, -1, -1))
    assert torch.equal(shared.log_probs, stacked.log_probs)
    for a, b in zip(shared.codes, stacked.codes):
        assert torch.equal(a, b)


@pytest.mark.parametrize("architecture", ["bottleneck2", "conv"])
def test_calibrated_ranges_do_not_depend_on_the_chunk_size(architecture):
    # The chunk of a pass over the data set shrinks with the seeds; epoch 0's ranges must not.
    x = torch.rand(96, 784)
    ranges = []
    for chunk in (96, 32, 16):
        net = network(architecture, seeds=2)
        net.calibrate(x, [0, 1], chunk=chunk)
        ranges.append([(q.low.tolist(), q.high.tolist()) for q in net.quantizers])
    assert ranges[0] == ranges[1] == ranges[2]
    lows, highs = zip(*[(low[0], high[0]) for low, high in ranges[0]])
    assert all(high > low for low, high in zip(lows, highs))  # ranges were set, not left at inf


def test_a_custom_dense_network_has_the_widths_it_is_named_by():
    net = batched_network("9-5-3-2", "relu", inputs=7, classes=3, bits=4, seeds=2)
    for slot in range(2):
        net.init_slot(slot, torch.Generator().manual_seed(slot))
    result = net.train()(torch.rand(2, 40, 7))
    assert [spec.width for spec in net.layers] == [9, 5, 3, 2, 3]
    assert [tuple(w.shape[1:]) for w in net.weights] == [(7, 9), (9, 5), (5, 3), (3, 2), (2, 3)]
    assert result.log_probs.shape == (2, 40, 3) and all(c.max() <= 15 for c in result.codes)
    assert layer_count("9-5-3-2") == 5 and layer_count("1") == 2
    # the study's networks keep their names and widths
    assert [layer_count(a) for a in ("syn", "bottleneck2", "hourglass", "conv")] == [6, 5, 7, 4]
    assert hidden_widths("syn") == DENSE_WIDTHS["syn"] == (10, 7, 5, 4, 3)


def test_custom_slots_are_independent_networks():
    torch.manual_seed(1)
    x = torch.rand(3, 50, 6)
    together = batched_network("12-3", "tanh", 6, 4, bits=8, seeds=3)
    for slot in range(3):
        together.init_slot(slot, torch.Generator().manual_seed(slot))
    shared = together.train()(x)
    for slot in range(3):
        alone = batched_network("12-3", "tanh", 6, 4, bits=8, seeds=1)
        alone.init_slot(0, torch.Generator().manual_seed(slot))
        result = alone.train()(x[slot : slot + 1])
        assert torch.equal(result.log_probs[0], shared.log_probs[slot])
        assert all(torch.equal(a[0], b[slot]) for a, b in zip(result.codes, shared.codes))


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "elu", "leaky_relu", "linear"])
@pytest.mark.parametrize("bits", [4, 8, 32])
def test_the_hand_written_backward_pass_equals_autograd(activation, bits):
    # Dense networks train with `gradient`; autograd through `forward` (straight-through
    # quantizers and all) is the reference. The batch is padded: 40 real samples of 48.
    torch.manual_seed(1)
    x, targets, valid = torch.randn(3, 48, 12) * 2, torch.randint(0, 2, (3, 40)), 40
    nets = []
    for _ in range(2):
        net = batched_network("syn", activation, 12, 2, bits=bits, seeds=3)
        for slot in range(3):
            net.init_slot(slot, torch.Generator().manual_seed(slot))
        nets.append(net.train())
    by_hand, by_autograd = nets
    by_hand.gradient(x, targets, valid)
    log_probs = by_autograd(x, valid=valid).log_probs[:, :valid]
    (-log_probs.gather(2, targets.unsqueeze(-1)).mean(dim=1)).sum().backward()
    scale = by_autograd.flat.grad.abs().max()
    assert scale > 0
    torch.testing.assert_close(by_hand.flat.grad, by_autograd.flat.grad, rtol=1e-5, atol=1e-6 * scale)
    if bits != 32:  # both passes moved the quantizer ranges alike, from the real samples only
        for mine, theirs in zip(by_hand.quantizers, by_autograd.quantizers):
            assert torch.equal(mine.low, theirs.low) and torch.equal(mine.high, theirs.high)
            assert torch.isfinite(mine.low).all()


def test_each_architecture_gets_its_engine():
    dense = batched_network("bottleneck2", "relu", 784, 10, bits=8, seeds=2)
    conv = batched_network("conv", "relu", 784, 10, bits=8, seeds=2, image_shape=(28, 28))
    assert type(dense) is DenseNetwork and dense.features_major and hasattr(dense, "gradient")
    assert type(conv) is ConvNetwork and not conv.features_major and not hasattr(conv, "gradient")
    assert [spec.name for spec in conv.layers] == ["conv1", "conv2", "dense1", "output"]
    assert [spec.width for spec in conv.layers] == [2 * 13 * 13, 2 * 5 * 5, 16, 10]
    assert [spec.width for spec in dense.layers] == [16, 8, 4, 2, 10]
    with pytest.raises(ValueError, match="the conv network needs image inputs"):
        batched_network("conv", "relu", 784, 10, bits=8, seeds=1)
