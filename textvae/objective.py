"""The training objective: per-sentence terms from the model -> the scalar the optimiser minimises.

It owns the remedies and the order of their model hooks; a model calls, in this order,
:meth:`Objective.corrupt_inputs` (decoder inputs, training only), :meth:`Objective.transform_posterior`
(posterior parameters; :meth:`Objective.transform_prior` for a learned conditional prior's),
:meth:`Objective.extra_losses` (added per-sentence losses),
:meth:`Objective.decoder_latent` (the latent the decoder reads, training only) and finally the
objective itself on its per-sentence terms, and so never iterates over remedies:

    loss = mean_b [ rec_b + K_b + Σ_r extra_{r,b} ]

with K_b = beta(step) · Σ_d KL_{b,d} unless a remedy replaces the KL term (free bits, KL constraint),
and extra_{r,b} each remedy's added loss (bag-of-words, Z-forcing, ...). Figures that are *reported*
(ELBO, PPL) never use beta, a replaced KL term or the added losses: they come from ``textvae.metrics`` at
beta = 1, with the posterior as the remedies transform it (BN-VAE's, delta-VAE's q(z|x) is the model's).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import torch
from torch import nn

from textvae.config import ObjectiveConfig
from textvae.errors import TextVAEError
from textvae.remedies import check_remedies, create_remedy, transforms_posterior
from textvae.schedules import create_schedule


class Objective(nn.Module):
    def __init__(self, cfg: ObjectiveConfig, posterior: str = "gaussian", prior_remedies: Sequence[str] = (),
                 **context: Any):
        """``posterior`` names the model's posterior for the remedies' combination rules
        (:func:`~textvae.remedies.base.check_remedies`, without the prior's rule: that one is a run's
        check before it starts, so a model saved before the rule still loads); ``context`` holds the
        model facts the remedies are built with. ``prior_remedies`` names remedies of ``cfg`` that
        transform the posterior and that a learned conditional prior p(z|c) (the dialogue CVAE's)
        takes too: each gets a second instance of its own for :meth:`transform_prior` (BN-VAE's CVAE
        extension, whose batch statistics of the prior's means stay apart from the posterior's)."""
        super().__init__()
        self.kl_schedule = cfg.kl_schedule
        check_remedies(cfg.remedies, context.get("latent_dim"), posterior)
        self.remedies: nn.ModuleList = nn.ModuleList(create_remedy(spec, **context) for spec in cfg.remedies)
        self.prior_transforms: nn.ModuleList = nn.ModuleList(
            create_remedy(spec, **context) for spec in cfg.remedies if spec.get("name") in prior_remedies)

    @functools.cached_property
    def schedule(self) -> Any:
        """beta(step), built where first read: a model loaded to sample or score never reads it, and so loads
        without the plugin that registered its run's KL schedule (a run checks the schedule before it starts)."""
        return create_schedule(self.kl_schedule)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (``torch.save(model)``) without the built schedule, a closure that pickle cannot take: read
        again, it is built again from ``kl_schedule``."""
        state = dict(super().__getstate__())
        state.pop("schedule", None)
        return state

    def beta(self, step: int) -> float:
        return self.schedule(step)

    def corrupt_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Decoder inputs [B, T] after every remedy's corruption (word dropout, noising); the
        model calls it in training only."""
        for remedy in self.remedies:
            inputs = remedy.corrupt_inputs(inputs)
        return inputs

    def transform_posterior(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters after every remedy's transform (BN-VAE, delta-VAE), in order."""
        for remedy in self.remedies:
            mu, logvar = remedy.transform_posterior(mu, logvar)
        return mu, logvar

    def transform_prior(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A conditional prior's parameters after its own instance of each of ``prior_remedies``, in order."""
        for remedy in self.prior_transforms:
            mu, logvar = remedy.transform_posterior(mu, logvar)
        return mu, logvar

    def posterior_remedies(self) -> list[nn.Module]:
        """The remedies that transform the posterior: part of the inference network (their
        parameters, BN-VAE's shift, train with it)."""
        return [r for r in self.remedies if transforms_posterior(type(r))]

    def decoder_latent(self, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        """The latent [B, D] the decoder reads at training step ``step``, after every remedy's choice
        (the auxiliary autoencoder's); the model calls it in training only."""
        for remedy in self.remedies:
            z = remedy.decoder_latent(z, h, step)
        return z

    def extra_losses(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor,
                     step: int) -> dict[str, torch.Tensor]:
        """Each remedy's added per-sentence loss [B] (bag-of-words, Z-forcing, ...) at training step
        ``step``, by the remedy's registered name."""
        extras = {}
        for remedy in self.remedies:
            extra = remedy.extra_loss(model, batch, z, h, step)
            if extra is not None:
                extras[remedy.name] = per_sentence_term(extra, z.shape[0], remedy.name, "extra_loss")
        return extras

    def forward(self, rec: torch.Tensor, kl: torch.Tensor, step: int,
                extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """rec [B], kl [B, D], extras name -> [B]; returns (loss, terms for logging)."""
        beta = self.beta(step)
        kl_term = None
        for remedy in self.remedies:
            if remedy.replaces_kl:
                kl_term = per_sentence_term(remedy.kl_term(kl, beta, step), kl.shape[0], remedy.name, "kl_term")
        if kl_term is None:
            kl_term = beta * kl.sum(-1)
        per_sentence = rec + kl_term
        for value in extras.values():
            per_sentence = per_sentence + value
        terms = {"beta": torch.tensor(beta), "kl_term": kl_term.detach().mean()}
        terms.update({name: value.detach().mean() for name, value in extras.items()})
        return per_sentence.mean(), terms


def per_sentence_term(value: Optional[torch.Tensor], batch_size: int, remedy: str, hook: str) -> Optional[torch.Tensor]:
    """A remedy's per-sentence term [B] as its hook returned it, or an error naming the remedy: a scalar would
    broadcast over the batch, its weight silently multiplied by B in the sum the loss is the mean of."""
    if value is not None and (not isinstance(value, torch.Tensor) or tuple(value.shape) != (batch_size,)):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TextVAEError(f"remedy {remedy!r}: {hook} gave {shape}, not the per-sentence [B] = [{batch_size}]")
    return value
