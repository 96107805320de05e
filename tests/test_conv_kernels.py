"""The conv network's C kernels (ibray.conv_kernels) against torch: the convolution's forward
values bit for bit equal to the torch reference (what a GPU runs), its gradients equal to
autograd's to within float32 rounding, max-pooling and the fused quantize-and-pool exactly
torch's, a seed's numbers independent of its batch mates, and the torch path where no C
compiler is found."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ibray import conv_kernels
from ibray.conv_kernels import (
    conv3x3,
    conv3x3_quantize_pool,
    pool2x2,
    quantize_pool2x2,
    reference_conv3x3,
    reference_pool2x2,
)
from ibray.models import batched_network
from ibray.quantization import Quantizer, straight_through

pytestmark = pytest.mark.skipif(conv_kernels.library() is None, reason="no C compiler: the kernels cannot be built")

# (seeds, seeds of x: 1 = shared, channels in, out, batch, height, width)
SHAPES = [(3, 3, 1, 2, 5, 28, 28), (4, 1, 1, 2, 7, 28, 28), (3, 3, 2, 2, 6, 13, 13), (2, 2, 3, 2, 4, 11, 12)]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_convolution_is_the_torch_reference_bit_for_bit_and_its_gradients_autograds(shape):
    seeds, x_seeds, channels, outs, batch, side_h, side_w = shape
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(x_seeds, channels, batch, side_h, side_w, generator=generator).requires_grad_(x_seeds == seeds)
    weight = torch.randn(seeds, outs, channels, 3, 3, generator=generator).requires_grad_()
    bias = torch.randn(seeds, outs, generator=generator).requires_grad_()
    fast, slow = conv3x3(x, weight, bias), reference_conv3x3(x, weight, bias)
    assert fast.shape == (seeds, outs, batch, side_h - 2, side_w - 2)
    assert torch.equal(fast, slow)
    grad = torch.randn(fast.shape, generator=generator)
    inputs = [weight, bias] + ([x] if x.requires_grad else [])
    for mine, theirs in zip(torch.autograd.grad(fast, inputs, grad), torch.autograd.grad(slow, inputs, grad)):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES[::2])
def test_relu_in_the_convolutions_pass_is_torch_relu_after_it(shape):
    seeds, x_seeds, channels, outs, batch, side_h, side_w = shape
    generator = torch.Generator().manual_seed(7 + sum(shape))
    x = torch.randn(x_seeds, channels, batch, side_h, side_w, generator=generator).requires_grad_(x_seeds == seeds)
    weight = torch.randn(seeds, outs, channels, 3, 3, generator=generator).requires_grad_()
    bias = torch.randn(seeds, outs, generator=generator).requires_grad_()
    fast, slow = conv3x3(x, weight, bias, relu=True), torch.relu(reference_conv3x3(x, weight, bias))
    assert torch.equal(fast, slow) and (fast == 0).float().mean() > 0.2  # ReLU did cut
    grad = torch.randn(fast.shape, generator=generator)
    inputs = [weight, bias] + ([x] if x.requires_grad else [])
    for mine, theirs in zip(torch.autograd.grad(fast, inputs, grad), torch.autograd.grad(slow, inputs, grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


# (seeds, seeds of x, channels in, out, batch, height, width): MNIST's two layers, odd sides, more
# channels and outputs, rows of several window vectors, the smallest layer (one window)
LAYERS = [
    (3, 1, 1, 2, 40, 28, 28),
    (3, 3, 2, 2, 9, 13, 13),
    (2, 2, 3, 3, 5, 11, 12),
    (2, 2, 1, 2, 4, 36, 41),
    (2, 2, 2, 1, 3, 4, 4),
]


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", LAYERS)
def test_the_measuring_pass_in_one_kernel_is_convolution_then_quantize_and_pool(shape, relu):
    seeds, x_seeds, channels, outs, batch, side_h, side_w = shape
    generator = torch.Generator().manual_seed(11 + sum(shape))
    x = torch.rand(x_seeds, channels, batch, side_h, side_w, generator=generator)
    weight = torch.randn(seeds, outs, channels, 3, 3, generator=generator)
    bias = torch.randn(seeds, outs, generator=generator) * 0.1
    quantizer = Quantizer(8, seeds=seeds)
    quantizer.train()
    quantizer.observe(conv3x3(x, weight, bias, relu), batch_dim=2)
    quantizer.eval()
    pooled, codes = conv3x3_quantize_pool(x, weight, bias, relu, quantizer)
    reference, reference_codes = quantize_pool2x2(conv3x3(x, weight, bias, relu), quantizer)
    assert pooled.shape == (seeds, outs, batch, (side_h - 2) // 2, (side_w - 2) // 2)
    assert torch.equal(pooled, reference) and torch.equal(codes, reference_codes)
    if batch * side_h > 300:
        assert len(torch.unique(codes)) > 50  # the codes spread over the range


def _layer_by_steps(x, weight, bias, quantizer, valid):
    """A training pass's conv layer step by step in torch: convolution, ReLU, the range from the
    valid samples, straight-through quantization, pooling; (pooled values, their codes)."""
    out = torch.relu(reference_conv3x3(x, weight, bias))
    quantizer.observe(out, valid, batch_dim=2)
    low, step, inverse = quantizer.grid(out.dim())
    with torch.no_grad():
        quantized = quantizer.codes(out, low, inverse).mul(step).add_(low)
    pooled = reference_pool2x2(straight_through(out, quantized))
    return pooled, quantizer.codes_of(pooled.detach())


def _a_layer(shape, seed: int, bits: int = 4, tracking: str = "epoch"):
    """x, weight, bias, a quantizer and an output gradient. Tracking 'epoch' starts with no range;
    'epoch so far' with one from earlier batches, which this batch widens for every other seed
    only (the others are quantized once, the first way); 'moving_average' with one narrower
    than the batch's (values get clamped)."""
    seeds, x_seeds, channels, outs, batch, side_h, side_w = shape
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(x_seeds, channels, batch, side_h, side_w, generator=generator)
    weight = torch.randn(seeds, outs, channels, 3, 3, generator=generator)
    bias = torch.randn(seeds, outs, generator=generator) * 0.3
    quantizer = Quantizer(bits, seeds=seeds, tracking=tracking.split()[0], ema_decay=0.5)
    if tracking != "epoch":
        quantizer.low.fill_(0.5)
        quantizer.high.fill_(1.5)
    if tracking == "epoch so far":
        quantizer.low[::2], quantizer.high[::2] = 0.0, 1000.0
    grad = torch.randn(seeds, outs, batch, (side_h - 2) // 2, (side_w - 2) // 2, generator=generator)
    return x.requires_grad_(x_seeds == seeds), weight.requires_grad_(), bias.requires_grad_(), quantizer, grad


@pytest.mark.parametrize("tracking", ["epoch", "epoch so far", "moving_average"])
@pytest.mark.parametrize("shape", LAYERS)
def test_a_training_layer_in_two_kernel_passes_is_its_steps_one_by_one(shape, tracking):
    """Convolution, ReLU, range, quantizer and pooling in the C kernels: the same values, codes and
    range as the steps in torch, bit for bit (4 bits: windows full of ties), only the valid samples
    in the range, and the gradients (through the first maximum of each window, and ReLU) equal to
    autograd's to within float32 rounding."""
    batch = shape[4]
    valid = max(1, batch - 2)  # the rest is padding
    x, weight, bias, quantizer, grad = _a_layer(shape, sum(shape), tracking=tracking)
    reference_quantizer = copy.deepcopy(quantizer)
    pooled, codes = conv3x3_quantize_pool(x, weight, bias, True, quantizer, valid)
    reference, reference_codes = _layer_by_steps(x, weight, bias, reference_quantizer, valid)
    assert torch.equal(quantizer.low, reference_quantizer.low) and torch.equal(quantizer.high, reference_quantizer.high)
    assert torch.equal(pooled, reference) and torch.equal(codes, reference_codes)
    assert codes.min() >= 0 and codes.max() <= 15 and torch.equal(codes, codes.round())
    inputs = [weight, bias] + ([x] if x.requires_grad else [])
    mine = torch.autograd.grad(pooled, inputs, grad)
    theirs = torch.autograd.grad(reference, inputs, grad)
    for ours, autograds in zip(mine, theirs):
        assert ours.shape == autograds.shape
        torch.testing.assert_close(ours, autograds, rtol=1e-5, atol=1e-5 * autograds.abs().max().item())
    assert all(g.abs().sum() > 0 for g in mine)


@pytest.mark.parametrize("tracking", ["epoch so far", "moving_average"])
@pytest.mark.parametrize("seeds", [4, 5])
def test_a_training_layers_seed_does_not_depend_on_its_batch_mates_and_a_nan_stays_its_own(seeds, tracking):
    """Each seed alone and all together, on one thread and split over two (the seeds in two
    halves, uneven for 5): the same values, codes, range and gradients, bit for bit; a seed whose
    weights went NaN gets NaN ranges (as torch's amin and amax give) and leaves the others as
    they were."""
    shape = (seeds, seeds, 2, 2, 6, 13, 13)
    x, weight, bias, quantizer, grad = _a_layer(shape, 5, bits=8, tracking=tracking)
    with torch.no_grad():
        weight[2, 1, 0, 1, 1] = float("nan")
    before = [quantizer.low.clone(), quantizer.high.clone()]
    split = copy.deepcopy(quantizer)
    pooled_split, codes_split = conv3x3_quantize_pool(x, weight, bias, True, split, 5, threads=2)
    split_grads = torch.autograd.grad(pooled_split, [x, weight, bias], grad)
    pooled, codes = conv3x3_quantize_pool(x, weight, bias, True, quantizer, 5)
    same = functools.partial(torch.testing.assert_close, rtol=0, atol=0, equal_nan=True)
    for ours, theirs in [
        (pooled_split, pooled),
        (codes_split, codes),
        (split.low, quantizer.low),
        (split.high, quantizer.high),
    ]:
        same(ours, theirs)
    together = torch.autograd.grad(pooled, [x, weight, bias], grad)
    for ours, theirs in zip(split_grads, together):
        same(ours, theirs)
    assert quantizer.low[2].isnan() and quantizer.high[2].isnan()
    if tracking == "epoch so far":
        assert quantizer.high[0] == 1000.0 and quantizer.high[1] > 1.5  # one range stood, one moved
    for seed in range(seeds):
        alone = [t[seed : seed + 1].detach().requires_grad_() for t in (x, weight, bias)]
        own = Quantizer(8, seeds=1, tracking=quantizer.tracking, ema_decay=0.5)
        own.low[0], own.high[0] = before[0][seed], before[1][seed]
        pooled_alone, codes_alone = conv3x3_quantize_pool(*alone, True, own, 5)
        same(pooled_alone[0], pooled[seed])
        same(codes_alone[0], codes[seed])
        same(own.low[0], quantizer.low[seed])
        same(own.high[0], quantizer.high[seed])
        for mine, batched in zip(torch.autograd.grad(pooled_alone, alone, grad[seed : seed + 1]), together):
            same(mine[0], batched[seed])


def test_the_convolution_of_a_known_image():
    # a 4 x 4 ramp, one kernel of ones with bias 1: each output is 1 + the sum of its 3x3 window
    x = torch.arange(16.0).view(1, 1, 1, 4, 4)
    out = conv3x3(x, torch.ones(1, 1, 1, 3, 3), torch.ones(1, 1))
    assert out.flatten().tolist() == [1 + 45, 1 + 54, 1 + 81, 1 + 90]


@pytest.mark.parametrize("side", [(26, 26), (11, 11), (7, 10)])
def test_pooling_is_torch_max_pool_with_its_tie_rule(side):
    generator = torch.Generator().manual_seed(side[0])
    # values on a coarse grid, so that windows hold ties: the gradient goes to the first maximum
    values = torch.randint(0, 3, (3, 2, 5, *side), generator=generator).float().requires_grad_()
    mine, theirs = pool2x2(values), reference_pool2x2(values)
    assert torch.equal(mine, theirs)
    grad = torch.randn(mine.shape, generator=generator)
    assert torch.equal(torch.autograd.grad(mine, values, grad)[0], torch.autograd.grad(theirs, values, grad)[0])


def test_quantize_and_pool_in_one_pass_is_quantizing_then_pooling():
    generator = torch.Generator().manual_seed(3)
    values = torch.relu(torch.randn(4, 2, 6, 11, 11, generator=generator)).requires_grad_()
    quantizer = Quantizer(4, seeds=4)  # 4 bits: coarse codes, many ties within a window
    quantizer.train()
    quantizer.observe(values.detach(), batch_dim=2)
    pooled, codes = quantize_pool2x2(values, quantizer)
    reference = reference_pool2x2(quantizer(values, batch_dim=2)[0])  # the same ranges: nothing new to track
    assert torch.equal(pooled, reference)
    assert torch.equal(codes, quantizer.codes_of(reference.detach()))
    assert codes.min() >= 0 and codes.max() <= 15 and torch.equal(codes, codes.round())
    grad = torch.randn(pooled.shape, generator=generator)
    ours = torch.autograd.grad(pooled, values, grad)[0]
    low, step, inverse = quantizer.grid(values.dim())
    with torch.no_grad():
        quantized = quantizer.codes(values, low, inverse).mul(step).add_(low)
    theirs = torch.autograd.grad(reference_pool2x2(straight_through(values, quantized)), values, grad)[0]
    assert torch.equal(ours, theirs)


def test_a_seeds_convolution_does_not_depend_on_its_batch_mates():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4, 1, 9, 28, 28, generator=generator, requires_grad=True)
    weight = torch.randn(4, 2, 1, 3, 3, generator=generator, requires_grad=True)
    bias = torch.randn(4, 2, generator=generator, requires_grad=True)
    grad = torch.randn(4, 2, 9, 26, 26, generator=generator)
    together = conv3x3(x, weight, bias)
    all_grads = torch.autograd.grad(together, [x, weight, bias], grad)
    for seed in range(4):
        alone_x = x[seed : seed + 1].detach().requires_grad_()
        alone_w = weight[seed : seed + 1].detach().requires_grad_()
        alone_b = bias[seed : seed + 1].detach().requires_grad_()
        alone = conv3x3(alone_x, alone_w, alone_b)
        assert torch.equal(alone[0], together[seed])
        for mine, batched in zip(
            torch.autograd.grad(alone, [alone_x, alone_w, alone_b], grad[seed : seed + 1]), all_grads
        ):
            assert torch.equal(mine[0], batched[seed])


def test_the_conv_network_trains_the_same_forward_values_on_the_torch_path(monkeypatch):
    """One training step of the conv network with the kernels and with the torch reference,
    then a measuring pass: the same forward values (so the same codes), gradients equal to
    within rounding."""

    def step():
        network = batched_network("conv", "relu", inputs=784, classes=10, bits=8, seeds=3, image_shape=(28, 28))
        for slot in range(3):
            network.init_slot(slot, torch.Generator().manual_seed(slot))
        network.train()
        x = torch.rand(3, 32, 784, generator=torch.Generator().manual_seed(9))
        result = network(x, valid=32)
        result.log_probs[..., 0].sum().backward()

        network.eval()
        with torch.no_grad():
            measured = network(torch.rand(1, 48, 784, generator=torch.Generator().manual_seed(4))[0])
        return result, network.flat.grad, measured

    fast, fast_grad, fast_measured = step()
    monkeypatch.setattr(conv_kernels, "_loaded", [None])  # as on a machine without a C compiler
    slow, slow_grad, slow_measured = step()
    for mine, theirs in zip(fast.values + fast.codes, slow.values + slow.codes):
        assert torch.equal(mine, theirs)
    for mine, theirs in zip(fast_measured.values + fast_measured.codes, slow_measured.values + slow_measured.codes):
        assert torch.equal(mine, theirs)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-4, atol=1e-6)
    assert fast_grad.abs().sum() > 0


def test_without_a_compiler_one_warning_and_the_torch_path(tmp_path):
    """A compiler that is not there: one warning naming why, and the conv network still runs."""
    script = textwrap.dedent(
        """
        import warnings, torch
        from ibray import conv_kernels
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = conv_kernels.conv3x3(torch.ones(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 3, 3), torch.zeros(1, 1))
            conv_kernels.pool2x2(torch.ones(1, 4, 4))
        print(out.flatten().tolist())
        print(len(caught))
        print(caught[0].message)
        """
    )
    environment = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "IBRAY_KERNEL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120)
    assert done.returncode == 0, done.stderr
    values, count, message = done.stdout.strip().splitlines()
    assert values == "[9.0, 9.0, 9.0, 9.0]"
    assert count == "1"
    assert "no-such-cc could not run" in message and "torch path" in message
    assert not any((tmp_path / "cache").glob("*.so"))


def test_the_kernels_are_built_once_into_the_cache(tmp_path):
    script = "from ibray import conv_kernels; print(conv_kernels.library() is not None)"
    environment = {**os.environ, "IBRAY_KERNEL_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120)
    assert first.stdout.strip() == "True", first.stderr
    (built,) = tmp_path.glob("ibray_conv_*.so")
    stamp = built.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120)
    assert again.stdout.strip() == "True" and built.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [built]  # no compile folders left behind
