"""Aggressive inference-network training (He et al. 2019, "Lagging Inference Networks and
Posterior Collapse in Variational Autoencoders").

The objective is unchanged; the training procedure is. Before each decoder update the encoder
is optimised until it catches up with the current decoder:

    for i = 1 .. max_inner_steps:                  (first on the step's batch, then random batches)
        one optimiser step on the encoder parameters only, with the usual loss (same beta)
        every check_every steps: L_k = Σ loss / Σ tokens over the last block;
                                 stop when L_k >= L_{k-1} (the per-word loss did not decrease)
    then the step's own update, on the original batch, changes the decoder only.

Aggressive mode is switched off for good once the validation MI (``mi_key``: by default the
per-batch estimator ``mi_batch``; ``mi_batch_he2019`` is the authors' own, with its sampling noise)
decreases from one epoch to the next; from then on updates are ordinary. The authors' code also
draws that MI's samples anew each epoch (``train.valid_redraw``), over batches of at most 32
sentences (as textvae's per-batch estimators always group them). The switch and the last MI are
persistent buffers, so a resumed run continues in the right mode; they are procedure state
(``procedure_buffers``), so the plateau schedule's best-model reload keeps them (the authors' flag
is a script variable: a reloaded best epoch from aggressive mode does not switch it back on).
Deviation: the authors compare the first epoch's MI with 0; here the first comparison is between
the first two epochs, as the rule is stated.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from textvae.config import COUNT
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, Trainer, register_remedy


@register_remedy("aggressive")
class Aggressive(Remedy):
    """Aggressive encoder training (He et al. 2019): before each decoder update, encoder-only steps
    until the per-word loss stops falling, until the validation MI falls; the loss is unchanged."""

    procedure_buffers = ("active", "last_mi")

    RANGES = {"max_inner_steps": COUNT, "check_every": COUNT}

    def __init__(self, max_inner_steps: int = 100, check_every: int = 15, mi_key: str = "mi_batch"):
        super().__init__()
        self.max_inner_steps, self.check_every, self.mi_key = max_inner_steps, check_every, mi_key
        self.register_buffer("active", torch.tensor(True))
        self.register_buffer("last_mi", torch.tensor(math.nan, dtype=torch.float64))
        self.inner_steps = 0  # of the last update
        self.epoch_inner_steps: list[int] = []  # of each update since the epoch began (or the run resumed)

    def _encoder_step(self, trainer: Trainer, batch: Any) -> tuple[float, float]:
        """One update of the encoder parameters; returns (summed loss, tokens) of the batch."""
        trainer.optimizer.zero_grad(set_to_none=True)
        out = trainer.forward(batch)  # the inner steps run as the outer step does (precision, copies)
        out.loss.backward()
        trainer.clip_gradients()  # over every gradient, the decoder's too, as the authors' code
        keep = {id(p) for p in trainer.encoder_parameters()}
        trainer.drop_gradients([p for group in trainer.optimizer.param_groups for p in group["params"]
                                if id(p) not in keep])
        trainer.optimizer_step()
        return float(out.loss.detach()) * len(batch), float(out.n_tokens.sum())

    def before_update(self, trainer: Trainer, batch: Any) -> None:
        if not self.active:
            self.inner_steps = 0
            return
        previous, block_loss, block_tokens = math.inf, 0.0, 0.0
        for i in range(1, self.max_inner_steps + 1):
            loss, tokens = self._encoder_step(trainer, batch if i == 1 else trainer.random_batch())
            block_loss, block_tokens = block_loss + loss, block_tokens + tokens
            if i % self.check_every == 0:
                current = block_loss / block_tokens
                if current >= previous:
                    break
                previous, block_loss, block_tokens = current, 0.0, 0.0
        self.inner_steps = i
        self.epoch_inner_steps.append(i)
        trainer.optimizer.zero_grad(set_to_none=True)

    def before_step(self, trainer: Trainer) -> None:
        if self.active:  # the outer update trains the decoder only
            trainer.drop_gradients(trainer.encoder_parameters())

    def after_epoch(self, trainer: Trainer, epoch: int, valid_metrics: dict[str, float]) -> dict[str, float]:
        if not self.active:
            return {}
        if self.mi_key not in valid_metrics:
            raise TextVAEError(f"remedy 'aggressive' needs the validation metric {self.mi_key!r}; "
                               f"the training loop evaluated {sorted(valid_metrics)}")
        mi = float(valid_metrics[self.mi_key])
        if not math.isnan(float(self.last_mi)) and mi < float(self.last_mi):
            self.active.fill_(False)
        self.last_mi.fill_(mi)
        steps, self.epoch_inner_steps = self.epoch_inner_steps, []
        # the epoch's mean encoder steps per update: how much an aggressive epoch costs
        return {"aggressive": float(self.active), "aggressive_inner_steps": sum(steps) / max(len(steps), 1)}
