"""The output head every model decodes through: decoder states -> per-sentence reconstruction NLL.

    hidden [B, T, H], targets [B, T] -> mask real positions -> projection W h + b -> per-token NLL
    (fused full softmax, the plain reference, or the training-only sampled softmax) -> Σ_t per row [B]

A model mixes in :class:`OutputHead` and owns ``self.projection`` (an ``nn.Linear`` from the decoder
width to the vocabulary); the levers below are set by the training loop or by benchmarks, never
saved with the model.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from textvae.data.special import PAD_ID
from textvae.models.fused_loss import linear_cross_entropy
from textvae.models.sampled_softmax import SampledSoftmax


def set_sparse_embeddings(module: nn.Module, on: bool) -> None:
    """Every ``nn.Embedding`` inside ``module`` back-propagates a sparse gradient (the rows it
    read) when ``on``, a dense [V, E] one otherwise."""
    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            sub.sparse = on


class OutputHead:
    """Mixin for an ``nn.Module`` with ``self.projection``.

    ``fused_loss``: the fused projection + cross-entropy (:mod:`textvae.models.fused_loss`); False
    is the ``F.linear`` + ``F.cross_entropy`` reference (same loss, other rounding).
    ``sampled_softmax``: in training mode only, the sampled estimate replaces the full softmax.
    ``sparse_gradients``: see :meth:`set_sparse_gradients`.
    """

    projection: nn.Linear
    fused_loss: bool = True
    sampled_softmax: Optional[SampledSoftmax] = None
    sparse_gradients: bool = False

    def set_sparse_gradients(self, on: bool) -> None:
        """Sparse gradients for row lookups (``train.sparse_gradients``): every ``nn.Embedding``
        of the model, and the sampled softmax's output rows, then back-propagate only the rows
        they read. Only an optimiser that leaves rows without gradient untouched (plain SGD) may
        take them; the loop decides."""
        self.sparse_gradients = on
        set_sparse_embeddings(self, on)  # type: ignore[arg-type]  (mixed into an nn.Module)

    def sentence_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Σ_t -log p(targets_t | hidden_t) per row [B] of decoder states ``hidden`` [B, T, H];
        ``<pad>`` targets are skipped (padding costs no vocabulary matmul)."""
        mask = targets != PAD_ID  # [B, T]
        h, y = hidden[mask], targets[mask]
        weight, bias = self.projection.weight, self.projection.bias
        if self.training and self.sampled_softmax is not None:  # type: ignore[attr-defined]
            nll = self.sampled_softmax(h, weight, bias, y, sparse=self.sparse_gradients)
        elif self.fused_loss:
            nll = linear_cross_entropy(h, weight, bias, y)
        else:
            nll = F.cross_entropy(self.projection(h).float(), y, reduction="none")
        rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1).expand_as(targets)[mask]
        return torch.zeros(targets.shape[0], device=nll.device, dtype=nll.dtype).index_add_(0, rows, nll)
