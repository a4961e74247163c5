"""Encoder pretraining (Li et al. 2019, "A Surprisingly Effective Fix for Deep Latent Variable
Modeling of Text"). The objective is staged by the training procedure:

1. for ``pretrain_epochs`` epochs: an autoencoder, KL weight 0 (z is still sampled from q(z|x),
   so the encoder learns a code the decoder can read through the noise):  K_b = 0;
2. then the decoder is re-initialised (the encoder keeps its pretrained weights) and training goes
   on with KL annealing from ``kl_start`` over ``warmup_steps`` steps and Li et al.'s free bits:

       K_b = beta * w(t) * Σ_d max(target_kl / latent_dim, KL_{b,d}),
       w(t) = min(1, kl_start + (1 - kl_start) (t - t_switch) / warmup_steps)

The published recipe: kl_start 0, warm-up 10 epochs, target_kl 8 (0.25 nats per dimension with 32
dimensions). The annealing restarts at the switch, so this remedy carries its own ramp; keep the
KL schedule ``constant`` 1 (its beta multiplies the term). It replaces the KL term, so it is not
combined with another free-bits remedy. The switch step is a persistent buffer (-1 before the
switch): a resumed run stays in its phase. It is procedure state (``procedure_buffers``): a
best-model reload at an lr decay never takes the run back into pretraining (Li et al. pretrain in a
separate run, so their reloads cannot).
"""
from __future__ import annotations

import torch

from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, Trainer, register_remedy
from textvae.remedies.free_bits import example_free_bits, per_dimension


@register_remedy("encoder_pretraining")
class EncoderPretraining(Remedy):
    """Encoder pretraining (Li et al. 2019) in one run: K_b = 0 for ``pretrain_epochs`` epochs, then a
    fresh decoder and K_b = beta w(t) Σ_d max(target_kl / latent_dim, KL_{b,d})."""

    replaces_kl = True
    drops_kl_term = True  # zeros while pretraining: the prior leaves the graph (DDP must know)
    procedure_buffers = ("switch_step",)

    def __init__(self, latent_dim: int, pretrain_epochs: int = 10, target_kl: float = 8.0,
                 warmup_steps: int = 10000, kl_start: float = 0.0):
        super().__init__()
        if pretrain_epochs < 1 or warmup_steps < 1 or target_kl < 0:
            raise TextVAEError(f"remedy 'encoder_pretraining': need pretrain_epochs >= 1, warmup_steps >= 1, "
                               f"target_kl >= 0 (got {pretrain_epochs}, {warmup_steps}, {target_kl})")
        self.pretrain_epochs, self.warmup_steps, self.kl_start = pretrain_epochs, warmup_steps, kl_start
        self.threshold, self.latent_dim = target_kl / max(latent_dim, 1), latent_dim
        self.register_buffer("switch_step", torch.tensor(-1, dtype=torch.long))

    @property
    def pretraining(self) -> bool:
        return int(self.switch_step) < 0

    def kl_weight(self, step: int) -> float:
        """0 while pretraining, then the ramp w(t)."""
        if self.pretraining:
            return 0.0
        elapsed = step - int(self.switch_step)
        return min(1.0, self.kl_start + (1.0 - self.kl_start) * elapsed / self.warmup_steps)

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        per_dimension("encoder_pretraining", kl, self.latent_dim)  # at the first step, not after the pretraining
        if self.pretraining:
            return kl.new_zeros(kl.shape[0])
        return beta * self.kl_weight(step) * example_free_bits(kl, self.threshold)

    def after_epoch(self, trainer: Trainer, epoch: int, valid_metrics: dict[str, float]) -> dict[str, float]:
        if self.pretraining and epoch >= self.pretrain_epochs:
            trainer.reinit_decoder()
            self.switch_step.fill_(trainer.step)
            return {"decoder_reinitialised": 1.0}
        return {}
