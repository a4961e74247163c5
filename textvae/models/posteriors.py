"""Posterior heads: encoder context h [B, H] -> q(z|x)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from textvae.models.distributions import DiagGaussian
from textvae.registry import Registry

POSTERIORS: Registry = Registry("posterior",
                                recipe="model.posterior: NAME, model.posterior_options: {PARAMETER: VALUE}",
                                supplied=("in_dim", "latent_dim"))


def register_posterior(name: str) -> Callable[[Any], Any]:
    """Decorator: a posterior head q(z|x) under ``name``, which ``model.posterior`` chooses."""
    return POSTERIORS.register(name)


def list_posteriors() -> list[str]:
    """Every registered posterior, by name."""
    return POSTERIORS.names()


@POSTERIORS.register("gaussian")
class GaussianHead(nn.Module):
    """q(z|x) = N(mu, diag sigma²) with [mu, log sigma²] = W h (bias-free, as He et al. 2019)."""

    # (mu, logvar) are z's own Gaussian's, which a remedy's transform_posterior may change (BN-VAE,
    # delta-VAE); a head whose are not (IAF's base, vMF's direction) leaves it False
    gaussian_parameters = True

    def __init__(self, in_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * latent_dim, bias=False)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mu, logvar), each [B, D]; remedies may transform them before
        :meth:`distribution` builds q(z|x) (see ``TextVAE.encode_hidden``)."""
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar

    def distribution(self, mu: torch.Tensor, logvar: torch.Tensor, h: torch.Tensor) -> DiagGaussian:
        """q(z|x) from the (possibly remedy-transformed) parameters; ``h`` is the encoder context,
        which flow posteriors condition on and the Gaussian does not need."""
        return DiagGaussian(mu, logvar)
