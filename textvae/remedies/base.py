"""Remedies for posterior collapse as small components, each overriding only the hook(s) its paper changes.

:class:`~textvae.objective.Objective` calls every configured remedy at each model hook (the models call only the
objective's hooks), and the training loop calls the training-procedure hooks, so remedies compose by
configuration.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, ClassVar, Iterable, Iterator, Optional, Protocol

import torch
from torch import nn

from textvae.config import CONDITIONAL_PRIOR, Range
from textvae.errors import TextVAEError
from textvae.models.posteriors import POSTERIORS
from textvae.registry import Registry

REMEDIES: Registry = Registry("remedy", recipe="objective.remedies: [{name: NAME, PARAMETER: VALUE}, ...]",
                              supplied=("latent_dim", "vocab_size", "hidden_dim", "emb_dim", "encoder_dim",
                                        "condition_dim"))


def register_remedy(name: str):
    """Register a remedy class under ``name``, which becomes its ``name`` (the first one, for a class
    registered under several); a class whose hooks would do nothing is refused (:func:`check_hooks`)."""
    register = REMEDIES.register(name)

    def named(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Remedy)):  # its hooks would be missing at the first step
            raise TypeError(f"remedy {name!r}: register_remedy takes a subclass of Remedy, got {cls!r}")
        check_hooks(name, cls)
        cls.name = cls.__dict__.get("name") or name
        return register(cls)
    return named


def check_hooks(name: str, cls: type) -> None:
    """A remedy class whose hooks would silently do nothing, refused as it registers: one that overrides no hook
    (a misspelt one is a method nobody calls), or a ``kl_term`` and ``replaces_kl`` without each other (the
    objective calls ``kl_term`` only of a remedy that replaces the KL term). A misspelt hook beside a hook spelt
    right is not caught: a method of its own may have any name."""
    overridden = [hook for hook in HOOKS if getattr(cls, hook) is not getattr(Remedy, hook)]
    if not overridden:
        own = [m for m in vars(cls) if not m.startswith("_") and callable(vars(cls)[m])]
        near = [f"{m} (did you mean {close[0]}?)" for m in own if (close := difflib.get_close_matches(m, HOOKS, 1))]
        raise TypeError(f"remedy {name!r}: {cls.__name__} overrides none of Remedy's hooks"
                        f"{': ' + ', '.join(near) if near else ''}; the hooks are {', '.join(HOOKS)}")
    if cls.replaces_kl != ("kl_term" in overridden):
        raise TypeError(f"remedy {name!r}: {cls.__name__} " + (
            "sets replaces_kl but overrides no kl_term, so its KL term would be the default beta * sum_d KL"
            if cls.replaces_kl else "overrides kl_term without replaces_kl = True, and the objective calls "
                                    "kl_term only of the remedy that replaces the KL term"))


def list_remedies() -> list[str]:
    return REMEDIES.names()


class Trainer(Protocol):
    """What the training-procedure hooks may use of the training loop.

    ``step`` counts optimiser steps taken so far (the step the next update gets); ``optimizer``
    holds every trainable parameter of ``model``; a parameter whose ``grad`` is ``None`` is left
    untouched by ``optimizer.step()`` (true of SGD and Adam); a hook restricts the loop's own update
    to a subset of the parameters with ``drop_gradients``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int

    def random_batch(self) -> Any:
        """A uniformly drawn training batch (torch's global RNG), on the model's device."""

    def forward(self, batch: Any) -> Any:
        """The model's output on ``batch`` at the current step, run as the loop runs its own forward
        (its precision, its working copies), so a hook's own updates run as the loop's do; the
        backward pass is the hook's."""

    def clip_gradients(self) -> None:
        """Apply the run's gradient clipping to the current gradients."""

    def optimizer_step(self) -> None:
        """``optimizer.step()`` as the loop takes it (with the update of its working copies)."""

    def drop_gradients(self, params: list[nn.Parameter]) -> None:
        """The coming ``optimizer.step()`` leaves ``params`` untouched (their gradients are dropped,
        wherever the loop keeps them: see :mod:`textvae.training.working_copies`)."""

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the inference network q(z|x) (the model's ``inference_parameters()``)."""

    def reinit_decoder(self) -> None:
        """Fresh decoder weights and optimiser state (the model's ``reinit_decoder``); model selection
        restarts too (best validation loss forgotten): earlier checkpoints had another objective."""


class Remedy(nn.Module):
    """Base class. Model hooks, in the order a training step meets them:

    * ``corrupt_inputs(inputs [B, T]) -> [B, T]``: decoder inputs, training only (word dropout).
    * ``transform_posterior(mu, logvar) -> (mu, logvar)``: posterior parameters (BN-VAE, delta-VAE).
    * ``extra_loss(model, batch, z [B, D], h [B, H], step) -> [B] | None``: an added per-sentence loss
      (bag-of-words, Z-forcing, auxiliary autoencoder); ``step``: the training step the model's forward
      was given (aggressive training's inner steps included).
    * ``decoder_latent(z [B, D], h [B, H], step) -> [B, D]``: the latent the decoder reads in training
      (the auxiliary autoencoder's mix of its code and z); z itself by default.
    * ``kl_term(kl [B, D], beta, step) -> [B] | None``: replaces the default ``beta * Σ_d KL``
      (free bits, KL constraint); at most one remedy may set ``replaces_kl``. The batch mean of
      the returned per-sentence values is the loss, so batch-level rules (free bits over the
      minibatch) return values whose mean has the right value and gradient.

    Training-procedure hooks, called by the training loop with a :class:`Trainer`:

    * ``set_corpus_statistics(unigram [V])``: once before training, the word counts of the
      training split (unigram noising).
    * ``before_update(trainer, batch)``: before the forward pass of each optimiser step
      (aggressive inference-network training runs its inner encoder steps here).
    * ``before_step(trainer)``: after backward and clipping, just before ``optimizer.step()``;
      ``trainer.drop_gradients(params)`` keeps parameters out of this update (setting their ``.grad``
      to None would not reach the bf16 working copies' update).
    * ``after_epoch(trainer, epoch, valid_metrics) -> dict``: after each epoch's validation
      (``epoch`` = epochs completed); returns figures to log (empty when there is nothing to say).
    """

    replaces_kl = False
    # bounds of the recipe's parameters (name -> Range), checked with their types before the remedy is built
    RANGES: ClassVar[dict[str, Range]] = {}
    # False for remedies that only corrupt the decoder's inputs, which a language model
    # (model.latent_dim 0) has as well; the rest act on z, q(z|x) or the KL and need a latent.
    needs_latent = True
    # True for a remedy whose KL term is a constant for a phase, so the prior's parameters leave the
    # loss's graph (data-parallel training must then look for unused parameters)
    drops_kl_term = False
    # Names of buffers that record where the training procedure stands (a mode switched off for
    # good), not what the model is: a checkpoint (``--resume``) restores them, but the plateau
    # schedule's best-model reload must not roll them back to the best epoch's values
    # (:func:`keep_procedure_state`).
    procedure_buffers: tuple[str, ...] = ()
    # True for a remedy whose guarantee is a bound against the fixed N(0, I) prior (delta-VAE's
    # committed rate): a learned prior can follow the constrained posterior and void it
    needs_standard_prior = False
    # True for a remedy that acts on how the posterior means spread over a batch (BN-VAE's normalisation),
    # which He et al.'s U(-0.01, 0.01) encoder init starts below its eps: a run warns under that init
    needs_spread_means = False
    # The name a recipe calls it by (set by :func:`register_remedy`): the key of its logged terms and errors
    name = ""

    def corrupt_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs

    def transform_posterior(self, mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mu, logvar

    def decoder_latent(self, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        return z

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> Optional[torch.Tensor]:
        return None

    def extra_loss(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor,
                   step: int) -> Optional[torch.Tensor]:
        return None

    def set_corpus_statistics(self, unigram: torch.Tensor) -> None:
        return None

    def before_update(self, trainer: Trainer, batch: Any) -> None:
        return None

    def before_step(self, trainer: Trainer) -> None:
        return None

    def after_epoch(self, trainer: Trainer, epoch: int, valid_metrics: dict[str, float]) -> dict[str, float]:
        return {}


# every hook a remedy may override: the methods Remedy defines
HOOKS = tuple(m for m, v in vars(Remedy).items() if callable(v) and not m.startswith("_"))


@contextlib.contextmanager
def keep_procedure_state(remedies: Iterable[Remedy]) -> Iterator[None]:
    """Leave the remedies' ``procedure_buffers`` as they are across what the block loads into the
    model (the best model's weights): in the published code such state lives in variables of
    the training script, which a reload of the saved model never touches."""
    saved = [(r, name, getattr(r, name).detach().clone()) for r in remedies for name in r.procedure_buffers]
    yield
    with torch.no_grad():
        for remedy, name, value in saved:
            getattr(remedy, name).copy_(value)


def check_remedy(spec: Any) -> None:
    """A recipe's remedy entry ``{"name": ..., **params}`` checked as :func:`create_remedy` would, without
    the model facts it needs: before a run loads its data."""
    if not isinstance(spec, dict) or spec.get("name") is None:
        raise TextVAEError(f"a remedy is {{name: NAME, PARAMETER: VALUE, ...}}, got {spec!r}; valid names: "
                           f"{', '.join(list_remedies())}")
    REMEDIES.check(spec["name"], {k: v for k, v in spec.items() if k != "name"})


def transforms_posterior(remedy_class: type) -> bool:
    """Whether a remedy changes the posterior's parameters (BN-VAE, delta-VAE)."""
    return remedy_class.transform_posterior is not Remedy.transform_posterior


STANDARD_PRIOR = "standard_normal"


def check_remedies(specs: list[Any], latent_dim: Optional[int] = None, posterior: str = "gaussian",
                   prior: str = STANDARD_PRIOR) -> None:
    """The rules for combining remedies, in one place (before a run loads its data, when the
    objective is built, and for the remedy a collapsed run's epilogue suggests):

    * each entry a registered name with valid parameters (:func:`check_remedy`), listed once;
    * at most one remedy replaces the KL term;
    * none that acts on z in a language model (``latent_dim`` 0);
    * posterior transforms only on a posterior whose head declares ``gaussian_parameters`` (vMF has no
      variance, IAF's base is not z);
    * a remedy bounded against N(0, I) only with that prior (``prior``: a ``PRIORS`` name, or
      ``conditional`` for the CVAE's learned p(z|c)).
    """
    for spec in specs:
        check_remedy(spec)
    names = [spec["name"] for spec in specs]
    classes = [REMEDIES.get(name) for name in names]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # their losses and logged terms are keyed by name: one would silently replace the other
        raise TextVAEError(f"remedies {twice} are listed more than once in objective.remedies; list each once")
    kl_owners = [n for n, c in zip(names, classes) if c.replaces_kl]
    if len(kl_owners) > 1:
        raise TextVAEError(f"remedies {kl_owners} each replace the KL term; choose one")
    latent = [n for n, c in zip(names, classes) if c.needs_latent]
    if latent_dim == 0 and latent:
        raise TextVAEError(f"remedy {latent[0]!r} acts on the latent z, but model.latent_dim 0 is the language "
                           f"model, which has none; set model.latent_dim >= 1 or drop the remedy",
                           "objective.remedies", "model.latent_dim")
    transforms = [n for n, c in zip(names, classes) if transforms_posterior(c)]
    # (a misspelt posterior is the model's check's to name)
    if transforms and posterior in POSTERIORS and not getattr(POSTERIORS.get(posterior), "gaussian_parameters", False):
        raise TextVAEError(f"remedies {transforms} transform a Gaussian posterior's mean and variance, which "
                           f"model.posterior {posterior!r} does not have as such; use posterior: gaussian",
                           "objective.remedies", "model.posterior")
    bounded = [n for n, c in zip(names, classes) if c.needs_standard_prior]
    if bounded and prior == CONDITIONAL_PRIOR:  # the CVAE has no prior setting to change
        raise TextVAEError(f"remedy {bounded[0]!r} bounds the KL against the fixed N(0, I) prior, and the dialogue "
                           f"CVAE's prior is its learned p(z|c); the remedy does not combine with this model",
                           "objective.remedies")
    if bounded and prior != STANDARD_PRIOR:
        raise TextVAEError(f"remedy {bounded[0]!r} bounds the KL against the fixed N(0, I) prior, which prior "
                           f"{prior!r} is not (a learned prior can follow the constrained posterior); use "
                           f"model.prior: {STANDARD_PRIOR}", "objective.remedies", "model.prior")


def combines(specs: list[Any], **family: Any) -> bool:
    """Whether :func:`check_remedies` accepts ``specs`` with the model's ``family`` (latent_dim,
    posterior, prior)."""
    try:
        check_remedies(specs, **family)
    except TextVAEError:
        return False
    return True


def create_remedy(spec: dict[str, Any], **context: Any) -> Remedy:
    """Build a remedy from ``{"name": ..., **params}``.

    ``context`` holds model facts some remedies need (``REMEDIES.supplied``: ``latent_dim``, ``vocab_size``,
    ``hidden_dim``, ``emb_dim``, ``encoder_dim``, ``condition_dim``); a remedy receives only the context
    arguments its constructor names.
    """
    check_remedies([spec], context.get("latent_dim"))
    params = dict(spec)
    return REMEDIES.build(params.pop("name"), params, **context)
