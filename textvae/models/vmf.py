"""Hyperspherical latent space: von Mises-Fisher posterior with fixed concentration and the uniform
prior on the sphere (Xu & Durrett 2018, "Spherical latent spaces for stable variational autoencoders").

    q(z|x) = vMF(z; mu(x), kappa) = C_D(kappa) exp(kappa mu^T z) on S^{D-1},
    C_D(kappa) = kappa^{D/2-1} / ((2π)^{D/2} I_{D/2-1}(kappa)),
    p(z) = 1 / |S^{D-1}|,   |S^{D-1}| = 2 π^{D/2} / Γ(D/2),

both densities with respect to the surface measure of S^{D-1}. With kappa fixed the KL

    KL(q || p) = kappa A_D(kappa) + log C_D(kappa) + log |S^{D-1}|,   A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa)

is the same constant for every sentence: the encoder cannot lower it by collapsing, which is the
paper's remedy. A_D(kappa) = ||E_q[z]||. The Bessel functions are summed in float64 from their power
series (no SciPy needed).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from textvae.errors import TextVAEError
from textvae.models.distributions import PRIORS, Prior
from textvae.models.posteriors import POSTERIORS


def log_bessel_iv(order: float, x: float) -> float:
    """log I_v(x) for v >= 0, x > 0 from I_v(x) = Σ_k (x/2)^{2k+v} / (k! Γ(k+v+1)), in log space.

    Term ratios (x/2)² / ((k+1)(k+v+1)) fall below 1/4 once k >= x, so x + 100 terms leave a
    relative error far below float64 precision.
    """
    if x <= 0 or order < 0:
        raise TextVAEError(f"log_bessel_iv: needs order >= 0 and x > 0, got order={order}, x={x}")
    k = torch.arange(int(math.ceil(x)) + 100, dtype=torch.float64)
    log_terms = (2 * k + order) * math.log(x / 2) - torch.lgamma(k + 1) - torch.lgamma(k + order + 1)
    return float(torch.logsumexp(log_terms, 0))


def log_sphere_area(dim: int) -> float:
    """log |S^{dim-1}| = log 2 + (dim/2) log π - log Γ(dim/2): the sphere in R^dim."""
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def vmf_constants(dim: int, kappa: float) -> tuple[float, float]:
    """(log C_D(kappa), A_D(kappa)) for the vMF on S^{D-1}."""
    v = 0.5 * dim - 1
    log_i = log_bessel_iv(v, kappa)
    log_norm = v * math.log(kappa) - 0.5 * dim * math.log(2 * math.pi) - log_i
    return log_norm, math.exp(log_bessel_iv(v + 1, kappa) - log_i)


def _check_dim(dim: int, where: str) -> None:
    if dim < 2:
        raise TextVAEError(f"{where}: the sphere needs latent_dim >= 2, got {dim}")


@PRIORS.register("vmf_uniform")
class SphereUniform(Prior):
    """p(z) = 1 / |S^{D-1}|, the uniform distribution on the unit sphere (pair with posterior ``vmf``).

    Its density is with respect to the surface measure, so a z off the sphere (e.g. from a Gaussian
    posterior) is an error rather than a meaningless number.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        _check_dim(latent_dim, "prior vmf_uniform")
        self.latent_dim = latent_dim
        self.log_area = log_sphere_area(latent_dim)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # device only

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        off = float((z.detach().norm(dim=-1) - 1).abs().max()) if z.numel() else 0.0
        if off > 1e-3:
            raise TextVAEError(f"prior vmf_uniform: z is off the unit sphere (| |z| - 1 | = {off:.3g}); "
                               f"use it with posterior vmf")
        return z.new_full(z.shape[:-1], -self.log_area)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        g = torch.randn(n, self.latent_dim, generator=generator, dtype=self._anchor.dtype,
                        device=self._anchor.device)
        return F.normalize(g, dim=-1)


def _chi2(n: int, dof: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """n draws of a chi-square with ``dof`` degrees of freedom (float64): sums of squared normals, so
    that every draw comes from ``generator``."""
    return (torch.randn(n, dof, dtype=torch.float64, generator=generator, device=device) ** 2).sum(-1)


def wood_sample_w(n: int, dim: int, kappa: float, generator: Optional[torch.Generator] = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """n draws [n] (float64) of w = mu^T z, z ~ vMF(mu, kappa) on S^{dim-1}, by Wood's (1994) rejection
    sampler ("Simulation of the von Mises Fisher distribution"):

        b = (D-1) / (2 kappa + sqrt(4 kappa² + (D-1)²)),  x0 = (1-b)/(1+b),  c = kappa x0 + (D-1) log(1-x0²)
        repeat: Z ~ Beta((D-1)/2, (D-1)/2), U ~ U(0, 1), w = (1 - (1+b) Z) / (1 - (1-b) Z)
        until kappa w + (D-1) log(1 - x0 w) - c >= log U.

    (b written without the cancellation of the usual (-2 kappa + sqrt(..)) / (D-1).) Beta(a, a) with
    2a = D-1 is drawn as X / (X + Y) for X, Y chi-square with D-1 degrees of freedom.
    """
    m = dim - 1
    b = m / (2 * kappa + math.sqrt(4 * kappa**2 + m**2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m * math.log(1 - x0**2)
    w = torch.empty(n, dtype=torch.float64, device=device)
    todo = torch.arange(n, device=device)
    while todo.numel():
        x, y = _chi2(todo.numel(), m, generator, device), _chi2(todo.numel(), m, generator, device)
        beta = x / (x + y)
        cand = (1 - (1 + b) * beta) / (1 - (1 - b) * beta)
        u = torch.rand(todo.numel(), dtype=torch.float64, generator=generator, device=device)
        accept = kappa * cand + m * torch.log1p(-x0 * cand) - c >= torch.log(u)
        w[todo[accept]] = cand[accept]
        todo = todo[~accept]
    return w


def householder_to(mu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reflect x [..., B, D] by the Householder map H (mu [B, D], unit) that sends e_1 to mu:
    H x = x - 2 u (u^T x), u = (e_1 - mu) / ||e_1 - mu|| (H = I when mu = e_1)."""
    e1 = torch.zeros_like(mu)
    e1[..., 0] = 1.0
    u = F.normalize(e1 - mu, dim=-1, eps=1e-12)
    return x - 2 * u * (x * u).sum(-1, keepdim=True)


class VonMisesFisher:
    """vMF(mu, kappa) over z [B, D] with unit mean direction mu [B, D] and a fixed scalar kappa.

    ``mean`` is E[z] = A_D(kappa) mu; ``kl`` against :class:`SphereUniform` is the constant of the
    module docstring, returned as one column [B, 1] (it does not split over dimensions).
    """

    def __init__(self, mu: torch.Tensor, kappa: float, log_norm: float, mean_length: float):
        self.mu, self.kappa = mu, kappa
        self.log_norm, self.mean_length = log_norm, mean_length

    @property
    def mean(self) -> torch.Tensor:
        return self.mean_length * self.mu

    def rsample(self, n: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples [n, B, D]: w from Wood's sampler, a uniform direction v orthogonal to e_1,
        z' = (w, sqrt(1 - w²) v), then z = H(mu) z'. Gradients reach mu through the reflection."""
        b, d = self.mu.shape
        device = self.mu.device
        w = wood_sample_w(n * b, d, self.kappa, generator, device).view(n, b, 1)
        v = F.normalize(torch.randn(n, b, d - 1, dtype=torch.float64, generator=generator, device=device), dim=-1)
        z_e1 = torch.cat([w, torch.sqrt((1 - w**2).clamp_min(0)) * v], dim=-1).to(self.mu.dtype)
        return householder_to(self.mu, z_e1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log C_D(kappa) + kappa mu^T z for z [..., B, D] on the sphere -> [..., B]."""
        return self.log_norm + self.kappa * (z * self.mu).sum(-1)

    def entropy(self) -> torch.Tensor:
        """H[q] = -log C_D(kappa) - kappa A_D(kappa), [B]."""
        return self.mu.new_full(self.mu.shape[:1], -self.log_norm - self.kappa * self.mean_length)

    def kl(self, prior: Prior) -> torch.Tensor:
        if not isinstance(prior, SphereUniform):
            raise TextVAEError(f"posterior vmf: needs prior vmf_uniform, got {type(prior).__name__}")
        kl = -self.entropy() + prior.log_area
        return kl.unsqueeze(-1)


@POSTERIORS.register("vmf")
class VMFHead(nn.Module):
    """von Mises-Fisher posterior (Xu & Durrett 2018), q(z|x) = vMF(z; mu(x), kappa).

    Mean direction mu = W h / ||W h|| (bias-free W); the norm of W h is ignored and kappa is the
    fixed hyperparameter ``kappa`` (the paper's remedy: KL constant in x)."""

    def __init__(self, in_dim: int, latent_dim: int, kappa: float = 50.0):
        super().__init__()
        _check_dim(latent_dim, "posterior vmf")
        if kappa <= 0:
            raise TextVAEError(f"posterior vmf: kappa must be > 0, got {kappa}")
        self.linear = nn.Linear(in_dim, latent_dim, bias=False)
        self.kappa = float(kappa)
        self.log_norm, self.mean_length = vmf_constants(latent_dim, self.kappa)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W h, zeros): the second slot (a log-variance for Gaussian heads) is unused here."""
        mu = self.linear(h)
        return mu, torch.zeros_like(mu)

    def distribution(self, mu: torch.Tensor, logvar: torch.Tensor, h: torch.Tensor) -> VonMisesFisher:
        return VonMisesFisher(F.normalize(mu, dim=-1), self.kappa, self.log_norm, self.mean_length)
