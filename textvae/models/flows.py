"""Masked autoregressive networks (MADE) and the inverse autoregressive flow posterior (IAF).

MADE (Germain et al. 2015, "MADE: Masked autoencoder for distribution estimation"): a feed-forward
network whose weight matrices are multiplied by 0/1 masks so that output d depends on the input only
through the variables that come before d in a fixed order. Every unit gets a degree: inputs 1..D (in
the chosen order), hidden units cycle through 1..D-1; a weight from degree a into a hidden unit of
degree b is kept when b >= a, and into an output of degree b when b > a. The Jacobian d out / d in is
then strictly triangular in that order.

IAF (Kingma et al. 2016, "Improved variational inference with inverse autoregressive flow"): starting
from z_0 = mu + sigma ⊙ eps, eps ~ N(0, I), each step t applies the gated update

    [m_t, s_t] = MADE_t(z_{t-1}, h),   sigma_t = sigmoid(s_t + b),   z_t = sigma_t ⊙ z_{t-1} + (1 - sigma_t) ⊙ m_t

(b: a fixed "forget-gate" bias, so that sigma starts near 1 and the flow near identity), with the
variable order reversed from one step to the next. Because m_t, s_t depend only on earlier variables
the Jacobian is triangular with diagonal sigma_t, hence

    log q(z_T | x) = log N(z_0; mu, sigma^2) - Σ_t Σ_d log sigma_{t,d}.

Sampling and the density of the samples take one pass per step; the density of an *arbitrary* z (MI
estimators need log q(z_i | x_j)) inverts every step, which for an inverse autoregressive map is
sequential: D passes of the MADE per step.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from textvae.errors import TextVAEError
from textvae.models.distributions import DiagGaussian, Prior
from textvae.models.posteriors import POSTERIORS


class MaskedLinear(nn.Linear):
    """y = x (W ⊙ M)^T + b with a fixed 0/1 mask M [out, in]."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        # The mask follows from the configuration, so it is not saved with the weights.
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive map z [..., D] (+ optional context [..., C]) -> ``num_outputs`` tensors [..., D].

    Output d of each returned tensor depends on z only through the variables before d in the order
    (0, 1, .., D-1), or (D-1, .., 0) with ``reverse``; the context enters every first-layer hidden unit
    unmasked (it is not one of the ordered variables).
    """

    def __init__(self, dim: int, hidden_dim: int, num_outputs: int = 2, num_hidden_layers: int = 1,
                 context_dim: int = 0, reverse: bool = False):
        super().__init__()
        if dim < 1 or hidden_dim < 1 or num_hidden_layers < 1:
            raise TextVAEError(f"MADE: dim, hidden_dim and num_hidden_layers must be >= 1, got "
                               f"{dim}, {hidden_dim}, {num_hidden_layers}")
        self.dim, self.num_outputs, self.reverse = dim, num_outputs, reverse
        self.register_buffer("degrees", self.input_degrees(dim, reverse), persistent=False)
        hidden_deg = torch.arange(hidden_dim) % max(1, dim - 1) + 1  # [H], values in 1..D-1
        layers, prev = [], self.degrees
        for i in range(num_hidden_layers):
            mask = hidden_deg[:, None] >= prev[None, :]
            layers.append(MaskedLinear(dim if i == 0 else hidden_dim, hidden_dim, mask))
            prev = hidden_deg
        self.hidden = nn.ModuleList(layers)
        out_deg = self.degrees.repeat(num_outputs)  # output k * D + d has the degree of variable d
        self.out = MaskedLinear(hidden_dim, num_outputs * dim, out_deg[:, None] > prev[None, :])
        self.context = nn.Linear(context_dim, hidden_dim, bias=False) if context_dim > 0 else None

    @staticmethod
    def input_degrees(dim: int, reverse: bool) -> torch.Tensor:
        """Degree (1-based position in the order) of each variable [D]."""
        degrees = torch.arange(1, dim + 1)
        return degrees.flip(0) if reverse else degrees

    def forward(self, z: torch.Tensor, context: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
        x = self.hidden[0](z)
        if self.context is not None:
            x = x + self.context(context)  # context [B, C] broadcasts against z [..., B, D]
        x = F.elu(x)
        for layer in self.hidden[1:]:
            x = F.elu(layer(x))
        return self.out(x).chunk(self.num_outputs, dim=-1)


class IAF(nn.Module):
    """A stack of gated IAF steps conditioned on the context h, alternating the variable order."""

    def __init__(self, dim: int, context_dim: int, num_steps: int, hidden_dim: int,
                 num_hidden_layers: int = 1, gate_bias: float = 2.0):
        super().__init__()
        if num_steps < 1:
            raise TextVAEError(f"posterior iaf: num_steps must be >= 1, got {num_steps}")
        self.dim, self.gate_bias = dim, gate_bias
        self.steps = nn.ModuleList(MADE(dim, hidden_dim, 2, num_hidden_layers, context_dim, reverse=t % 2 == 1)
                                   for t in range(num_steps))

    def _gates(self, made: MADE, z: torch.Tensor, context: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """m, sigma, log sigma of one step evaluated at z."""
        m, s = made(z, context)
        log_sigma = F.logsigmoid(s + self.gate_bias)
        return m, log_sigma.exp(), log_sigma

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_0 [..., B, D] -> (z_T [..., B, D], Σ_t Σ_d log sigma_{t,d} [..., B])."""
        log_det = z.new_zeros(z.shape[:-1])
        for made in self.steps:
            m, sigma, log_sigma = self._gates(made, z, context)
            z = sigma * z + (1 - sigma) * m
            log_det = log_det + log_sigma.sum(-1)
        return z, log_det

    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_T [..., B, D] -> (z_0, Σ_t Σ_d log sigma_{t,d}), the same log-determinant as ``forward``.

        Each step is undone by D passes: y = sigma(x) x + (1 - sigma(x)) m(x) gives x = (y - (1 - sigma) m)
        / sigma, where pass k makes the variable of degree k exact (its gates depend only on degrees < k,
        already exact). The gates of the last pass are those of the exact x.
        """
        log_det = z.new_zeros(z.shape[:-1])
        for made in reversed(self.steps):
            y = z
            for _ in range(self.dim):
                m, sigma, log_sigma = self._gates(made, z, context)
                z = (y - (1 - sigma) * m) / sigma
            log_det = log_det + log_sigma.sum(-1)
        return z, log_det


class IAFPosterior:
    """q(z|x) = IAF_h pushed forward from N(mu, diag exp(logvar)); see the module docstring.

    ``mean`` is the flow's image of the base mean mu (the exact mean has no closed form); ``entropy``
    and ``kl`` return ``None``, so the KL is the Monte-Carlo log q(z|x) - log p(z).

    ``rsample`` remembers log q of the samples it returns; ``log_prob`` of exactly those samples (the
    tensor or, for n = 1, its row ``[0]``, unmodified and not detached) reuses them instead of
    inverting the flow. Any other z is inverted.
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, context: torch.Tensor, flow: IAF):
        self.base = DiagGaussian(mu, logvar)
        self.context, self.flow = context, flow
        self._last: Optional[tuple[torch.Tensor, torch.Tensor, int]] = None  # (z, log q, z._version)

    @property
    def mean(self) -> torch.Tensor:
        return self.flow(self.base.mu, self.context)[0]

    def rsample(self, n: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n reparameterised samples [n, B, D]."""
        z0 = self.base.rsample(n, generator)
        z, log_det = self.flow(z0, self.context)
        self._last = (z, self.base.log_prob(z0) - log_det, z._version)
        return z

    def _cached(self, z: torch.Tensor) -> Optional[torch.Tensor]:
        if self._last is None:
            return None
        sample, log_q, version = self._last
        same = (z.data_ptr() == sample.data_ptr() and z._version == version
                and z.requires_grad == sample.requires_grad)
        if same and z.shape == sample.shape:
            return log_q
        if same and sample.shape[0] == 1 and z.shape == sample.shape[1:]:
            return log_q[0]
        return None

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) for z [..., B, D] -> [..., B] (z broadcasts against the batch)."""
        cached = self._cached(z)
        if cached is not None:
            return cached
        z0, log_det = self.flow.inverse(z, self.context)
        log_q = self.base.log_prob(z0) - log_det
        # Gates shrink by up to sigmoid(s) per step, so the pre-image of a z far from the samples can
        # overflow: its density is 0 in floating point (-inf), never NaN (which would poison logsumexp).
        return log_q.masked_fill(~torch.isfinite(z0).all(-1), float("-inf"))

    def entropy(self) -> None:
        return None

    def kl(self, prior: Prior) -> None:
        return None


@POSTERIORS.register("iaf")
class IAFHead(nn.Module):
    """Inverse autoregressive flow posterior (Kingma et al. 2016).

    [mu, log sigma²] = W h (bias-free, as the Gaussian head), then ``num_steps`` IAF steps whose
    MADEs (``hidden_dim`` units, default 2·D; ``num_hidden_layers``) also read h.

    ``gate_bias`` is added to s before the sigmoid, so sigma starts near sigmoid(gate_bias) whatever
    the weight initialisation (Kingma et al. suggest +1 or +2).
    """

    def __init__(self, in_dim: int, latent_dim: int, num_steps: int = 2, hidden_dim: Optional[int] = None,
                 num_hidden_layers: int = 1, gate_bias: float = 2.0):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * latent_dim, bias=False)
        self.flow = IAF(latent_dim, in_dim, num_steps, hidden_dim or 2 * latent_dim, num_hidden_layers, gate_bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar

    def distribution(self, mu: torch.Tensor, logvar: torch.Tensor, h: torch.Tensor) -> IAFPosterior:
        return IAFPosterior(mu, logvar, h, self.flow)
