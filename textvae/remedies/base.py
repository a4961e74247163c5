"""Remedies for posterior collapse as small components with one hook each.

A remedy overrides only the hook(s) its paper changes; :class:`~textvae.objective.Objective` and
:class:`~textvae.models.textvae.TextVAE` call every registered remedy at each hook, so remedies
compose by configuration.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from textvae.errors import TextVAEError
from textvae.registry import Registry

REMEDIES: Registry = Registry("remedy")


def register_remedy(name: str):
    return REMEDIES.register(name)


def list_remedies() -> list[str]:
    return REMEDIES.names()


class Remedy(nn.Module):
    """Base class. Hooks, in the order a training step meets them:

    * ``corrupt_inputs(inputs [B, T]) -> [B, T]``: decoder inputs during training (word dropout).
    * ``transform_posterior(mu, logvar) -> (mu, logvar)``: posterior parameters (BN-VAE, delta-VAE).
    * ``kl_term(kl [B, D], beta, step) -> [B] | None``: replaces the default ``beta * Σ_d KL``
      (free bits, KL constraint); at most one remedy may define it.
    * ``extra_loss(model, batch, z [B, D], h [B, H]) -> [B] | None``: an added per-sentence loss
      (bag-of-words, Z-forcing, auxiliary autoencoder).
    """

    replaces_kl = False

    def corrupt_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs

    def transform_posterior(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mu, logvar

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> Optional[torch.Tensor]:
        return None

    def extra_loss(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor) -> Optional[torch.Tensor]:
        return None


def create_remedy(spec: dict[str, Any], **context: Any) -> Remedy:
    """Build a remedy from ``{"name": ..., **params}``.

    ``context`` holds model facts some remedies need (``latent_dim``, ``vocab_size``,
    ``hidden_dim``); a remedy receives only the context arguments its constructor names.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if name is None:
        raise TextVAEError(f"a remedy needs a 'name'; valid: {', '.join(list_remedies())}")
    return REMEDIES.build(name, params, **context)
