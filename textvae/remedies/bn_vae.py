"""BN-VAE (Zhu et al. 2020, "A Batch Normalized Inference Network Keeps the KL Vanishing Away").

Batch normalisation over the posterior means, with a fixed scale gamma and a learned shift s_d:

    mu'_{b,d} = gamma * (mu_{b,d} - m_d) / sqrt(v_d + eps) + s_d

(m, v: batch mean and biased variance in training, running estimates in evaluation). The log
variances are left alone. Over a training batch each dimension then has mean s_d and variance
gamma² v_d / (v_d + eps) ≈ gamma², so E_b[mu'_d²] ≈ gamma² + s_d², and since
sigma² - log sigma² - 1 >= 0,

    E_b[Σ_d KL_{b,d}] = 1/2 Σ_d E_b[mu'_d² + sigma_d² - log sigma_d² - 1]
                      >= 1/2 Σ_d (gamma² + s_d²)                    (:meth:`kl_lower_bound`)

with equality when every sigma = 1 (up to the eps factor v/(v+eps)). A fixed gamma > 0 keeps the
expected KL away from zero whatever the decoder does. The paper uses gamma 0.5-0.7 ("BN-VAE
(0.7)" is gamma = 0.7).

The floor is really gamma² v_d / (v_d + eps): an encoder whose means have a batch variance
v_d far below eps escapes it. The KL gradient always pushes v_d down (d/dv of v / (v + eps) is
eps / (v + eps)² > 0); under SGD, the paper's optimiser, that push is negligible once v >> eps,
but Adam rescales it to full-size steps, and with PyTorch's BatchNorm eps of 1e-5 (the paper's
code) a run with Adam collapsed to KL 0.01 (studies/remedies_synthetic.yaml). So eps defaults to
1e-10 here; ``eps: 1.0e-5`` reproduces the paper's code. He et al.'s U(-0.01, 0.01) initialisation
also starts the means below eps, which is why BN-VAE's code keeps PyTorch's defaults in the
encoder: use ``model.encoder_init: torch`` with this remedy.

The floor is a bound against N(0, I). A learned prior (``model.prior: flow`` or ``mog``, the dialogue
CVAE's p(z|c)) can follow the normalised means and void it, so with one the remedy only holds each
dimension's batch variance of the means at about gamma²: every dimension then counts as active (AU's
Var_x E[z|x] >= 0.01 for gamma > 0.1) by construction, and MI, not AU, says how much the latent holds.
It is allowed there (unlike delta-VAE's committed rate, ``needs_standard_prior``) because that is still a
use: a learned prior otherwise lets the information gather in a few dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textvae.config import POSITIVE, Range
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy


@register_remedy("bn_vae")
class BNVAE(Remedy):
    """BN-VAE (Zhu et al. 2020): mu'_{b,d} = gamma (mu_{b,d} - m_d) / sqrt(v_d + eps) + s_d, which
    keeps E_b[KL] >= 1/2 Σ_d (gamma² v_d / (v_d + eps) + s_d²): a floor once the means vary over the
    batch (v_d >> eps; with ``model.encoder_init: torch``, not He et al.'s U(-0.01, 0.01))."""

    needs_spread_means = True
    # momentum: the running statistics' update weight
    RANGES = {"gamma": POSITIVE, "momentum": Range(above=0, most=1), "eps": POSITIVE}

    def __init__(self, latent_dim: int, gamma: float = 0.7, momentum: float = 0.1, eps: float = 1e-10):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("gamma", torch.full((latent_dim,), float(gamma)))  # fixed: a buffer
        self.shift = nn.Parameter(torch.zeros(latent_dim))
        self.register_buffer("running_mean", torch.zeros(latent_dim))
        self.register_buffer("running_var", torch.ones(latent_dim))

    def transform_posterior(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and mu.shape[0] < 2:
            raise TextVAEError("remedy 'bn_vae': batch normalisation needs at least 2 sentences per training batch")
        mu = F.batch_norm(mu, self.running_mean, self.running_var, weight=self.gamma, bias=self.shift,
                          training=self.training, momentum=self.momentum, eps=self.eps)
        return mu, logvar

    def kl_lower_bound(self) -> float:
        """1/2 Σ_d (gamma² + s_d²): the least batch-mean KL in training (eps -> 0)."""
        return 0.5 * float((self.gamma**2 + self.shift.detach() ** 2).sum())
