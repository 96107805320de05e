"""The study's networks, batched over seeds: one module holds S independent networks.

Every weight has a leading seed axis (dense layers: (S, in, out), used with batched matrix
products; conv layers: per-seed 3x3 kernels, run as direct loops in C, ibray.conv_kernels), and
every quantizer keeps one range per seed, so S repetitions train in one pass while staying
independent: a seed's numbers do not depend on which other seeds share the batch. Each seed slot is initialised from its own
random stream and can be re-initialised alone (a restarted seed).

Three engines share the base: DenseNetwork, ConvNetwork (the study's) and ModuleNetwork (your
own torch.nn.Module, found and built by ibray.own_module).
"""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ibray.config import CONV_MIN_SIDE, FLOAT_BITS, hidden_widths, own_module
from ibray.conv_kernels import conv3x3, conv3x3_quantize_pool, pool2x2, quantize_pool2x2
from ibray.device import LANES, pad_to_lanes
from ibray.errors import ConfigError
from ibray.own_module import build, input_shape, measured_names, probe, quoted
from ibray.quantization import Quantizer, straight_through

CONV_CHANNELS = 2  # both conv layers: 3x3 kernels, 2 channels, ReLU, then 2x2 max-pooling
CONV_DENSE = 16  # the dense layer after the convolutions (16 in the authors' code; 20 in the text)


def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


def _tanh(values: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1, to within 2e-7 (three float32 steps at 1).

    torch's own tanh kernel is several times slower on the CPU than its sigmoid (measured with
    torch 2.13 on AVX-512: 2.6 vs 0.4 ns per element), and tanh is the study's activation:
    it was a third of a training epoch and of a measurement. One definition for every engine
    and device, so eager, compiled and CUDA compute the same function.
    """
    half = torch.sigmoid(values * 2)
    if half.requires_grad:  # sigmoid's backward needs its output as it was
        return half * 2 - 1
    return half.mul_(2).sub_(1)


def activation_function(name: str):
    """The function of a hidden activation named in config.ACTIVATIONS: torch's of that name
    (tanh: `_tanh`, the same function, faster)."""
    if name == "linear":
        return _identity
    return _tanh if name == "tanh" else getattr(F, name)


# The derivative of each activation from its input `pre` and output `out` (torch's defaults:
# leaky_relu's slope 0.01, elu's alpha 1; 0 at the kink, as torch's own backward), used by the
# hand-written backward pass of the dense networks. Named functions, so that a network pickles.
def _tanh_derivative(pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return 1 - out * out


def _sigmoid_derivative(pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out * (1 - out)


def _relu_derivative(pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return (pre > 0).to(pre.dtype)


def _leaky_relu_derivative(pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.where(pre > 0, 1.0, 0.01)


def _elu_derivative(pre: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.where(pre > 0, 1.0, out + 1)


_DERIVATIVES = {
    "tanh": _tanh_derivative,
    "sigmoid": _sigmoid_derivative,
    "relu": _relu_derivative,
    "leaky_relu": _leaky_relu_derivative,
    "elu": _elu_derivative,
    "linear": None,  # the identity: nothing to multiply by
}


def activation_derivative(name: str):
    """d activation / d input as a function of (input, output); None for the identity."""
    return _DERIVATIVES[name]


_LOG_EPSILON = 1e-7  # as Keras: the cross-entropy of a quantized probability of 0 stays finite


def _shared_input_layer(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A layer of every seed, weights (S, out, features) and biases (S, out, 1), over inputs
    (features, B) shared by all seeds: (S, out, B), features-major, one product per seed.

    Not one product of all seeds' weights stacked, (S x out, features): that is about twice as
    fast, but MKL rounds a row by the stack's height (measured: for 9 or 18 features, the conv
    layers' patches, a seed's row differs from its own product once two seeds are stacked), so
    a seed's numbers would depend on how many seeds share its trial. Nor a batched product
    over the inputs expanded to every seed: no faster than the loop, and it holds no copy."""
    seeds = weight.shape[0]
    if torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad):
        return torch.stack([torch.addmm(bias[seed], weight[seed], inputs) for seed in range(seeds)])
    out = torch.empty(seeds, weight.shape[1], inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    for seed in range(seeds):
        torch.addmm(bias[seed], weight[seed], inputs, out=out[seed])
    return out


@dataclass(frozen=True)
class LayerSpec:
    name: str  # e.g. 'dense1', 'conv1', 'output'
    kind: str  # 'dense' or 'conv'
    width: int  # neurons of the layer's output T, as the next layer receives it


@dataclass
class _DenseTrace:
    """A dense network's pass in features-major layout, (seeds, neurons, samples): what each
    layer received, its pre-activation and output before quantization (the backward pass
    needs them), and what the next layer received."""

    inputs: list[torch.Tensor]
    pre: list[torch.Tensor]
    out: list[torch.Tensor]  # the output layer's: the softmax probabilities
    values: list[torch.Tensor]
    codes: list[torch.Tensor | None]
    log_probs: torch.Tensor  # (S, classes, B)


@dataclass
class ForwardPass:
    """What one forward pass produced: the log-probabilities used by the loss and, per layer,
    the values the next layer receives and their integer codes (None for float networks)."""

    log_probs: torch.Tensor  # (S, B, classes)
    values: list[torch.Tensor]  # per layer (S, B, width)
    codes: list[torch.Tensor | None]


class BatchedNetwork(nn.Module):
    """What every engine shares: the seeds' parameters in one row, per-seed initialisation,
    the quantizers and their calibration. `batched_network` builds the engine an architecture
    needs: DenseNetwork (features-major, a hand-written backward pass) or ConvNetwork."""

    features_major = False  # dense networks run (seeds, neurons, samples); see DenseNetwork

    def __init__(
        self,
        activation: str,
        classes: int,
        bits: int,
        seeds: int,
        init: str = "truncated_normal",
        tracking: str = "epoch",
        ema_decay: float = 0.999,
    ) -> None:
        super().__init__()
        self.activation = activation_function(activation)
        self.activation_name = activation
        self.derivative = activation_derivative(activation)
        self.seeds = seeds
        self.classes = classes
        self.init = init
        self.quantized = bits != FLOAT_BITS
        self._shapes: list[tuple[int, ...]] = []  # per layer: weight shape, then bias shape
        self.layers: list[LayerSpec] = []
        self._bits, self._tracking, self._ema_decay = bits, tracking, ema_decay

    def _finish(self) -> None:
        """Once the engine added its layers: the parameter row and the quantizers."""
        # All of a seed's weights and biases in one row: the optimizer updates one tensor, not
        # two per layer (per-tensor overhead dominates small networks).
        self._sizes = [math.prod(shape) for shape in self._shapes]
        self.flat = nn.Parameter(torch.zeros(self.seeds, sum(self._sizes)))
        self._kept_tensors: tuple | None = None
        self.quantizers = (
            nn.ModuleList(Quantizer(self._bits, self.seeds, self._tracking, self._ema_decay) for _ in self.layers)
            if self.quantized
            else None
        )

    def _add_dense(self, name: str, fan_in: int, fan_out: int) -> None:
        self._shapes += [(fan_in, fan_out), (1, fan_out)]
        self.layers.append(LayerSpec(name, "dense", fan_out))

    def _views(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the weights and biases as (seeds, ...) views of the one parameter row."""
        return self._kept("views", lambda: self._views_of(self.flat))

    def _kept(self, name: str, make):
        """`make()`'s tensors, made once per parameter storage and kept where that is safe:
        without autograd and outside torch.compile (the optimizer and checkpoints write into the
        storage in place). A training step would otherwise spend a fair part of its time
        making views: each is a call into torch, and at one seed the calls are the cost."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return make()
        key = (self.flat.data_ptr(), self.flat.device)
        if self._kept_tensors is None or self._kept_tensors[0] != key:
            self._kept_tensors = (key, {})
        kept = self._kept_tensors[1]
        if name not in kept:
            kept[name] = make()
        return kept[name]

    def __getstate__(self) -> dict:  # copies and pickles make their own views
        return {**self.__dict__, "_kept_tensors": None}

    def _views_of(self, flat: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, weight and bias views of a (seeds, parameters) tensor laid out as `flat`."""
        pieces = [piece.view(self.seeds, *shape) for piece, shape in zip(flat.split(self._sizes, dim=1), self._shapes)]
        return pieces[0::2], pieces[1::2]

    @property
    def weights(self) -> list[torch.Tensor]:
        return self._views()[0]

    @property
    def biases(self) -> list[torch.Tensor]:
        return self._views()[1]

    @torch.no_grad()
    def init_slot(self, slot: int, generator: torch.Generator) -> None:
        """(Re-)initialise seed slot `slot` from its own random stream; biases zero.

        truncated_normal: mean 0, std 1/sqrt(the layer's own width), cut at 2 std (as Keras'
        TruncatedNormal used by the study). glorot: Keras' default, Glorot uniform.
        """
        for weight, bias in zip(*self._views()):
            shape = weight.shape[1:]
            if len(shape) == 2:
                fan_in, fan_out = shape
                width = fan_out
            else:  # conv: (out channels, in channels, kh, kw)
                receptive = shape[2] * shape[3]
                fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
                width = shape[0]
            values = torch.empty(shape)
            if self.init == "glorot":
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                values.uniform_(-limit, limit, generator=generator)
            else:
                std = 1.0 / math.sqrt(width)
                nn.init.trunc_normal_(values, 0.0, std, -2 * std, 2 * std, generator=generator)
            weight[slot].copy_(values.to(weight.device))
            bias[slot].zero_()
        if self.quantizers is not None:
            for quantizer in self.quantizers:
                quantizer.reset(torch.tensor([slot], device=quantizer.low.device))

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, slots: list[int], chunk: int | None = None) -> None:
        """Set the quantizer ranges of seed `slots` to their layers' min/max over `x` (the
        training set: epoch 0's ranges, before any training); other seeds' ranges stay.

        Layer l's range is that of its outputs when it receives layer l-1's outputs quantized
        with layer l-1's final range. One pass gives that when `x` fits one chunk; otherwise
        a pass per layer does (earlier layers' ranges then held fixed), so that the ranges do
        not depend on the chunk size, which depends on the number of seeds (`chunk`: samples
        per chunk, a multiple of LANES; default `eval_chunk`'s)."""
        if self.quantizers is None:
            return
        chunk = chunk or self.eval_chunk(x.shape[1])
        passes = 1 if chunk >= len(x) else len(self.quantizers)
        self.train()
        try:
            for first in range(passes):
                with ExitStack() as stack:
                    for number, quantizer in enumerate(self.quantizers):
                        if number < first:
                            quantizer.eval()  # measured by an earlier pass: held fixed
                        else:
                            stack.enter_context(quantizer.measuring_range(slots))
                    for start in range(0, len(x), chunk):
                        rows, size = pad_to_lanes(x[start : start + chunk])
                        self(rows, valid=size)
        finally:
            self.train()

    def reset_ranges(self) -> None:
        if self.quantizers is not None:
            for quantizer in self.quantizers:
                quantizer.reset()

    def _quantize(
        self, index: int, values: torch.Tensor, valid: int | None, batch_dim: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.quantizers is None:
            return values, None
        return self.quantizers[index](values, valid, batch_dim=batch_dim)

    def _loss_log_probs(self, log_probs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """What the loss sees: the log of the quantized probabilities `probs`, with the gradient
        of the float log-softmax (straight-through); the float ones for a float network."""
        if self.quantizers is None:
            return log_probs
        return straight_through(log_probs, torch.log(probs.detach().clamp_min(_LOG_EPSILON)))

    def eval_chunk(self, features: int, limit: int = 8192) -> int:
        """Samples per forward chunk of a pass over a whole data set (a multiple of LANES)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, valid: int | None = None) -> ForwardPass:
        raise NotImplementedError


class DenseNetwork(BatchedNetwork):
    """Dense networks (the study's named ones and any hidden widths), features-major,
    (seeds, neurons, samples): a layer is then a batched product of a small weight matrix with
    a long one, which MKL does several times faster than the samples-major product; they train
    with a hand-written backward pass (`gradient`) instead of autograd's graph of many small
    operations."""

    features_major = True

    def __init__(
        self, architecture: str, activation: str, inputs: int, classes: int, bits: int, seeds: int, **options
    ) -> None:
        super().__init__(activation, classes, bits, seeds, **options)
        self.architecture = architecture
        previous = inputs
        for number, width in enumerate(hidden_widths(architecture), start=1):
            self._add_dense(f"dense{number}", previous, width)
            previous = width
        self._add_dense("output", previous, classes)
        self._finish()

    def _transposed_views(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the weights (seeds, out, in) and biases (seeds, out, 1) as the
        features-major pass multiplies with them: transposed views of the parameter row."""
        return self._kept(
            "transposed", lambda: tuple([t.transpose(1, 2) for t in part] for part in self._views_of(self.flat))
        )

    def _gradient_buffer(self) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """A tensor shaped like the parameter row for `gradient` to write (every entry, every
        step), with its per-layer weight views and bias views (seeds, out, 1)."""

        def make():
            buffer = torch.empty_like(self.flat)
            weights, biases = self._views_of(buffer)
            return buffer, weights, [bias.transpose(1, 2) for bias in biases]

        return self._kept("gradient", make)

    def eval_chunk(self, features: int, limit: int = 8192) -> int:
        """Samples per forward chunk of a pass over a whole data set, a multiple of LANES: as
        many as keep the widest layer's output over all seeds near 2^21 floats (8 MB), so that
        each of a chunk's tensors stays in the caches and below glibc's mmap threshold (a fresh
        tensor of 45 MB, MNIST's first layer over 70,000 samples and 10 seeds, is paid for in
        page faults by every operation that makes one: the whole data set at once took 0.60 s
        against 0.37 s in chunks, at 10 seeds)."""
        per_sample = self.seeds * max(spec.width for spec in self.layers)
        return max(LANES, 2**21 // per_sample // LANES * LANES)

    def _dense_trace(
        self, x: torch.Tensor, valid: int | None, quantize_output: bool = True, keep: bool = True
    ) -> _DenseTrace:
        """A dense network's forward pass over x (S, B, inputs) or (B, inputs), features-major.

        Differentiable by autograd when gradients are enabled (the tests compare `gradient`
        with it); `gradient` runs it without, and without `quantize_output`: the output
        quantizer then only tracks its range (the loss gradient is the float softmax's), and
        the trace's last values, codes and log-probabilities are the float ones. Without
        `keep` the trace holds no inputs, pre-activations and outputs (only the backward pass
        needs them; a pass over a whole data set would hold them all at once)."""
        hidden = x.transpose(-1, -2)
        trace = _DenseTrace([], [], [], [], [], hidden)
        weights, biases = self._transposed_views()
        last = len(weights) - 1
        for index, (weight, bias) in enumerate(zip(weights, biases)):
            if keep:
                trace.inputs.append(hidden)
            if hidden.dim() == 2:  # inputs shared by all seeds (a pass over the data set)
                pre = _shared_input_layer(weight, bias, hidden)
            else:
                pre = torch.baddbmm(bias, weight, hidden)  # (S, out, B)
            if index == last:
                log_probs = torch.log_softmax(pre, dim=1)
                out = log_probs.exp()
            else:
                out = self.activation(pre)
            if keep:
                trace.pre.append(pre)
                trace.out.append(out)
            if self.quantizers is None:
                hidden, code = out, None
            elif index == last and not quantize_output:
                self.quantizers[index].observe(out, valid, batch_dim=2)
                hidden, code = out, None
            else:
                hidden, code = self.quantizers[index](out, valid, batch_dim=2)
            trace.values.append(hidden)
            trace.codes.append(code)
        trace.log_probs = self._loss_log_probs(log_probs, hidden) if quantize_output else log_probs
        return trace

    @torch.no_grad()
    def gradient(self, x: torch.Tensor, targets: torch.Tensor, valid: int) -> None:
        """Forward and backward pass of a dense network over one mini-batch, by hand: sets
        `flat.grad` to the gradient of the summed per-seed mean cross-entropy (as autograd
        would through `forward`, straight-through quantizers included) and updates the
        quantizer ranges as a training forward pass does.

        x: (S, B, inputs), B padded to LANES; targets: (S, valid) classes of the real samples.
        """
        trace = self._dense_trace(x, valid, quantize_output=False)
        # d(mean NLL)/d(logits) = (softmax - one-hot) / valid; the padding gets none.
        grad_out = trace.out[-1].clone()
        real = grad_out
        if valid < grad_out.shape[2]:
            grad_out[:, :, valid:] = 0
            real = grad_out[:, :, :valid]
        real.scatter_add_(1, targets.unsqueeze(1), torch.full_like(real[:, :1], -1.0))
        grad_out.div_(valid)
        grad, grad_weights, grad_biases = self._gradient_buffer()  # every entry is written below
        weights, _ = self._views()
        for index in reversed(range(len(weights))):
            grad_weights[index].copy_(torch.bmm(trace.inputs[index], grad_out.transpose(1, 2)))
            grad_biases[index].copy_(grad_out.sum(dim=2, keepdim=True))
            if index:
                grad_out = torch.bmm(weights[index], grad_out)  # d loss / d (what layer index received)
                if self.derivative is not None:
                    grad_out.mul_(self.derivative(trace.pre[index - 1], trace.out[index - 1]))
        self.flat.grad = grad

    def forward(self, x: torch.Tensor, valid: int | None = None) -> ForwardPass:
        """x: (S, B, inputs), or (B, inputs) shared by all seeds (the MI pass).

        valid: only the first `valid` samples of the batch count for the quantizer ranges
        (the rest is padding)."""
        trace = self._dense_trace(x, valid, keep=False)
        return ForwardPass(
            trace.log_probs.transpose(1, 2),
            [v.transpose(1, 2) for v in trace.values],
            [c.transpose(1, 2) if c is not None else None for c in trace.codes],
        )


class ConvNetwork(BatchedNetwork):
    """The study's conv network on images: two 3x3 convolutions of CONV_CHANNELS channels, each
    followed by the activation, its quantizer and 2x2 max-pooling, a dense layer of CONV_DENSE
    and the softmax output; channels first, (S, C, B, H, W), trained by autograd. Images of any
    size from CONV_MIN_SIDE pixels a side: (H, W) one channel, or (C, H, W)."""

    def __init__(
        self, activation: str, classes: int, bits: int, seeds: int, image_shape: tuple[int, ...] | None, **options
    ) -> None:
        super().__init__(activation, classes, bits, seeds, **options)
        if image_shape is None or len(image_shape) not in (2, 3) or min(image_shape[-2:]) < CONV_MIN_SIDE:
            raise ValueError(
                f"the conv network needs image inputs of at least {CONV_MIN_SIDE}x{CONV_MIN_SIDE} pixels, not {image_shape}"
            )
        self.architecture = "conv"
        # Threads a training pass's conv layers may use (the seeds split between them; the same
        # numbers either way): the Trainer sets 2 while its measuring thread has nothing to do
        self.training_threads = 1
        self.channels = image_shape[0] if len(image_shape) == 3 else 1
        self.image_shape = tuple(image_shape[-2:])  # (H, W)
        side_h, side_w = self.image_shape
        channels_in = self.channels
        for number in (1, 2):
            self._add_conv(f"conv{number}", channels_in, CONV_CHANNELS)
            side_h, side_w = (side_h - 2) // 2, (side_w - 2) // 2
            channels_in = CONV_CHANNELS
            self.layers[-1] = LayerSpec(f"conv{number}", "conv", CONV_CHANNELS * side_h * side_w)
        self._add_dense("dense1", CONV_CHANNELS * side_h * side_w, CONV_DENSE)
        self._add_dense("output", CONV_DENSE, classes)
        self._finish()

    def _add_conv(self, name: str, channels_in: int, channels_out: int) -> None:
        self._shapes += [(channels_out, channels_in, 3, 3), (channels_out,)]
        self.layers.append(LayerSpec(name, "conv", 0))

    def eval_chunk(self, features: int, limit: int = 8192) -> int:
        """Samples per forward chunk of a pass over a whole data set, a multiple of LANES: at
        most `limit`, and the widest tensor a chunk makes (the first conv layer's pooled values or
        codes: the measuring pass never makes its full-size output) near 2^21 floats (8 MB) over
        all seeds: tensors over glibc's mmap threshold (32 MB at most) are fresh pages each time,
        paid in page faults (measured: the measuring pass took 1.5x as long in chunks of 2^23),
        and each chunk costs its share of Python (at 10 seeds on MNIST: 116 chunks, not 547)."""
        per_sample = max(spec.width for spec in self.layers) * self.seeds
        return max(LANES, min(limit, (2**21 // per_sample) // LANES * LANES))

    @staticmethod
    def _conv(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """3x3 'valid' convolution of (S, C, B, H, W), channels first (or (1, C, B, H, W) shared
        by all seeds), with per-seed kernels (S, out, C, 3, 3): (S, out, B, H-2, W-2), ReLU'd with
        `relu`. A direct loop in C (ibray.conv_kernels), each seed's sums in a fixed order of its own."""
        return conv3x3(hidden, weight, bias, relu)

    @staticmethod
    def _pool(hidden: torch.Tensor) -> torch.Tensor:
        """2x2 max-pooling of (S, C, B, H, W) (odd sides: the last row or column dropped); a
        window's gradient goes to its first maximum, as torch's (and the study's) pooling."""
        return pool2x2(hidden)

    def forward(self, x: torch.Tensor, valid: int | None = None) -> ForwardPass:
        """x: (S, B, pixels), or (B, pixels) shared by all seeds (the MI pass).

        valid: only the first `valid` samples of the batch count for the quantizer ranges
        (the rest is padding)."""
        seeds, batch = self.seeds, x.shape[-2]
        weights, biases = self._views()
        values: list[torch.Tensor] = []
        codes: list[torch.Tensor | None] = []
        # flat images (pixels channel by channel) -> (S, C, B, H, W), channels first; shared by all
        # seeds: (1, C, B, H, W). One channel: a plain reshape, as it always was.
        if self.channels == 1:
            hidden = x.reshape(-1, 1, batch, *self.image_shape)
        else:
            hidden = x.reshape(-1, batch, self.channels, *self.image_shape).transpose(1, 2)
        relu = self.activation_name == "relu"  # ReLU runs inside the convolution's pass
        for index in (0, 1):  # the convolutions, each quantized, then pooled
            quantizer = self.quantizers[index] if self.quantizers is not None else None
            if relu and quantizer is not None:  # convolution, ReLU, range, quantizer and pooling in one go
                hidden, pooled_codes = conv3x3_quantize_pool(
                    hidden, weights[index], biases[index], True, quantizer, valid, self.training_threads
                )
            else:
                out = self._conv(hidden, weights[index], biases[index], relu)
                out = out if relu else self.activation(out)
                if quantizer is None:
                    hidden, pooled_codes = self._pool(out), None
                else:  # one pass: quantized, pooled, and the pooled values' codes (the pooled codes)
                    quantizer.observe(out, valid, batch_dim=2)
                    hidden, pooled_codes = quantize_pool2x2(out, quantizer)
            values.append(hidden.transpose(1, 2).reshape(seeds, batch, -1))  # (S, B, C x H x W)
            codes.append(pooled_codes.transpose(1, 2).reshape(seeds, batch, -1) if pooled_codes is not None else None)
        hidden = values[-1]
        hidden, code = self._quantize(2, self.activation(torch.baddbmm(biases[2], hidden, weights[2])), valid)
        values.append(hidden)
        codes.append(code)
        log_probs = torch.log_softmax(torch.baddbmm(biases[3], hidden, weights[3]), dim=-1)
        probs, code = self._quantize(3, log_probs.exp(), valid)
        values.append(probs)
        codes.append(code)
        return ForwardPass(self._loss_log_probs(log_probs, probs), values, codes)


# -- your own torch.nn.Module, batched over seeds (ibray.own_module finds and builds it) ---------
# The module is kept as a template whose parameters are never trained: every seed's parameters
# live in the one row `flat` (S, P), and its buffers (batch norm's running statistics) in one
# (S, ...) buffer each. Two ways to run it, the same function of a seed's parameters:
#
# - Seed-grouped (`_grouped_plan`, `_run_plan`), where the module is a plain nn.Sequential
#   (nested ones too) of layers it knows: nn.Linear, nn.Flatten, nn.BatchNorm1d and the
#   elementwise activations (`_ELEMENTWISE`; the exact types, no hooks of the user's). All seeds run at once, features-major as DenseNetwork,
#   (S, features, B): a Linear is one batched product of every seed's (out, in) weights with
#   its inputs, an activation one call on the stacked seeds, batch norm per (seed, channel),
#   each measured layer's quantizer one call with per-seed ranges (as the dense engine's); an
#   input shared by all seeds (the measuring pass) meets the first Linear one seed at a time
#   (`_shared_input_layer`). A seed's numbers do not depend on its batch mates on the same
#   terms as the dense engine's: batched products, elementwise functions on lane-aligned
#   blocks (batches stay padded to LANES; the padding is cut from batch norm's statistics and
#   the quantizers' ranges, not from the pass), reductions per (seed, channel) row. The plan
#   is checked against the module itself on a probe batch when the network is built (values
#   within float32 rounding), else not taken.
# - The per-seed loop, for every other module (any forward code: torch.flatten, custom modules,
#   convolutions...): the template once per seed with that seed's tensors
#   (torch.func.functional_call), the padding cut off before the pass, so a seed's numbers
#   cannot depend on its batch mates at all. Forward hooks on the measured submodules (`_Tap`)
#   put the k-bit quantizer after each one's output and record values and codes.
#
# Why a plan of known layers rather than torch.func.vmap over functional_call: the loop spends
# its time in calls, not arithmetic (bottleneck2 at 10 seeds and batches of 256: some 1,500
# small torch calls a training step, each seed's quantizers and autograd's included). vmap
# cuts the calls but adds its batching rules' own cost and runs the products samples-major;
# the quantizers' per-seed ranges and batch norm's running statistics are in-place writes it
# takes only as extra outputs; and a convolution under it becomes a grouped one whose sums may
# depend on the number of groups (seeds). Measured on this 2-core machine (shared, one thread,
# medians of interleaved runs), bottleneck2 as an nn.Sequential at 10 seeds, batches of 256:
# forward and backward without quantizers, the loop 13.3 ms, vmap 6.8, the plan 4.7; a whole
# training step (quantizers, Adam, the batch gathered), the loop 67 ms, the plan 22, the
# built-in DenseNetwork's 18 (its hand-written backward pass). Measured layers are numbered in
# the order the pass runs them; the softmax output is quantized as the built-ins'.

_PROBE_SAMPLES = 2  # a probe batch: batch norm in training mode needs more than one sample
_PLAN_SAMPLES = 32  # the probe batch that checks a seed-grouped plan against the module

# Elementwise modules the grouped plan calls on all seeds' stacked (S, features, B) values at once
# (exact types: a subclass may compute something else). Each maps every number on its own.
_ELEMENTWISE = frozenset(
    {
        nn.Identity,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.ELU,
        nn.CELU,
        nn.SELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Sigmoid,
        nn.Tanh,
        nn.Hardtanh,
        nn.Hardsigmoid,
        nn.Hardswish,
        nn.Softplus,
        nn.Softsign,
        nn.Tanhshrink,
        nn.Softshrink,
        nn.Hardshrink,
        nn.LogSigmoid,
    }
)


@dataclass
class _Run:
    """One seed's pass in progress: what the hooks recorded, per measured layer."""

    slot: int
    values: list = field(default_factory=list)
    codes: list = field(default_factory=list)


class _Tap:
    """The forward hook of measured layer `index`: quantizes and records its output. An object
    holding the network, not a closure: a deep copy of the network (the measuring thread's)
    then gets hooks that point at the copy."""

    def __init__(self, network: "ModuleNetwork", index: int) -> None:
        self.network, self.index = network, index

    def __call__(self, module: nn.Module, inputs, output):
        return self.network._tap(self.index, output)


@dataclass
class _Step:
    """One layer of a seed-grouped plan: `kind` 'linear', 'batch_norm', 'elementwise' or 'end' (a
    measured nn.Sequential's or nn.Flatten's end: only its quantizer); `tensors`: indices of its
    parameters (weight, bias: None where absent) in the parameter row, or of its buffers
    (running mean, variance, batches tracked); `measured`: its quantizer's index."""

    kind: str
    name: str
    module: nn.Module | None = None
    tensors: tuple = ()
    buffers: tuple = ()
    measured: int | None = None


def _has_hooks(module: nn.Module) -> bool:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, name, None) for name in hooks)


def _grouped_plan(
    template: nn.Module, measured: list[str], shape: tuple[int, ...], parameters: list[str], buffers: list[str]
) -> list[_Step] | None:
    """The seed-grouped plan of an own module (see above), or None where it has a layer the plan
    does not know, a module that runs twice, or tensors shared between layers. `measured`: the
    measured layers in the order they run; `shape`: a sample's; `parameters`, `buffers`: the
    template's names, in the order of the parameter row and of the (S, ...) buffers."""
    from torch.nn.modules import module as torch_module

    if any(getattr(torch_module, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return None
    steps: list[_Step] = []
    seen: set[int] = set()
    used: list[str] = []  # the parameters and buffers the steps use
    flat, width = len(shape) == 1, math.prod(shape)

    def own(names: list[str], name: str) -> int:
        used.append(name)
        return names.index(name)  # ValueError: a tensor shared with another layer (not under this name)

    def walk(module: nn.Module, prefix: str) -> bool:
        nonlocal flat, width
        for child_name, child in module._modules.items():  # as Sequential runs them: a module twice, twice
            name, kind = f"{prefix}{child_name}", type(child)
            if child is None or _has_hooks(child) or id(child) in seen:
                return False
            seen.add(id(child))
            if kind is nn.Sequential:
                if not walk(child, f"{name}."):
                    return False
                steps.append(_Step("end", name))
            elif kind is nn.Linear:
                if not flat or child.in_features != width:
                    return False
                bias = own(parameters, f"{name}.bias") if child.bias is not None else None
                steps.append(_Step("linear", name, tensors=(own(parameters, f"{name}.weight"), bias)))
                width = child.out_features
            elif kind is nn.BatchNorm1d:
                if not flat or child.num_features != width:
                    return False
                affine = child.weight is not None
                tensors = (own(parameters, f"{name}.weight"), own(parameters, f"{name}.bias")) if affine else ()
                stats = ("running_mean", "running_var", "num_batches_tracked") if child.running_mean is not None else ()
                steps.append(
                    _Step("batch_norm", name, child, tensors, tuple(own(buffers, f"{name}.{s}") for s in stats))
                )
            elif kind is nn.Flatten:
                if (child.start_dim, child.end_dim) != (1, -1):
                    return False
                flat = True
                steps.append(_Step("end", name))  # reshapes nothing: features-major, the values are flat
            elif kind in _ELEMENTWISE:
                if getattr(child, "inplace", False):  # never in place: the values may be the inputs
                    child = copy.copy(child)
                    child.inplace = False
                steps.append(_Step("elementwise", name, child))
            else:
                return False
        return True

    try:
        if type(template) is not nn.Sequential or _has_hooks(template) or not walk(template, ""):
            return None
    except ValueError:
        return None
    if sorted(used) != sorted([*parameters, *buffers]):  # no tensor the plan would leave out
        return None
    for step in steps:
        if step.name in measured:
            step.measured = measured.index(step.name)
    if sorted(step.measured for step in steps if step.measured is not None) != list(range(len(measured))):
        return None
    return [step for step in steps if step.kind != "end" or step.measured is not None]


class ModuleNetwork(BatchedNetwork):
    """S copies of an own module, trained by autograd through `forward` (see the module doc):
    seed-grouped where the module is a Sequential of known layers, else seed after seed."""

    def __init__(
        self,
        architecture: str,
        inputs: int,
        classes: int,
        bits: int,
        seeds: int,
        measure: tuple[str, ...] = (),
        image_shape: tuple[int, ...] | None = None,
        tracking: str = "epoch",
        ema_decay: float = 0.999,
        **_ignored,  # init: an own module initialises itself
    ) -> None:
        super().__init__("linear", classes, bits, seeds, tracking=tracking, ema_decay=ema_decay)
        self.architecture = architecture
        self.label = own_module(architecture).label()
        template = build(architecture, seed=0)
        self.input_shape = (inputs,) if image_shape is None else input_shape(tuple(image_shape))
        names = measured_names(template, tuple(measure), self.label)
        names, widths = self._probe(template, names)
        self.layers = [
            LayerSpec(name, type(template.get_submodule(name)).__name__, width) for name, width in zip(names, widths)
        ]
        self.layers.append(LayerSpec("output", "softmax", classes))
        self._parameter_names = [name for name, _ in template.named_parameters()]
        self._shapes = [tuple(p.shape) for _, p in template.named_parameters()]
        self._buffer_names = [name for name, _ in template.named_buffers()]
        plan = _grouped_plan(template, names, self.input_shape, self._parameter_names, self._buffer_names)
        if plan is not None and not self._plan_agrees(template, plan):
            plan = None
        self._plan: list[_Step] | None = plan
        for number, (_, buffer) in enumerate(template.named_buffers()):
            self.register_buffer(f"state{number}", buffer.detach().unsqueeze(0).repeat(seeds, *([1] * buffer.dim())))
        for index, name in enumerate(names):
            template.get_submodule(name).register_forward_hook(_Tap(self, index))
        # Not a registered submodule: its own parameters are neither trained nor saved (each
        # seed's are in `flat`), yet it moves with the network (see _apply).
        self.__dict__["_template"] = template
        self._run: _Run | None = None
        self._finish()

    @property
    def grouped(self) -> bool:
        """Whether the seeds run grouped (the module's plan), not one after the other."""
        return self._plan is not None

    def _probe(self, template: nn.Module, names: list[str]) -> tuple[list[str], list[int]]:
        """Run a probe batch through the module (own_module.probe): the measured layers in the
        order they run, and their widths (features per sample); refuses inputs the module
        rejects, logits of the wrong width, and a measured layer that does not run or runs twice."""
        shape = (_PROBE_SAMPLES, *self.input_shape)
        try:
            logits, calls = probe(template, names, self.input_shape, _PROBE_SAMPLES)
        except Exception as error:
            raise ConfigError(
                f"architecture: {self.label} rejects inputs of shape {shape} (the data set's samples, batched): {quoted(error)}"
            ) from None
        for name, output in calls:
            if not isinstance(output, torch.Tensor):
                raise ConfigError(f"measure: {name!r} of {self.label} returns a {type(output).__name__}, not a tensor")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (_PROBE_SAMPLES, self.classes):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(
                f"architecture: {self.label} returns logits of shape {got} for inputs {shape}; the data set has "
                f"{self.classes} classes, so give ({_PROBE_SAMPLES}, {self.classes})"
            )
        seen = [name for name, _ in calls]
        for name in names:
            if seen.count(name) != 1:
                how = "does not run" if name not in seen else f"runs {seen.count(name)} times"
                raise ConfigError(
                    f"measure: {name!r} {how} in {self.label}'s forward pass; measure layers that run once each "
                    f"(a module used twice needs a module of its own per use)"
                )
        return seen, [math.prod(output.shape[1:]) for _, output in calls]

    @torch.no_grad()
    def _plan_agrees(self, template: nn.Module, plan: list[_Step]) -> bool:
        """Whether `plan` computes what the template does, unquantized, on a probe batch of
        _PLAN_SAMPLES random samples (a fixed stream), in eval mode with the template's own
        parameters and buffers: the logits and every measured layer's values within float32
        rounding (the products sum in another order). Depends on nothing but the module, so
        every trial of the module takes the same path whatever its seeds."""
        inputs = torch.rand(_PLAN_SAMPLES, *self.input_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        recorded: dict[str, torch.Tensor] = {}

        def record(name):
            def hook(module, args, output):
                recorded[name] = output.reshape(len(inputs), -1).clone()  # a later layer may work in place

            return hook

        measured = [step.name for step in plan if step.measured is not None]
        handles = [template.get_submodule(name).register_forward_hook(record(name)) for name in measured]
        try:
            logits = template.eval()(inputs)
        finally:
            for handle in handles:
                handle.remove()
        parameters = [p.detach().unsqueeze(0) for p in template.parameters()]
        buffers = [b.detach().unsqueeze(0) for b in template.buffers()]
        values: dict[int, torch.Tensor] = {}

        def keep(index: int, hidden: torch.Tensor, valid) -> tuple[torch.Tensor, None]:
            values[index] = hidden
            return hidden, None

        got = _run_plan(plan, inputs.reshape(1, len(inputs), -1), 1, parameters, buffers, None, False, keep)
        close = [(got[0].T, logits.reshape(len(inputs), -1))]
        close += [(values[step.measured][0].T, recorded[step.name]) for step in plan if step.measured is not None]
        return all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in close)

    def _apply(self, fn, *args, **kwargs):
        self._template._apply(fn, *args, **kwargs)  # no tensor of the pass is left behind on another device
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> "ModuleNetwork":
        super().train(mode)
        self._template.train(mode)
        return self

    def _seed_tensors(self, slot: int) -> dict[str, torch.Tensor]:
        """Seed `slot`'s parameters (views of its row of `flat`) and buffers, by the template's names."""
        pieces = self.flat[slot].split(self._sizes)
        tensors = {name: piece.view(shape) for name, piece, shape in zip(self._parameter_names, pieces, self._shapes)}
        for number, name in enumerate(self._buffer_names):
            tensors[name] = getattr(self, f"state{number}")[slot]
        return tensors

    def _grouped_tensors(self) -> list[torch.Tensor]:
        """Every seed's parameters, per parameter of the template a (S, *shape) view of `flat`."""
        return self._kept(
            "grouped",
            lambda: [
                piece.view(self.seeds, *shape)
                for piece, shape in zip(self.flat.split(self._sizes, dim=1), self._shapes)
            ],
        )

    @torch.no_grad()
    def init_slot(self, slot: int, generator: torch.Generator) -> None:
        """(Re-)initialise seed slot `slot`: the module's own initialisation, run with the global
        random stream seeded from `generator` (forked, so nothing else draws from it)."""
        fresh = build(self.architecture, seed=int(torch.randint(0, 2**62, (), generator=generator)))
        tensors = self._seed_tensors(slot)
        for name, value in [*fresh.named_parameters(), *fresh.named_buffers()]:
            tensors[name].copy_(value.detach())
        if self.quantizers is not None:
            for quantizer in self.quantizers:
                quantizer.reset(torch.tensor([slot], device=quantizer.low.device))

    def eval_chunk(self, features: int, limit: int = 8192) -> int:
        """Samples per forward chunk of a pass over a whole data set, a multiple of LANES: as
        many as keep every seed's widest layer near 2^21 floats (as the dense networks)."""
        per_sample = self.seeds * max(spec.width for spec in self.layers)
        return max(LANES, min(limit, 2**21 // per_sample // LANES * LANES))

    def _tap(self, index: int, output: torch.Tensor) -> torch.Tensor:
        """Measured layer `index`'s output of the running seed: quantized (when the network is)
        and recorded as (1, B, width) values and codes."""
        run = self._run
        if run is None:  # the module called outside a pass (it is not)
            return output
        values, code = output.unsqueeze(0), None
        if self.quantizers is not None:
            values, code = self.quantizers[index](values, None, batch_dim=1, slot=run.slot)
        run.values.append(values.flatten(2))
        run.codes.append(code.flatten(2) if code is not None else None)
        return values.squeeze(0)

    def forward(self, x: torch.Tensor, valid: int | None = None) -> ForwardPass:
        """x: (S, B, features), or (B, features) shared by all seeds (the MI pass).

        valid: only the first `valid` samples are real; the rest (padding) is seen by neither
        batch norm's statistics nor the quantizers' ranges. The seed-grouped pass keeps the
        padding (its results have B samples, the padding's meaningless), the per-seed loop cuts
        it off first (they have `valid`)."""
        if self._plan is not None:
            return self._grouped_forward(x, valid)
        return self._looped_forward(x, valid)

    def _grouped_forward(self, x: torch.Tensor, valid: int | None) -> ForwardPass:
        """All seeds at once by the module's plan, features-major (see the module doc)."""
        values: list = [None] * len(self.layers)
        codes: list = [None] * len(self.layers)

        def quantize(index: int, hidden: torch.Tensor, valid: int | None):
            values[index], codes[index] = self._quantize(index, hidden, valid, batch_dim=2)
            return values[index], codes[index]

        buffers = [getattr(self, f"state{number}") for number in range(len(self._buffer_names))]
        tensors = self._grouped_tensors()
        logits = _run_plan(self._plan, x, self.seeds, tensors, buffers, valid, self.training, quantize)
        log_probs = torch.log_softmax(logits, dim=1)  # (S, classes, B)
        quantize(len(self.layers) - 1, log_probs.exp(), valid)
        return ForwardPass(
            self._loss_log_probs(log_probs, values[-1]).transpose(1, 2),
            [v.transpose(1, 2) for v in values],
            [c.transpose(1, 2) if c is not None else None for c in codes],
        )

    def _looped_forward(self, x: torch.Tensor, valid: int | None) -> ForwardPass:
        """The seeds one after the other, each through the template with its own tensors."""
        if valid is not None:
            x = x.narrow(-2, 0, valid)
        batch = x.shape[-2]
        log_probs, values, codes = [], [], []
        for slot in range(self.seeds):
            inputs = (x if x.dim() == 2 else x[slot]).reshape(batch, *self.input_shape)
            self._run = _Run(slot)
            try:
                logits = functional_call(self._template, self._seed_tensors(slot), (inputs,))
            finally:
                run, self._run = self._run, None
            seed_log_probs = torch.log_softmax(logits, dim=-1).unsqueeze(0)
            probs, code = seed_log_probs.exp(), None
            if self.quantizers is not None:
                probs, code = self.quantizers[-1](probs, None, batch_dim=1, slot=slot)
            log_probs.append(self._loss_log_probs(seed_log_probs, probs))
            values.append([*run.values, probs])
            codes.append([*run.codes, code])
        per_layer = range(len(self.layers))
        return ForwardPass(
            torch.cat(log_probs),
            [torch.cat([seed[layer] for seed in values]) for layer in per_layer],
            [
                torch.cat([seed[layer] for seed in codes]) if self.quantizers is not None else None
                for layer in per_layer
            ],
        )


def _run_plan(
    plan: list[_Step],
    x: torch.Tensor,
    seeds: int,
    parameters: list[torch.Tensor],
    buffers: list[torch.Tensor],
    valid: int | None,
    training: bool,
    quantize,
) -> torch.Tensor:
    """A seed-grouped pass of `seeds` seeds: x (S, B, features), or (B, features) shared by all
    seeds, through `plan` with every seed's `parameters` and `buffers` ((S, ...) each, in the template's
    order), features-major; `quantize(index, values, valid)` gives measured layer `index`'s
    (S, width, B) values the next layer receives (and records them). The logits, (S, classes, B).
    `valid`: the first samples that are real (batch norm's statistics see only them)."""
    hidden = x.transpose(-1, -2)  # (S, features, B) or (features, B)

    def per_seed(values: torch.Tensor) -> torch.Tensor:  # inputs shared by all seeds, for a per-seed step
        return values.expand(seeds, *values.shape) if values.dim() == 2 else values

    for step in plan:
        if step.kind == "linear":
            weight, bias = parameters[step.tensors[0]], step.tensors[1]
            bias = parameters[bias].unsqueeze(-1) if bias is not None else None  # (S, out, 1)
            if hidden.dim() == 2:
                if bias is None:
                    bias = weight.new_zeros(seeds, weight.shape[1], 1)
                hidden = _shared_input_layer(weight, bias, hidden)
            elif bias is None:
                hidden = torch.bmm(weight, hidden)
            else:
                hidden = torch.baddbmm(bias, weight, hidden)
        elif step.kind == "elementwise":
            hidden = step.module.forward(hidden)
        elif step.kind == "batch_norm":
            hidden = _batch_norm(step, per_seed(hidden), parameters, buffers, valid, training)
        if step.measured is not None:
            hidden, _ = quantize(step.measured, per_seed(hidden), valid)
    return per_seed(hidden)


def _batch_norm(
    step: _Step,
    hidden: torch.Tensor,
    parameters: list[torch.Tensor],
    buffers: list[torch.Tensor],
    valid: int | None,
    training: bool,
) -> torch.Tensor:
    """nn.BatchNorm1d of every seed at once on (S, channels, B): in training (or without running
    statistics) each (seed, channel)'s mean and biased variance over the first `valid` samples,
    the running statistics updated as torch does (the unbiased variance; momentum None: the
    cumulative average); in eval mode the running statistics."""
    module = step.module
    stats = [buffers[index] for index in step.buffers]  # running mean, variance, batches tracked
    if training or not stats:
        real = hidden if valid is None else hidden.narrow(2, 0, valid)
        count = real.shape[2]
        if training and count < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count} samples")
        mean = real.mean(dim=2, keepdim=True)
        variance = (real - mean).square().mean(dim=2, keepdim=True)
        if training and stats:
            with torch.no_grad():
                running_mean, running_var, tracked = stats
                tracked.add_(1)
                factor = module.momentum  # None: the cumulative average, a factor per seed (restarts)
                if factor is None:
                    factor = tracked.double().reciprocal().to(running_mean.dtype).unsqueeze(-1)
                running_mean.copy_(mean.squeeze(2) * factor + running_mean * (1 - factor))
                unbiased = variance.squeeze(2) * (count / (count - 1))
                running_var.copy_(unbiased * factor + running_var * (1 - factor))
    else:
        mean, variance = stats[0].unsqueeze(-1), stats[1].unsqueeze(-1)
    hidden = (hidden - mean) * torch.rsqrt(variance + module.eps)
    if step.tensors:
        weight, bias = (parameters[index].unsqueeze(-1) for index in step.tensors)
        hidden = hidden * weight + bias
    return hidden


def batched_network(
    architecture: str,
    activation: str,
    inputs: int,
    classes: int,
    bits: int,
    seeds: int,
    init: str = "truncated_normal",
    tracking: str = "epoch",
    ema_decay: float = 0.999,
    image_shape: tuple[int, ...] | None = None,
    measure: tuple[str, ...] = (),
) -> BatchedNetwork:
    """The engine for `architecture`: ModuleNetwork for an own module ('nets.py:lenet5@...',
    its `measure` layers measured), ConvNetwork for 'conv', DenseNetwork for every other."""
    options = dict(init=init, tracking=tracking, ema_decay=ema_decay)
    if own_module(architecture) is not None:
        return ModuleNetwork(architecture, inputs, classes, bits, seeds, measure, image_shape, **options)
    if architecture == "conv":
        return ConvNetwork(activation, classes, bits, seeds, image_shape, **options)
    return DenseNetwork(architecture, activation, inputs, classes, bits, seeds, **options)
