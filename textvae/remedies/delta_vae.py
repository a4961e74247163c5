"""delta-VAE committed rate (Razavi et al. 2019, "Preventing Posterior Collapse with delta-VAEs"),
the simple case of a Gaussian posterior and a standard-normal prior.

Per dimension KL = 1/2 (mu² + sigma² - log sigma² - 1) >= 1/2 f(sigma²) with
f(v) = v - log v - 1, which is 0 only at v = 1. Keeping sigma inside [sigma_l, sigma_u] with
sigma_u < 1 gives, whatever mu,

    KL_d >= 1/2 f(sigma_u²) = delta

so the posterior can never collapse onto the prior: the rate is committed to at least delta nats
per dimension. sigma_u is the root below 1 of f(sigma_u²) = 2 delta; sigma_l (> 0, < sigma_u) keeps
log sigma² finite and caps the variance part of the rate at 1/2 f(sigma_l²) per dimension (the mean
part, mu² / 2, stays unbounded). The posterior head's log-variance output is squashed into the range:

    sigma = sigma_l + (sigma_u - sigma_l) * sigmoid(logvar_raw),   logvar = 2 log sigma

Scope and naming: this is the paper's simple case (their Sec. 2.1: independent dimensions, fixed
N(0, I) prior; refused with any other prior, ``needs_standard_prior``). Their text experiments use the
sequential case, an AR(1) prior with correlation alpha, a factorised sequential posterior, an
anti-causal encoder and an auxiliary prior, none of which is here. Their delta is the total committed
rate; ``delta`` here is per dimension, so the committed total is latent_dim * delta.
"""
from __future__ import annotations

import math

import torch

from textvae.config import POSITIVE
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy


def sigma_upper(delta: float) -> float:
    """The sigma < 1 with 1/2 (sigma² - log sigma² - 1) = delta (bisection on v = sigma² in (0, 1);
    f is decreasing there, from +inf to 0)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid == 0.0 or 0.5 * (mid - math.log(mid) - 1.0) > delta:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo)  # f(lo) >= 2 delta: the conservative side of the root


@register_remedy("delta_vae")
class DeltaVAE(Remedy):
    """delta-VAE committed rate (Razavi et al. 2019): sigma kept in [sigma_l, sigma_u], so that every
    KL_d >= 1/2 f(sigma_u²) = delta, f(v) = v - log v - 1."""

    needs_standard_prior = True  # the floor is a bound against N(0, I); a learned prior could follow sigma

    RANGES = {"delta": POSITIVE}

    def __init__(self, delta: float = 0.1, sigma_lower: float = 0.01):
        super().__init__()
        self.delta = float(delta)
        self.sigma_u = sigma_upper(self.delta)
        if not 0 < sigma_lower < self.sigma_u:
            raise TextVAEError(f"remedy 'delta_vae': sigma_lower must be in (0, {self.sigma_u:.4g}) for "
                               f"delta = {delta}, got {sigma_lower}")
        self.sigma_l = float(sigma_lower)

    def transform_posterior(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigma_l + (self.sigma_u - self.sigma_l) * torch.sigmoid(logvar)
        return mu, 2.0 * torch.log(sigma)
