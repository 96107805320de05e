"""Adam with one step count per seed, so a seed's updates do not depend on its batch mates.

The study trained with Keras' Adam (learning rate 1e-4, beta1 0.9, beta2 0.999, epsilon 1e-7).
Keras folds the bias corrections into the learning rate:

    m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
    lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t);   p <- p - lr_t m / (sqrt(v) + epsilon)

Each row of a parameter (its leading axis) belongs to one seed, with its own t: a seed
restarted after a dead start begins again at t = 1 while the others go on.
"""

from __future__ import annotations

import math

import torch

BETAS = (0.9, 0.999)
EPSILON = 1e-7  # Keras' default, as in the study


class SeedAdam:
    def __init__(self, params: list[torch.Tensor], seeds: int, learning_rate: float) -> None:
        self.params = params
        self.learning_rate = learning_rate
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.steps = [0] * seeds  # steps taken, per seed

    def reset_slot(self, slot: int) -> None:
        """Forget a seed's moments and steps (its parameters were re-initialised)."""
        for m, v in zip(self.m, self.v):
            m[slot].zero_()
            v[slot].zero_()
        self.steps[slot] = 0

    def step(self) -> None:
        """One update of every seed from the gradients in `.grad`, which it then clears."""
        self.update(self.next_rates())

    def next_rates(self) -> torch.Tensor:
        """Count one more step for every seed and return each seed's step size for it."""
        beta1, beta2 = BETAS
        self.steps = [step + 1 for step in self.steps]
        # The per-seed rate in Python: torch's vectorised pow would round a seed's rate by its
        # slot's position.
        lr = self.learning_rate
        device = self.params[0].device
        return torch.tensor([lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) for t in self.steps], device=device)

    def update(self, rate: torch.Tensor) -> None:
        """The update of every seed with step sizes `rate` (from `next_rates`) and the
        gradients in `.grad`, which it then clears: tensors only (a compiled step holds it)."""
        beta1, beta2 = BETAS
        # Only plain multiplies, adds, divides and square roots (no lerp, addcmul or alpha=):
        # those are exact in IEEE arithmetic, so the vectorised body and the scalar tail of a
        # kernel agree and a seed's update does not depend on where its slot starts. One
        # tensor at a time (the dense networks have one): cheaper calls than torch._foreach_*.
        params = self.params
        with torch.no_grad():
            for p, m, v in zip(params, self.m, self.v):
                g = p.grad
                m.mul_(beta1).add_(g * (1 - beta1))
                v.mul_(beta2).add_((g * g).mul_(1 - beta2))
                update = m / v.sqrt().add_(EPSILON)
                p.sub_(update.mul_(rate.view((-1,) + (1,) * (p.dim() - 1))))
        for p in params:
            p.grad = None

    def state_dict(self) -> dict:
        return {
            "adam_m": [m.detach().cpu().clone() for m in self.m],
            "adam_v": [v.detach().cpu().clone() for v in self.v],
            "adam_step": list(self.steps),
        }

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self.m + self.v, state["adam_m"] + state["adam_v"]):
            mine.copy_(saved)
        self.steps = list(state["adam_step"])
