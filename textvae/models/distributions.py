"""Latent distributions: posteriors q(z|x) and priors p(z), behind one small interface.

Every metric (IW-NLL, MI, AU) uses only ``mean``, ``rsample``, ``log_prob`` and, where a closed form
exists, ``entropy`` / ``kl``; so a flow posterior or a learned prior plugs in without touching them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from textvae.registry import Registry

LOG_2PI = math.log(2 * math.pi)

PRIORS: Registry = Registry("prior", recipe="model.prior: NAME, model.prior_options: {PARAMETER: VALUE}",
                            supplied=("latent_dim",))


def register_prior(name: str) -> Callable[[Any], Any]:
    """Decorator: a prior p(z) under ``name``, which ``model.prior`` chooses."""
    return PRIORS.register(name)


def list_priors() -> list[str]:
    """Every registered prior, by name."""
    return PRIORS.names()


def diagonal_gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension (shapes broadcast)."""
    # scaled before squaring: (z - mu)² e^{-logvar} is 0 * inf = NaN where logvar < -88 (fp32) and z = mu
    sq = ((z - mu) * torch.exp(-0.5 * logvar)) ** 2
    return -0.5 * (LOG_2PI + logvar + sq).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (LOG_2PI + z**2).sum(-1)


class DiagGaussian:
    """N(mu, diag(exp(logvar))) over z [B, D].

    log_prob(z) = -1/2 Σ_d [log 2π + logvar_d + (z_d - mu_d)² / exp(logvar_d)], with z [..., B, D]
    broadcasting against the batch, so z [M, 1, D] gives the [M, B] matrix log q(z_m | x_b).
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu = mu
        self.logvar = logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n reparameterised samples [n, B, D]."""
        shape = (n, *self.mu.shape)
        eps = torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device, generator=generator)
        return self.mu + eps * self.std

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return diagonal_gaussian_log_prob(z, self.mu, self.logvar)

    def entropy(self) -> torch.Tensor:
        """H[q] = 1/2 Σ_d (1 + log 2π + logvar_d), [B]."""
        return 0.5 * (1.0 + LOG_2PI + self.logvar).sum(-1)

    def kl(self, prior: Any) -> Optional[torch.Tensor]:
        """Analytic KL(q || p) per dimension [B, D] when p is N(0, I) or another diagonal Gaussian
        (a conditional prior p(z|c)):

            KL_d = 1/2 [ log s_p² − log s_q² + (s_q² + (m_q − m_p)²) / s_p² − 1 ];

        ``None`` for other priors (callers then use a Monte-Carlo estimate)."""
        if isinstance(prior, StandardNormal):
            return 0.5 * (self.mu**2 + torch.exp(self.logvar) - 1.0 - self.logvar)
        if isinstance(prior, DiagGaussian):
            return 0.5 * (prior.logvar - self.logvar
                          + (torch.exp(self.logvar) + (self.mu - prior.mu) ** 2) * torch.exp(-prior.logvar) - 1.0)
        return None


class Prior(torch.nn.Module):
    """p(z) over z [..., D]."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    """p(z) = N(0, I_D)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        # A buffer only to know the device and dtype the prior lives on.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=self._anchor.device)


def kl_terms(posterior: Any, prior: Any, z: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The KL term of every model and metric: (KL per dimension [B, D], True) when analytic
    (:meth:`DiagGaussian.kl`), else (the one-sample Monte-Carlo estimate log q(z|x) - log p(z) with the
    given sample z [B, D], in a single column [B, 1], False). ``prior`` is a :class:`Prior` or a
    conditional prior's :class:`DiagGaussian`."""
    kl = posterior.kl(prior)
    if kl is not None:
        return kl, True
    return (posterior.log_prob(z) - prior.log_prob(z)).unsqueeze(-1), False
