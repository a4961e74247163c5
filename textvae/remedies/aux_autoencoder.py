"""Collaborative auxiliary autoencoder (Shen et al. 2018, "Improving Variational Encoder-Decoders
in Dialogue Generation", AAAI).

The paper trains two models together. An autoencoder maps the text to a deterministic embedding
e(x) and decodes the text from it; a variational model learns to *reconstruct that embedding*
from its latent, -log N(e(x); g(z), I) = 1/2 ||e(x) - g(z)||² + const, with the embedding held
fixed (their code updates only the latent networks with this term). The text decoder is fed the
AE embedding or the VAE's reconstruction of it, the latter with a probability r that grows from 0
to 1 over training, so the decoder learns to rely on its conditioning vector before it has to
read it from a noisy z.

In this TextVAE the encoder, its context h and the decoder are shared by both models:

    e(x) = tanh(A h(x))                               AE code in the decoder's z-space [B, D]
    extra_b = (1 - r(t)) * rec(x_b | e(x_b))          the autoencoder's reconstruction
            + weight * 1/2 ||z_b - sg(e(x_b))||²      the VAE latent matches the AE code

with r(t) = min(1, t / mix_steps) (the authors' code: 2500 steps). The decoder reads z directly,
so g is the identity here: whatever g does is done by the decoder's own first layers. Together
with the model's rec(x | z) + beta KL, the expected decoder loss moves from the autoencoder to the
VAE as r grows. Deviation: the published code alternates the two phases epoch by epoch; here both
terms are optimised at every step, with the stop-gradient sg keeping the embedding a fixed target
of the VAE term as in their phase split.

The step t is the one the model's forward is given (``extra_loss``'s ``step``), so aggressive
training's inner steps, and a resumed run, see the same r(t) as the step itself.
``encoder_dim`` is the size of h; the model provides it as a context fact when it knows it,
else it defaults to ``hidden_dim`` (right for He et al.'s equal-sized unidirectional LSTMs).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy


@register_remedy("aux_autoencoder")
class AuxAutoencoder(Remedy):
    """Collaborative auxiliary autoencoder (Shen et al. 2018): extra_b = (1 - r(t)) rec(x_b | e(x_b))
    + weight * 1/2 ||z_b - sg(e(x_b))||², r(t) = min(1, t / mix_steps)."""

    def __init__(self, latent_dim: int, hidden_dim: int, encoder_dim: Optional[int] = None,
                 weight: float = 1.0, mix_steps: int = 2500):
        super().__init__()
        if mix_steps < 0:
            raise TextVAEError(f"remedy 'aux_autoencoder': mix_steps must be >= 0, got {mix_steps}")
        self.encoder_dim = encoder_dim or hidden_dim
        self.weight, self.mix_steps = weight, mix_steps
        self.code = nn.Linear(self.encoder_dim, latent_dim, bias=False)

    def mix(self, step: int) -> float:
        """r(t): the share of decoding done from the VAE latent rather than the AE code."""
        return 1.0 if self.mix_steps == 0 else min(1.0, step / self.mix_steps)

    def extra_loss(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        if h.shape[-1] != self.encoder_dim:
            raise TextVAEError(f"remedy 'aux_autoencoder': encoder context has {h.shape[-1]} units, "
                               f"expected {self.encoder_dim}; set encoder_dim: {h.shape[-1]}")
        e = torch.tanh(self.code(h))  # [B, D]
        match = 0.5 * ((z - e.detach()) ** 2).sum(-1)
        r = self.mix(step)
        if r == 1.0:
            return self.weight * match
        return (1.0 - r) * model.token_nll(batch, e) + self.weight * match
