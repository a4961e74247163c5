"""Learned priors p(z): an autoregressive flow (VLAE) and a mixture of Gaussians.

Both are :class:`~textvae.models.distributions.Prior` modules registered in ``PRIORS``; their
parameters train with the rest of the model through the KL term.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from textvae.errors import TextVAEError
from textvae.models.distributions import PRIORS, Prior, diagonal_gaussian_log_prob, standard_normal_log_prob
from textvae.models.flows import MADE


@PRIORS.register("flow")
class AutoregressiveFlowPrior(Prior):
    """Autoregressive flow prior (Chen et al. 2017, "Variational lossy autoencoder"; MAF form of
    Papamakarios et al. 2017).

    z = g_K ∘ .. ∘ g_1(u), u ~ N(0, I), where step k maps x_{k-1} to x_k with

        x_k = x_{k-1} ⊙ exp(s_k(x_k)) + m_k(x_k),   [m_k, s_k] = MADE_k (autoregressive in x_k),

    alternating the variable order between steps. The density is one pass per step,

        x_{k-1} = (x_k - m_k(x_k)) ⊙ exp(-s_k(x_k)),   log p(z) = log N(x_0; 0, I) - Σ_k Σ_d s_{k,d}(x_k),

    and sampling is sequential: D passes per step. The log-scales are soft-clamped,
    s = c·tanh(s_raw / c) with c = ``max_log_scale``, so that no step rescales by more than e^c: far
    from the data an unbounded exp(-s) overflows and turns log p into NaN.
    """

    def __init__(self, latent_dim: int, num_steps: int = 2, hidden_dim: Optional[int] = None,
                 num_hidden_layers: int = 1, max_log_scale: float = 5.0):
        super().__init__()
        if num_steps < 1:
            raise TextVAEError(f"prior flow: num_steps must be >= 1, got {num_steps}")
        self.latent_dim, self.max_log_scale = latent_dim, max_log_scale
        self.steps = nn.ModuleList(MADE(latent_dim, hidden_dim or 2 * latent_dim, 2, num_hidden_layers,
                                        reverse=k % 2 == 1) for k in range(num_steps))

    def _shift_log_scale(self, made: MADE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = made(x)
        return m, self.max_log_scale * torch.tanh(s / self.max_log_scale)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> log p(z) [...], in fp32 under any autocast (as the posterior's side of the KL)."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.to(self.steps[0].out.weight.dtype)  # fp32 (a bf16 z from autocast), or the tests' float64
            log_det = z.new_zeros(z.shape[:-1])
            for made in reversed(self.steps):
                m, s = self._shift_log_scale(made, z)
                z = (z - m) * torch.exp(-s)
                log_det = log_det - s.sum(-1)
            return standard_normal_log_prob(z) + log_det

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples [n, D]; pass k of a step makes the variable of degree k exact."""
        weight = self.steps[0].out.weight
        x = torch.randn(n, self.latent_dim, generator=generator, dtype=weight.dtype, device=weight.device)
        with torch.autocast(weight.device.type, enabled=False):
            for made in self.steps:
                u, x = x, torch.zeros_like(x)
                for _ in range(self.latent_dim):
                    m, s = self._shift_log_scale(made, x)
                    x = u * torch.exp(s) + m
        return x


@PRIORS.register("mog")
class MixturePrior(Prior):
    """Learned mixture of Gaussians (as in e.g. Dilokthanakul et al. 2016; Tomczak & Welling 2018
    compare it with the VampPrior):

        p(z) = Σ_k π_k N(z; mu_k, diag exp(logvar_k)),   π = softmax(logits),

    with ``num_components`` components, means initialised N(0, init_scale²), unit variances and
    uniform weights.
    """

    def __init__(self, latent_dim: int, num_components: int = 10, init_scale: float = 1.0):
        super().__init__()
        if num_components < 1:
            raise TextVAEError(f"prior mog: num_components must be >= 1, got {num_components}")
        self.means = nn.Parameter(torch.randn(num_components, latent_dim) * init_scale)
        self.logvars = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., D] -> log p(z) [...] (a [..., K, D] intermediate)."""
        log_comp = diagonal_gaussian_log_prob(z.unsqueeze(-2), self.means, self.logvars)  # [..., K]
        return torch.logsumexp(torch.log_softmax(self.logits, -1) + log_comp, dim=-1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        k = torch.multinomial(torch.softmax(self.logits, -1), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype,
                          device=self.means.device)
        return self.means[k] + eps * torch.exp(0.5 * self.logvars[k])
