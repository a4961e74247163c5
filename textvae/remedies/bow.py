"""Bag-of-words loss (Zhao et al. 2017, "Learning Discourse-level Diversity for Neural Dialog
Models using Conditional Variational Autoencoders").

An MLP f reads z and predicts the sentence's words with no order (one softmax for the whole
sentence), so z itself must carry the content:

    extra_b = -Σ_{t=1}^{n+1} log softmax(f(z_b))[y_t],    y = w1 .. wn </s>

The targets are the decoder's (``</s>`` included, as in the authors' code; ``<s>`` and padding
excluded). The sum over tokens is computed per batch as one operation: a count matrix
C [B, V] (C_{b,w} = occurrences of w in sentence b, built with ``scatter_add``) dotted with the
log-probabilities, -Σ_w C_{b,w} log p_b(w), instead of a loop over time steps.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textvae.config import COUNT, NON_NEGATIVE
from textvae.data.special import PAD_ID
from textvae.remedies.base import Remedy, register_remedy


def word_counts(targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """targets [B, T] -> counts [B, V] of every non-padding token."""
    counts = torch.zeros(targets.shape[0], vocab_size, device=targets.device)
    return counts.scatter_add_(1, targets, (targets != PAD_ID).float())


@register_remedy("bow")
class BagOfWords(Remedy):
    """Bag-of-words loss (Zhao et al. 2017): extra_b = -weight Σ_t log softmax(f(z_b, c_b))[y_t].

    f = Linear(D + C, mlp_dim) -> tanh -> Linear(mlp_dim, V) (kgCVAE uses 400 hidden units), on [z; c]
    with c the dialogue CVAE's context vector (``batch.extras["context_vector"]``, C = ``condition_dim``
    units), as in their code; a sentence VAE has no condition (C = 0) and f reads z alone, as does the
    CVAE's with ``use_context: false`` (an ablation; textvae's CVAE before 2026-12-06)."""

    RANGES = {"mlp_dim": COUNT, "weight": NON_NEGATIVE}

    def __init__(self, latent_dim: int, vocab_size: int, condition_dim: int = 0, mlp_dim: int = 400,
                 weight: float = 1.0, use_context: bool = True):
        super().__init__()
        condition_dim = condition_dim if use_context else 0
        self.vocab_size, self.weight, self.condition_dim = vocab_size, weight, condition_dim
        self.mlp = nn.Sequential(nn.Linear(latent_dim + condition_dim, mlp_dim), nn.Tanh(),
                                 nn.Linear(mlp_dim, vocab_size))

    def extra_loss(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        inputs = torch.cat([z, batch.extras["context_vector"]], -1) if self.condition_dim else z  # [B, D + C]
        log_p = torch.log_softmax(self.mlp(inputs).float(), dim=-1)  # [B, V]
        counts = word_counts(batch.targets, self.vocab_size)  # [B, V]
        return -self.weight * (counts * log_p).sum(-1)
