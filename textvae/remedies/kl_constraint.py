"""Explicit KL constraint (Prokhorov et al. 2019, "On the Importance of the Kullback-Leibler
Divergence Term in Variational Autoencoders for Text Generation"), after Burgess et al.'s
capacity-annealed beta-VAE:

    loss = rec + beta * | KL - C(t) |,      C(t) = C * min(1, t / ramp_steps)

The KL is driven *towards* the capacity C from both sides: below C the term rewards more KL
(gradient sign -), above it penalises it (+). As in the authors' code, KL here is the minibatch
mean of the per-sentence total KL, E_b[Σ_d KL_{b,d}], and beta = 1 in their runs (any beta from
the KL schedule multiplies the term). ``per_sentence: true`` applies |KL_b - C| to each sentence
instead, which pins every sentence's rate rather than the average.

:func:`textvae.sweeps.rate_sweep` trains one model per C and collects its rate-distortion point.
"""
from __future__ import annotations

import torch

from textvae.config import NON_NEGATIVE
from textvae.remedies.base import Remedy, register_remedy


@register_remedy("kl_constraint")
class KLConstraint(Remedy):
    """Explicit KL constraint (Prokhorov et al. 2019): loss = rec + beta |KL - C(t)|,
    C(t) = C min(1, t / ramp_steps)."""

    replaces_kl = True

    RANGES = {"capacity": NON_NEGATIVE, "ramp_steps": NON_NEGATIVE}

    def __init__(self, capacity: float = 15.0, ramp_steps: int = 10000, per_sentence: bool = False):
        super().__init__()
        self.capacity, self.ramp_steps, self.per_sentence = float(capacity), ramp_steps, per_sentence

    def target(self, step: int) -> float:
        """C(t), ramped linearly from 0 to ``capacity`` over ``ramp_steps`` steps."""
        if self.ramp_steps == 0:
            return self.capacity
        return self.capacity * min(1.0, step / self.ramp_steps)

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        total = kl.sum(-1)  # [B]
        c = self.target(step)
        if self.per_sentence:
            return beta * (total - c).abs()
        # mean_b[s (KL_b - C)] = |E_b KL - C| for s = sign(E_b KL - C); the gradient 1/B * s
        # per sentence is that of the batch-level absolute value.
        sign = torch.sign(total.detach().mean() - c)
        return beta * sign * (total - c)
