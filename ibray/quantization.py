"""k-bit fake quantization of a layer's output, its range tracking and the straight-through
gradient (quantization-aware training, Jacob et al. 2018, as used by the study).

A quantizer owns one range (low, high) per seed. In training it updates the range from the
batch, then maps each activation onto one of 2^bits uniformly spaced values between low and
high; the backward pass ignores the rounding (straight-through). Frozen, it uses the range as
it stands and clamps to it, so the MI pass sees one fixed discrete function, and it hands out
the integer codes the next layer actually receives.
"""

from __future__ import annotations

import torch
from torch import nn


class Quantizer(nn.Module):
    def __init__(self, bits: int, seeds: int, tracking: str = "epoch", ema_decay: float = 0.999) -> None:
        super().__init__()
        self.bits = bits
        self.levels = 2**bits - 1  # the top code
        self.tracking = tracking  # 'epoch' (min/max over the epoch), 'moving_average', 'batch'
        self.ema_decay = ema_decay
        self.frozen = False
        self.register_buffer("low", torch.full((seeds,), float("inf")))
        self.register_buffer("high", torch.full((seeds,), float("-inf")))

    def reset(self, slots: torch.Tensor | None = None) -> None:
        """Forget the range (all seeds, or the given seed slots): the next batch sets it anew."""
        if slots is None:
            self.low.fill_(float("inf"))
            self.high.fill_(float("-inf"))
        else:
            self.low[slots] = float("inf")
            self.high[slots] = float("-inf")

    def _track(self, values: torch.Tensor) -> None:
        flat = values.detach().reshape(values.shape[0], -1)
        batch_low, batch_high = flat.amin(dim=1), flat.amax(dim=1)
        fresh = torch.isinf(self.low)
        if self.tracking == "epoch":
            self.low.copy_(torch.minimum(self.low, batch_low))
            self.high.copy_(torch.maximum(self.high, batch_high))
        elif self.tracking == "batch":
            self.low.copy_(batch_low)
            self.high.copy_(batch_high)
        else:
            decay = self.ema_decay
            self.low.copy_(torch.where(fresh, batch_low, decay * self.low + (1 - decay) * batch_low))
            self.high.copy_(torch.where(fresh, batch_high, decay * self.high + (1 - decay) * batch_high))

    def codes(self, values: torch.Tensor) -> torch.Tensor:
        """Integer codes 0..2^bits-1 of values (seeds first) under the current ranges."""
        shape = (-1,) + (1,) * (values.dim() - 1)
        low = self.low.reshape(shape)
        step = ((self.high - self.low) / self.levels).reshape(shape)
        # A constant layer (high == low) maps everything to code 0.
        scaled = torch.where(step > 0, (values - low) / torch.where(step > 0, step, 1.0), 0.0)
        return torch.clamp(torch.round(scaled), 0, self.levels)

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized values (straight-through gradient) and their integer codes (as floats).

        values: (seeds, ...) activations after the layer's activation function.
        """
        if self.training and not self.frozen:
            self._track(values)
        codes = self.codes(values.detach())
        shape = (-1,) + (1,) * (values.dim() - 1)
        step = ((self.high - self.low) / self.levels).reshape(shape)
        quantized = self.low.reshape(shape) + codes * step
        return values + (quantized - values).detach(), codes
