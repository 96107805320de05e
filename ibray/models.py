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
from ibray.own_module import build, measured_names, quoted
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
        most `limit`, and a chunk's first conv layer output near 2^21 floats (8 MB) over all seeds:
        tensors over glibc's mmap threshold (32 MB at most) are fresh pages each time, paid in page
        faults (measured: the measuring pass took 1.5x as long in chunks of 2^23)."""
        per_sample = features * CONV_CHANNELS * self.seeds
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
            if relu and quantizer is not None and not quantizer.training and not torch.is_grad_enabled():
                # a measuring pass: convolution, ReLU, quantizer and pooling in one pass
                hidden, pooled_codes = conv3x3_quantize_pool(hidden, weights[index], biases[index], True, quantizer)
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
# (S, ...) buffer each. A pass runs the template once per seed with that seed's tensors
# (torch.func.functional_call), so a seed's numbers cannot depend on its batch mates. A loop
# over the seeds rather than torch.func.vmap: under vmap, the quantizers' per-seed range updates
# and batch norm's running statistics are in-place writes that vmap refuses, and a module may
# hold any of them; S seeds cost S times one. Forward hooks on the measured submodules put the
# k-bit quantizer after each one's output and record values and codes; the softmax output is
# quantized as the built-ins'. Measured layers are numbered in the order the pass runs them.

_PROBE_SAMPLES = 2  # a probe batch: batch norm in training mode needs more than one sample


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


class ModuleNetwork(BatchedNetwork):
    """S copies of an own module, trained by autograd through `forward` (see the module doc)."""

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
        if image_shape is None:
            self.input_shape: tuple[int, ...] = (inputs,)
        else:  # (H, W) images have one channel
            self.input_shape = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
        names = measured_names(template, tuple(measure), self.label)
        names, widths = self._probe(template, names)
        self.layers = [
            LayerSpec(name, type(template.get_submodule(name)).__name__, width) for name, width in zip(names, widths)
        ]
        self.layers.append(LayerSpec("output", "softmax", classes))
        self._parameter_names = [name for name, _ in template.named_parameters()]
        self._shapes = [tuple(p.shape) for _, p in template.named_parameters()]
        self._buffer_names = [name for name, _ in template.named_buffers()]
        for number, (_, buffer) in enumerate(template.named_buffers()):
            self.register_buffer(f"state{number}", buffer.detach().unsqueeze(0).repeat(seeds, *([1] * buffer.dim())))
        for index, name in enumerate(names):
            template.get_submodule(name).register_forward_hook(_Tap(self, index))
        # Not a registered submodule: its own parameters are neither trained nor saved (each
        # seed's are in `flat`), yet it moves with the network (see _apply).
        self.__dict__["_template"] = template
        self._run: _Run | None = None
        self._finish()

    def _probe(self, template: nn.Module, names: list[str]) -> tuple[list[str], list[int]]:
        """Run a probe batch through the module: the measured layers in the order they run, and
        their widths (features per sample); refuses inputs the module rejects, logits of the
        wrong width, and a measured layer that does not run or runs twice."""
        calls: list[tuple[str, int]] = []

        def record(name):
            def hook(module, inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise ConfigError(
                        f"measure: {name!r} of {self.label} returns a {type(output).__name__}, not a tensor"
                    )
                calls.append((name, math.prod(output.shape[1:])))

            return hook

        handles = [template.get_submodule(name).register_forward_hook(record(name)) for name in names]
        shape = (_PROBE_SAMPLES, *self.input_shape)
        try:
            with torch.no_grad():
                logits = template.eval()(torch.zeros(shape))
        except ConfigError:
            raise
        except Exception as error:
            raise ConfigError(
                f"architecture: {self.label} rejects inputs of shape {shape} (the data set's samples, batched): {quoted(error)}"
            ) from None
        finally:
            for handle in handles:
                handle.remove()
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
        return seen, [width for _, width in calls]

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

        valid: only the first `valid` samples are real; the rest (padding) is not run at all,
        so that batch norm's statistics see none of it, and the pass has `valid` samples."""
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
