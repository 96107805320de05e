"""k-bit fake quantization of a layer's output, its range tracking and the straight-through
gradient (quantization-aware training, Jacob et al. 2018, as used by the study).

A quantizer owns one range (low, high) per seed. In training it updates the range from the
batch, then maps each activation onto one of 2^bits uniformly spaced values between low and
high; the backward pass ignores the rounding (straight-through). In eval mode it uses the range as
it stands and clamps to it, so the MI pass sees one fixed discrete function, and it hands out
the integer codes the next layer actually receives.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def straight_through(values: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
    """`replacement` in the forward pass, with the gradient of `values` in the backward pass.

    `values - values.detach()` is exactly +0 for finite values, so the sum is exactly the
    replacement (whereas `values + (replacement - values).detach()` rounds: equal codes would
    reach the next layer as slightly different numbers), and its gradient is the identity.
    """
    if not values.requires_grad:
        return replacement
    return replacement.detach() + (values - values.detach())


class Quantizer(nn.Module):
    def __init__(self, bits: int, seeds: int, tracking: str = "epoch", ema_decay: float = 0.999) -> None:
        super().__init__()
        self.bits = bits
        self.levels = 2**bits - 1  # the top code
        self.tracking = tracking  # 'epoch' (min/max over the epoch), 'moving_average', 'batch'
        self.ema_decay = ema_decay
        self.register_buffer("low", torch.full((seeds,), float("inf")))
        self.register_buffer("high", torch.full((seeds,), float("-inf")))
        self._shaped: tuple | None = None  # kept views of low and high (see _ranges)

    def __getstate__(self) -> dict:  # copies and pickles make their own views
        return {**self.__dict__, "_shaped": None}

    def _ranges(self, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
        """low and high as (seeds, 1, ...) views that broadcast over values of `dims`
        dimensions; kept while the buffers stay where they are (they are updated in place),
        outside torch.compile: each view is a call into torch, and at one seed the calls are
        the cost of a training step."""
        shape = (-1,) + (1,) * (dims - 1)
        if torch.compiler.is_compiling():
            return self.low.view(shape), self.high.view(shape)
        key = (self.low.data_ptr(), self.high.data_ptr(), dims)
        if self._shaped is None or self._shaped[0] != key:
            self._shaped = (key, self.low.view(shape), self.high.view(shape))
        return self._shaped[1], self._shaped[2]

    def reset(self, slots: torch.Tensor | None = None) -> None:
        """Forget the range (all seeds, or the given seed slots): the next batch sets it anew."""
        if slots is None:
            self.low.fill_(float("inf"))
            self.high.fill_(float("-inf"))
        else:
            self.low[slots] = float("inf")
            self.high[slots] = float("-inf")

    @contextmanager
    def measuring_range(self, slots: list[int]):
        """Within the block, the range starts afresh and grows over everything the layer sees
        in training mode (min/max, whatever the tracking); after it, only seed `slots` keep
        the measured range and the other seeds get their earlier range back."""
        low, high, tracking = self.low.clone(), self.high.clone(), self.tracking
        self.reset()
        self.tracking = "epoch"
        try:
            yield
        finally:
            keep = torch.ones(self.low.shape, dtype=torch.bool, device=self.low.device)
            keep[slots] = False
            self.low.copy_(torch.where(keep, low, self.low))
            self.high.copy_(torch.where(keep, high, self.high))
            self.tracking = tracking

    def _rows(self, slot: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """low and high of every seed (slot None), or of seed `slot` alone as views of length 1
        (an engine that runs its seeds one at a time: values then have a seed axis of 1)."""
        if slot is None:
            return self.low, self.high
        return self.low[slot : slot + 1], self.high[slot : slot + 1]

    def _track(self, values: torch.Tensor, slot: int | None = None) -> None:
        every = tuple(range(1, values.dim()))  # all but the seed axis, whatever the layout
        batch_low, batch_high = values.amin(dim=every), values.amax(dim=every)  # (aminmax: 15x slower here)
        low, high = self._rows(slot)
        if self.tracking == "epoch":
            torch.minimum(low, batch_low, out=low)
            torch.maximum(high, batch_high, out=high)
        elif self.tracking == "batch":
            low.copy_(batch_low)
            high.copy_(batch_high)
        else:
            fresh = torch.isinf(low)
            decay = self.ema_decay
            low.copy_(torch.where(fresh, batch_low, decay * low + (1 - decay) * batch_low))
            high.copy_(torch.where(fresh, batch_high, decay * high + (1 - decay) * batch_high))

    def grid(self, dims: int, slot: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(low, step, 1 / step) per seed (or of seed `slot`), shaped to broadcast over values
        of `dims` dimensions. A constant layer (high == low) has step 0 and inverse 0:
        everything maps to code 0."""
        if slot is None:
            low, high = self._ranges(dims)
        else:
            shape = (-1,) + (1,) * (dims - 1)
            low, high = (row.view(shape) for row in self._rows(slot))
        step = (high - low).div_(self.levels)
        return low, step, step.reciprocal().nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)

    def codes(self, values: torch.Tensor, low: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        return (values - low).mul_(inverse).round_().clamp_(0, self.levels)

    def _quantize(self, values: torch.Tensor, slot: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantized values, codes as floats) under the current per-seed ranges."""
        low, step, inverse = self.grid(values.dim(), slot)
        codes = self.codes(values, low, inverse)
        # a multiply, then an add: a fused multiply-add would round differently by position
        return codes.mul(step).add_(low), codes

    @torch.no_grad()
    def codes_of(self, quantized: torch.Tensor) -> torch.Tensor:
        """The integer codes (as floats) of values this quantizer produced, under the same
        ranges: exact, since a value is low + code x step to within a few float32 steps, far
        inside half a step (for a function of quantized values that keeps them, as pooling)."""
        low, _, inverse = self.grid(quantized.dim())
        return self.codes(quantized, low, inverse)

    @torch.no_grad()
    def observe(
        self, values: torch.Tensor, valid: int | None = None, batch_dim: int = 1, slot: int | None = None
    ) -> None:
        """In training mode, update the range from a batch as `forward` does (and nothing
        else: for a layer whose quantized values are not needed, e.g. the output's in a
        training step, whose loss gradient is the float one's)."""
        if self.training:
            whole = valid is None or valid == values.shape[batch_dim]
            self._track(values if whole else values.narrow(batch_dim, 0, valid), slot)

    def forward(
        self, values: torch.Tensor, valid: int | None = None, batch_dim: int = 1, slot: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized values (straight-through gradient) and their integer codes (as floats).

        values: activations after the layer's activation function, seeds on the first axis and
        the batch on axis `batch_dim`. valid: only the first `valid` samples of the batch update
        the range (the rest is padding). slot: the values are seed `slot`'s alone, on a seed
        axis of length 1 (its range alone is used and updated).
        """
        with torch.no_grad():  # ranges and rounding are not differentiated
            self.observe(values, valid, batch_dim, slot)
            quantized, codes = self._quantize(values, slot)
        return straight_through(values, quantized), codes
