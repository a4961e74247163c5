"""Collaborative auxiliary autoencoder (Shen et al. 2018, "Improving Variational Encoder-Decoders
in Dialogue Generation", AAAI).

The paper trains two models together. An autoencoder maps the text to a deterministic embedding
e(x) and decodes the text from it; a variational model learns to *reconstruct that embedding*
from its latent, -log N(e(x); g(z), I) = 1/2 ||e(x) - g(z)||² + const, with the embedding held
fixed. The text decoder reads, per example, the AE embedding with probability 1 - r and the VAE's
reconstruction g(z) with probability r, r growing from 0 to 1 over training, so the decoder learns
to rely on its conditioning vector before it has to read it from a noisy z.

In this TextVAE the encoder, its context h and the decoder are shared by both models:

    e(x)   = tanh(A h(x))                                     AE code in the decoder's z-space [B, D]
    z_dec  = e(x) with probability 1 - r(t), else z           what the decoder reads (hook decoder_latent)
    extra  = weight * 1/2 ||z - sg(e(x))||²                   the VAE latent matches the AE code (sg:
                                                              stop-gradient: the code is its fixed target)

so the model's reconstruction term is, in expectation, (1 - r) rec(x | e) + r rec(x | z).
r(t) = min(1, t / mix_steps) (their code: 2500 steps). The decoder reads z directly, so g is the
identity: whatever g does is done by the decoder's own first layers. The training log's ``rec`` is
the mixture's; validation and test figures decode from z. Deviations from the authors' code
(``ws_vhred.py``): it alternates two phases epoch by epoch, here both act at every step; and its
reconstruction phase freezes the posterior network's weights (the reconstruction's gradient passes
through them into the shared utterance encoder without changing them), which one shared posterior
head cannot do without a second pass through it: here the reconstruction through z trains the
posterior head too, as in any VAE. (Cutting that gradient at z instead would leave the encoder no
reconstruction signal at all once r reaches 1.) Their reconstruction phase also adds the KL term only
while it exceeds 5 nats per utterance; here the KL is the objective's, as every remedy composes with it
(a floor of that kind is a free-bits remedy).

The step t is the one the model's forward is given (the hooks' ``step``), so aggressive training's
inner steps, and a resumed run, see the same r(t) as the step itself. The draw of e or z per example
comes from torch's global generator (the training stream). ``encoder_dim``, the size of h, is the
model's (a context fact every model supplies).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from textvae.config import NON_NEGATIVE
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy


@register_remedy("aux_autoencoder")
class AuxAutoencoder(Remedy):
    """Collaborative auxiliary autoencoder (Shen et al. 2018): the decoder reads e(x_b) = tanh(A h_b) with
    probability 1 - r(t), else z_b; extra_b = weight * 1/2 ||z_b - sg(e(x_b))||², r(t) = min(1, t / mix_steps)."""

    RANGES = {"weight": NON_NEGATIVE, "mix_steps": NON_NEGATIVE}

    def __init__(self, latent_dim: int, encoder_dim: int, weight: float = 1.0, mix_steps: int = 2500):
        super().__init__()
        self.encoder_dim = encoder_dim
        self.weight, self.mix_steps = weight, mix_steps
        self.code = nn.Linear(self.encoder_dim, latent_dim, bias=False)

    def mix(self, step: int) -> float:
        """r(t): the share of decoding done from the VAE latent rather than the AE code."""
        return 1.0 if self.mix_steps == 0 else min(1.0, step / self.mix_steps)

    def embedding(self, h: torch.Tensor) -> torch.Tensor:
        """e(x) = tanh(A h) [B, D] from the encoder context h [B, encoder_dim]."""
        if h.shape[-1] != self.encoder_dim:
            raise TextVAEError(f"remedy 'aux_autoencoder': encoder context has {h.shape[-1]} units, "
                               f"expected the model's encoder_dim {self.encoder_dim}")
        return torch.tanh(self.code(h))

    def decoder_latent(self, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        reads_z = torch.rand(z.shape[0], 1, device=z.device) < self.mix(step)  # [B, 1]; r = 1: every row
        return torch.where(reads_z, z, self.embedding(h).to(z.dtype))

    def extra_loss(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        return self.weight * 0.5 * ((z - self.embedding(h).detach()) ** 2).sum(-1)
