"""The training loop of every task, read top to bottom from :func:`run_training`.

    textvae train recipes/ptb/vae.yaml [--overrides] [--resume]
    torchrun --nproc_per_node 4 -m textvae.cli train recipes/ptb/vae.yaml     # data-parallel

One pass: the task (:class:`~textvae.training.task.Task`: sentences, dialogue, ...) gives data and
a model whose forward returns the loss; build the optimiser; restore a checkpoint if resuming
(:func:`start_run`); then epochs of steps (:func:`train_epoch`, :func:`train_step`); each epoch
ends with the task's validation at beta = 1, the plateau lr decay with best-model reload (He et al.
2019), and a checkpoint (:func:`end_epoch`); last, the task's test report (:func:`finish_run`). The
learning rate of each step comes from a ``step -> lr`` schedule (:mod:`textvae.schedules`). Remedies that change the procedure
(aggressive encoder updates, encoder pretraining) act through the hooks of
:class:`~textvae.remedies.Remedy`; figures reported to the user come from ``textvae.metrics``.
Under ``torchrun`` the same loop runs data-parallel (:mod:`textvae.training.distributed`).

Never losing work:

* A checkpoint (model, optimiser, every rank's RNG, loop position, the log's length) is written
  atomically at step 0, every ``train.checkpoint_every`` steps and at each epoch end. ``--resume``
  continues from it exactly: the batch plan is a function of (seed, epoch) resumed at the saved
  batch, the RNG streams are restored, and ``metrics.jsonl`` is cut back to the checkpoint, so a
  run killed at any moment ends with the parameters, best model and log of an uninterrupted one.
* SIGINT (Ctrl-C) or SIGTERM stops training after the current step with a checkpoint of that step
  (:mod:`textvae.training.signals`); a second Ctrl-C stops at once.
* A non-finite loss or gradient stops training before the update, naming the term that went
  non-finite and the step; the last checkpoint is kept and the message gives the command that
  resumes it with a lower learning rate (``--resume`` applies a changed ``--optim.lr``).
* A new run that any other error ends before its first step has trained nothing: its step-0
  checkpoint is removed, so the same command starts it again once the cause is mended.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from textvae.config import (INCIDENTAL_KEYS, OptimConfig, RunConfig, TrainConfig, check_ranges, is_report_setting,
                            read_run_config, setting_changes, settings_now)
from textvae.data.batch import Batch
from textvae.data.batching import padding_fraction
from textvae.errors import TextVAEError, about
from textvae.files import check_writable, run_folder_lock
from textvae.metrics import IWProgress, evaluate_model
from textvae.models.decoders import Dropout
from textvae.models.native import KERNELS, native_kernels, native_status
from textvae.models.sampled_softmax import SampledSoftmax
from textvae.models.textvae import VAEOutput
from textvae.plugins import loaded_plugins
from textvae.reduction import token_counts
from textvae.registry import Registry, part_modules
from textvae.remedies import Remedy, check_remedies, keep_procedure_state
from textvae.schedules import LR_SCHEDULES, create_lr_schedule, create_schedule
from textvae.rng import rng_state
from textvae.training.checkpoint import (Checkpoint, read_checkpoint, read_checkpoint_meta, restore_checkpoint,
                                         save_checkpoint)
from textvae.training.denormals import denormal_mode, denormals_flushed
from textvae.training.distributed import World, parameters_may_go_unused, rank_seed
from textvae.training.logger import RunLogger, final_report, read_jsonl
from textvae.training.progress import SmoothedLoss
from textvae.training.signals import StopRequested, stop_at_once, stop_on_signals, stop_requested
from textvae.training.task import Task
from textvae.training.working_copies import WorkingCopies, clip_scale, working_copies_for

CHECKPOINT = "checkpoint.safetensors"
IW_PROGRESS_FILE = "test_iw_progress.safetensors"  # the test report's finished IW batches, while it runs
EVAL_SEED = 1234  # evaluation draws its own random numbers so it never shifts the training stream

log = logging.getLogger("textvae.train")


@dataclasses.dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue exactly.

    ``done``: the plateau schedule has used up its decays (``max_steps`` and ``epochs`` are read
    from the configuration, so a resumed run may be given more of either). ``validated_step``: the step of
    the last validation (-1: none, or a checkpoint written before textvae recorded it).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    lr: float = 0.0
    best_val: float = math.inf
    bad_epochs: int = 0
    decays: int = 0
    done: bool = False
    train_seconds: float = 0.0
    train_tokens: int = 0
    validated_step: int = -1

    @classmethod
    def from_meta(cls, loop: dict[str, Any]) -> "LoopState":
        """The state a checkpoint's ``loop`` holds; a one-line error for one written by a newer textvae."""
        unknown = sorted(set(loop) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TextVAEError(f"a checkpoint written by a newer textvae (its loop state has {', '.join(unknown)}); "
                               f"resume or read it with that version")
        return cls(**loop)

    def end_pass(self, started: float, tokens_before: int, n_batches: int) -> tuple[float, bool]:
        """Close a pass over (the rest of) an epoch begun at ``time.perf_counter()`` = ``started``
        with ``tokens_before`` training tokens: add its time, and move to the next epoch when all
        ``n_batches`` are done. Returns (training tokens/s of the pass, epoch complete)."""
        elapsed = time.perf_counter() - started
        self.train_seconds += elapsed
        tok_s = (self.train_tokens - tokens_before) / max(elapsed, 1e-9)
        complete = self.batch_in_epoch >= n_batches
        if complete:
            self.epoch += 1
            self.batch_in_epoch = 0
        return tok_s, complete


def budgets_used_up(state: LoopState, tc: TrainConfig) -> list[str]:
    """The step and epoch budgets ``state`` has used up, by their settings' names. ``train.max_seconds`` is
    not among them: its clock is each rank's own, so the loop's ``out_of_time`` says it for all ranks at once."""
    return [name for name, reached in (("train.epochs", state.epoch >= tc.epochs),
                                       ("train.max_steps", tc.max_steps is not None and state.step >= tc.max_steps))
            if reached]


def spent_budgets(state: LoopState, tc: TrainConfig, out_of_time: bool = False) -> list[str]:
    """Every budget of ``tc`` that ``state`` has used up, ``train.max_seconds`` by its recorded training time (or
    ``out_of_time``: the loop's verdict, any rank's clock)."""
    timed_out = out_of_time or (tc.max_seconds is not None and state.train_seconds >= tc.max_seconds)
    return budgets_used_up(state, tc) + (["train.max_seconds"] if timed_out else [])


def stop_reason(state: LoopState, tc: TrainConfig, out_of_time: bool = False) -> str:
    """Why a run stopped training where ``state`` is: its plateau schedule, or the budgets it used up."""
    if state.done:
        return f"its plateau schedule ended ({state.decays} lr decays)"
    spent = spent_budgets(state, tc, out_of_time)
    return f"{' and '.join(spent)} reached" if spent else "stopped on request"


def validated_here(state: LoopState, log: Path) -> bool:
    """Whether the run was validated at its checkpoint's position (``state``): by ``state.validated_step``,
    or, in a checkpoint that does not record it, by a validation record at its step in its ``log`` (its
    metrics.jsonl, read only then)."""
    if state.validated_step >= 0:
        return state.validated_step == state.step
    return any(r.get("split") == "valid" and r.get("step") == state.step for r in read_jsonl(log))


def validated_at_start(run: "Run") -> bool:
    """:func:`validated_here` for the run as it (re)starts, rank 0's answer on every rank (its log, where the
    checkpoint does not say)."""
    mine = run.world.is_main and validated_here(run.state, run.run_dir / "metrics.jsonl")
    return bool(run.world.any(torch.tensor([mine], device=run.device))[0])


def budget_verdict(state: LoopState, saved: dict[str, Any], tc: TrainConfig, validated: bool) -> str:
    """What the budget of ``tc`` makes of a run at ``state`` (its checkpoint's), trained under the budget of
    ``saved`` (its train settings as JSON values; a step or time budget of None is unbounded), ``validated``
    at that position (:func:`validated_here`) or not:

    * ``past``: it trained beyond a budget that ``tc`` lowers, so under ``tc`` it would have stopped
      earlier and be another run;
    * ``stops``: it stops where it is (its plateau schedule ended, or a budget of ``tc`` is used up);
    * ``trains``: ``tc`` trains it on, as ``train --resume`` with ``tc``'s budget does, to the run that
      ``tc`` makes from its start;
    * ``mid_epoch``: ``tc`` would train on a run that its step or time budget stopped within an epoch,
      where it was validated (its lr schedule and best model updated) as a run of ``tc`` is not: finished,
      or stopped in its test report. (A run a signal stopped there was not validated, and trains on as the
      run of ``tc``; one that a budget stopped at an epoch's end was validated, as every run is.)
    """
    def lowered(key: str) -> bool:
        new, old = getattr(tc, key), saved.get(key)
        return new is not None and (old is None or new < old)

    if budgets_passed(state, tc, lowered, ("epochs", "max_steps", "max_seconds")):
        return "past"
    if state.done or spent_budgets(state, tc):
        return "stops"
    return "mid_epoch" if validated and state.batch_in_epoch > 0 else "trains"


def budgets_passed(state: LoopState, tc: TrainConfig, lowered: Callable[[str], bool], keys: tuple[str, ...]
                   ) -> list[tuple[str, Any, Any]]:
    """``(train.KEY, the budget, where the run is)`` for each budget of ``tc`` among ``keys`` (``epochs``,
    ``max_steps``, ``max_seconds``) that ``lowered`` says was lowered and that the run at ``state`` is past. An
    epoch budget is used up at an epoch's end: part of the next one is past it."""
    at = {"epochs": state.epoch + (state.batch_in_epoch > 0), "max_steps": state.step,
          "max_seconds": state.train_seconds}
    return [(f"train.{key}", getattr(tc, key), at[key]) for key in keys if lowered(key) and at[key] > getattr(tc, key)]


def selection_loss(figures: dict[str, float], kl_weight: float) -> float:
    """The validation loss that selects the best model and drives the lr decays: rec + w KL
    = -ELBO - (1 - w) KL, w = ``optim.plateau_kl_weight`` (a language model's figures have no KL)."""
    return figures["neg_elbo"] - (1.0 - kl_weight) * figures.get("kl", 0.0)


def plateau_update(state: LoopState, val_loss: float, epoch_complete: bool, oc: OptimConfig,
                   save_best: Callable[[], Any], reload_best: Callable[[], Any]) -> tuple[bool, bool]:
    """He et al. (2019)'s schedule after one validation; returns (improved, decayed).

    A better ``val_loss`` is kept (``save_best``). Only a complete epoch counts as a bad one (the
    partial epoch that ``max_steps`` ends does not); after ``decay_patience`` bad epochs, from epoch
    ``decay_start_epoch`` on, lr <- lr * ``decay_factor`` and the best model is reloaded
    (``reload_best``, when ``reload_best_on_decay``); the run is done after ``max_decays`` decays.
    A decay needs a new optimiser at ``state.lr``: the caller builds it.
    """
    improved = val_loss < state.best_val
    if improved:
        state.best_val, state.bad_epochs = val_loss, 0
        save_best()
    if not epoch_complete or improved:
        return improved, False
    state.bad_epochs += 1
    if state.epoch < oc.decay_start_epoch or state.bad_epochs < oc.decay_patience:
        return improved, False
    if state.decays >= oc.max_decays:  # max_decays 0: the first plateau ends the run, without a decay
        state.done = True
        return improved, False
    state.lr *= oc.decay_factor
    state.decays += 1
    state.bad_epochs = 0
    if oc.reload_best_on_decay:
        reload_best()
    state.done = state.decays >= oc.max_decays
    return improved, True


# optim.name -> (parameters, lr, OptimConfig) -> optimiser
OPTIMIZERS: Registry = Registry("optimizer", recipe="optim.name: NAME (its settings are the optim section's)",
                                supplied=("params", "lr", "cfg"))


@OPTIMIZERS.register("sgd")
def sgd(params: list[nn.Parameter], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Stochastic gradient descent (the papers' optimiser for PTB): optim.momentum, optim.weight_decay."""
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: list[nn.Parameter], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015): optim.betas, optim.weight_decay. torch's fused kernel: one pass over
    each parameter and its moments instead of about seven elementwise ones (the embeddings and the
    output layer are dense and large, so on a CPU those passes cost a large share of a step); the same
    update up to rounding (``benchmarks/throughput.py``)."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True)


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """The registered optimiser ``cfg.name`` over the model's trainable parameters, at ``lr``."""
    return OPTIMIZERS.create(cfg.name, [p for p in model.parameters() if p.requires_grad], lr, cfg)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """The device ``name`` (``auto``: a GPU where there is one) names, or a one-line error before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TextVAEError(f"unknown {setting} {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TextVAEError(f"{setting} {name!r}: CUDA is not available on this machine")
    return device


# The validation draw (0, or the epoch under ``train.valid_redraw``) in force while the loop
# evaluates: tasks seed their own evaluation streams (a generator, or a nested
# :func:`evaluation_rng`) from :func:`eval_seed`, so the loop sets it for them instead of every
# task taking it as an argument.
_EVAL_DRAW: contextvars.ContextVar[int] = contextvars.ContextVar("eval_draw", default=0)


def eval_seed() -> int:
    """The seed of evaluation's random stream: ``EVAL_SEED``, plus the epoch while the loop runs a
    ``train.valid_redraw`` validation."""
    return EVAL_SEED + _EVAL_DRAW.get()


@contextlib.contextmanager
def evaluation_rng(device: torch.device, draw: Optional[int] = None) -> Iterator[None]:
    """Evaluation draws from its own stream (seed :func:`eval_seed`) and leaves the training RNG as
    it was. ``draw`` (the loop's validation) sets the draw for every stream seeded inside."""
    token = None if draw is None else _EVAL_DRAW.set(draw)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(eval_seed())
            yield
    finally:
        if token is not None:
            _EVAL_DRAW.reset(token)


def evaluation(model: nn.Module, batches: Callable[[], Iterator[Batch]], device: torch.device,
               **kwargs: Any) -> dict[str, float]:
    """Metrics on a split with a fixed random stream, leaving the training RNG untouched."""
    with evaluation_rng(device):
        return evaluate_model(model, lambda: (b.to(device) for b in batches()), **kwargs)


class LoopTrainer:
    """The :class:`textvae.remedies.Trainer` view of a :class:`Run` that procedure remedies act through."""

    def __init__(self, run: "Run"):
        self.run = run
        self.scale = 1.0  # the last clip's factor, for the working copies' update

    @property
    def model(self) -> nn.Module:
        return self.run.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.run.optimizer

    @property
    def step(self) -> int:
        return self.run.state.step

    def random_batch(self) -> Any:
        """A uniformly drawn training batch, from torch's global RNG (so resuming replays it)."""
        run = self.run
        plan = run.train_split.sampler(run.cfg.data.batch_size, shuffle=False).epoch_batches(0)
        return run.train_split.batch(plan[int(torch.randint(len(plan), ()))]).to(run.device)

    def forward(self, batch: Batch) -> VAEOutput:
        """The model's output at the current step, in the run's precision, through the working copies
        where the loop keeps them; the backward pass goes outside."""
        with self.forward_precision():
            return model_output(self.run.model, self.run.working, batch, self.step)

    def clip_gradients(self) -> None:
        """Clip as the loop does (``optim.clip``); a non-finite gradient in a remedy's own update (aggressive
        training's encoder steps) stops the run before that update, as the loop does before its own."""
        clip = self.run.cfg.optim.clip
        norm = clip_gradients(self.model, clip if clip > 0 else math.inf, self.run.working)
        if not torch.isfinite(norm):
            stop_nonfinite(self.run, ["update"], inner=True)
        self.scale = clip_scale(float(norm), clip) if clip > 0 else 1.0

    def optimizer_step(self) -> None:
        optimizer_step(self.run, self.scale)
        self.scale = 1.0

    def drop_gradients(self, params: list[torch.nn.Parameter]) -> None:
        for p in params:
            p.grad = None
        if self.run.working is not None:
            self.run.working.drop(params)

    def forward_precision(self) -> torch.autocast:
        return precision_autocast(self.run.device, self.run.cfg.train.precision)

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.inference_parameters()

    def reinit_decoder(self) -> None:
        self.model.reinit_decoder(self.optimizer)
        self.run.state.best_val, self.run.state.bad_epochs = math.inf, 0


class TrainStep(nn.Module):
    """What DDP wraps: the model's forward with only the weighted loss left in the autograd graph.

    Returns (weight · loss, the output with every tensor detached). DDP looks for parameters in
    the graph of every tensor of the output; detaching the figures that are only logged makes
    that graph exactly the loss's, so unused parameters are recognised as such.
    """

    def __init__(self, model: nn.Module, working: Optional[WorkingCopies] = None):
        super().__init__()
        self.model, self.working = model, working

    def forward(self, batch: Batch, step: int, weight: float) -> tuple[torch.Tensor, VAEOutput]:
        out = model_output(self.model, self.working, batch, step)
        figures = VAEOutput(rec=out.rec.detach(), kl=out.kl.detach(), n_tokens=out.n_tokens,
                            loss=out.loss.detach(), terms={k: v.detach() for k, v in out.terms.items()})
        return out.loss * weight, figures


def model_output(model: nn.Module, working: Optional[WorkingCopies], batch: Batch, step: int) -> VAEOutput:
    """``model(batch, step=step)``, through the bf16 working copies when the run keeps them."""
    return model(batch, step=step) if working is None else working(model, batch, step=step)


def optimizer_step(run: "Run", scale: float) -> None:
    """The optimiser's step and the working copies' update, at the clip's ``scale``."""
    run.optimizer.step()
    if run.working is not None:
        run.working.step(run.optimizer, scale)


def describe_nonfinite(name: str, remedies: list[Remedy]) -> str:
    """What a figure of :func:`nonfinite_figures` is, for the user."""
    known = {"rec": "reconstruction term (rec)", "kl": "KL term (kl)",
             "kl_term": "weighted KL term (kl_term: beta * KL, or the remedy's replacement)",
             "loss": "total loss (every term finite: the sum overflowed)",
             "gradient": "gradient norm (the loss was finite)", "update": "loss or gradient"}
    if name in known:
        return known[name]
    return f"extra loss of remedy {name!r}" if any(r.name == name for r in remedies) else f"term {name!r}"


def clip_gradients(model: nn.Module, max_norm: float, working: Optional[WorkingCopies] = None) -> torch.Tensor:
    """``clip_grad_norm_`` that skips the scaling pass when it would multiply by exactly 1, and
    takes sparse gradients (``train.sparse_gradients``). The bf16 gradients of ``working`` copies
    count in the norm (each normed in fp32) but are not scaled: their update applies the scale.

    Same result bit for bit on dense gradients: torch scales every gradient by
    min(1, max_norm / (norm + 1e-6)), a memory-bound pass over all of them even when the factor
    is 1. A sparse gradient is coalesced first (an embedding's backward
    holds one row per occurrence of a word; the norm needs each row's sum). Returns the total
    norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    norm = torch.nn.utils.get_total_norm([p.grad._values() if p.grad.is_sparse else p.grad for p in params])
    copied = None if working is None else working.gradient_norm()
    if copied is not None:
        norm = torch.linalg.vector_norm(torch.stack([norm, copied.to(norm.device)]))
    if norm + 1e-6 > max_norm:  # one host sync; the non-finite check syncs every step anyway
        torch.nn.utils.clip_grads_with_norm_([p for p in params if not p.grad.is_sparse], max_norm, norm)
        scale = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad.is_sparse:  # the values in place: the gradient stays coalesced, so SGD's add skips a sort
                p.grad._values().mul_(scale)
    return norm


def sparse_gradients_apply(cfg: RunConfig, world: World, device: torch.device) -> bool:
    """Whether ``train.sparse_gradients`` takes effect: only where a sparse gradient gives the
    same update as its dense form -- plain SGD (momentum 0, weight decay 0: an untouched row
    does not move) in one process (DDP all-reduces dense buckets) -- and on the CPU, where it
    pays: on a GPU the dense update of the whole table is the faster (benchmarks/gpu_ptb.py)."""
    return cfg.train.sparse_gradients and cfg.optim.plain_sgd and world.size == 1 and device.type == "cpu"


def nonfinite_figures(out: VAEOutput, grad_norm: torch.Tensor, world: World) -> list[str]:
    """Names of the figures of this step that are NaN or infinite on any rank: rec, kl, the
    objective's terms (kl_term, each remedy's extra loss), loss, gradient -- in that order."""
    figures = {"rec": out.rec, "kl": out.kl, **{k: v for k, v in out.terms.items() if k != "beta"},
               "loss": out.loss, "gradient": grad_norm}
    flags = torch.stack([~torch.isfinite(v.detach().to(grad_norm.device)).all() for v in figures.values()])
    return [name for name, bad in zip(figures, world.any(flags).tolist()) if bad]


def effective_changes(saved: dict[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """:func:`~textvae.config.setting_changes` from a run's saved settings (JSON values, as ``settings_now``
    reads them) to ``cfg``'s, less the settings that change no figure (``INCIDENTAL_KEYS``: place, threads, ...)."""
    changes = setting_changes(type(cfg), saved, json.loads(json.dumps(cfg.to_dict())))
    return {k: v for k, v in changes.items() if k not in INCIDENTAL_KEYS}


def check_run_dir(run_dir: Path, resume: bool) -> None:
    ckpt = run_dir / CHECKPOINT
    if resume and not ckpt.is_file():
        raise TextVAEError(f"--resume: no checkpoint in {run_dir}; start the run without --resume")
    if not resume and ckpt.is_file():
        raise TextVAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --name")
    check_writable(run_dir)


def check_config(cfg: RunConfig) -> None:
    """One-line errors for settings out of range or unknown (before any work is done)."""
    tc, oc = cfg.train, cfg.optim
    check_ranges(cfg)
    if Path(cfg.name).name in ("", ".", ".."):  # the run's folder would be out_dir itself, or above it
        raise TextVAEError(f"name {cfg.name!r}: a run's name is its folder under out_dir; give a folder name")
    if tc.precision not in ("fp32", "bf16"):
        raise TextVAEError(f"unknown train.precision {tc.precision!r}; valid: fp32, bf16")
    # an unknown name, or a parameter it does not take: the registry's one-line error, listing the valid ones
    with about("optim.cycle_lr", "optim.cycle_lr_options"):
        LR_SCHEDULES.check(oc.cycle_lr, oc.cycle_lr_options, given=LR_SCHEDULES.positional(oc.cycle_lr, 2))
    with about("optim.name"):
        OPTIMIZERS.get(oc.name)
    # names, parameters and their types, and how they combine with each other and the model, before the data
    with about("objective.remedies"):  # a combination's error names the model setting it is also about
        check_remedies(cfg.objective.remedies, **cfg.model.latent_family())
    with about("objective.kl_schedule"):
        create_schedule(cfg.objective.kl_schedule)
    stepped = [n for n in LR_SCHEDULES.names() if LR_SCHEDULES.takes(n, "stairs")]
    if oc.cycle_lr_stairs and oc.cycle_lr not in stepped:  # the schedules whose factory takes stairs
        raise TextVAEError(f"optim.cycle_lr_stairs shapes the {' or '.join(stepped)} lr only; set optim.cycle_lr: "
                           f"{stepped[0]} (got {oc.cycle_lr!r}) or cycle_lr_stairs: 0")


def check_evaluated_splits(data: Any, latent: bool) -> None:
    """A one-line error before any step where a latent model's validation or test split holds fewer than 2
    examples, whose AU and MI it could not compute at the first epoch's end (a corpus of a few lines, split)."""
    small = [(name, len(data.splits[name])) for name in ("valid", "test") if len(data.splits[name]) < 2]
    if latent and small:
        raise TextVAEError(f"the {small[0][0]} split holds {small[0][1]} example(s): a latent model's figures (AU, MI) "
                           f"need at least 2 in the valid and test splits; give the corpus more lines")


def warn_about_settings(cfg: Any, n_train: int) -> None:
    """Warnings for settings that run but rarely do what was meant (every task)."""
    if cfg.data.batch_size > n_train:
        log.warning("data.batch_size %d is larger than the training split (%d): every epoch is one step of "
                    "%d; lower data.batch_size for more updates", cfg.data.batch_size, n_train, n_train)
    if cfg.train.epochs == 0:
        log.warning("train.epochs 0: no training step; the report describes the model as initialised")
    kl_schedule = cfg.objective.kl_schedule
    # (an lr schedule of one's own that follows cycles says so itself)
    if cfg.optim.cycle_lr == "cosine" and getattr(create_schedule(kl_schedule), "position", None) is None:
        log.warning("optim.cycle_lr cosine follows the cycles of a cyclical KL schedule, and objective.kl_schedule "
                    "%s has none: the lr stays the plateau schedule's", kl_schedule.get("name"))


def retain_freed_memory(retain: bool = True) -> bool:
    """Make glibc's malloc keep freed memory for reuse (``retain``), or go back to its defaults
    and give the kept memory back to the system; False where it cannot (not glibc).

    By default an allocation above a dynamic threshold (at most 32 MB) is a fresh ``mmap``, and
    freed memory at the heap top is trimmed: every step then page-faults its logits, softmax and
    gradient buffers (tens of MB) in again, one 4 kB page at a time. Raising both thresholds
    serves them from the heap, where the previous step left them. Process-wide; before the test
    report the loop gives training's kept memory back and retains the report's own (:func:`finish_run`).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    mmap_threshold, trim_threshold = -3, -1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    value = 2**31 - 1 if retain else 128 * 1024  # glibc's default for both is 128 kB
    applied = bool(mallopt(mmap_threshold, value)) and bool(mallopt(trim_threshold, value))
    if not retain:
        malloc_trim(0)
    return applied


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """Within the block, freed memory is kept for reuse (:func:`retain_freed_memory`); afterwards
    the defaults are back and the kept memory is given back."""
    retain_freed_memory()
    try:
        yield
    finally:
        retain_freed_memory(False)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16: on a GPU, torch's own answer; on a CPU, whether oneDNN
    has its bf16 primitives here (x86: AVX-512 BW/VL/DQ or newer; Arm: its BF16 extension). Elsewhere
    (AVX2 only, say) oneDNN creates no bf16 LSTM and emulates bf16 GEMMs at a few GFLOP/s."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private; absent: assume yes
    return device.type != "cpu" or probe is None or bool(probe())


def check_precision(device: torch.device, precision: str, setting: str = "train.precision") -> None:
    """A one-line error, before any work, for bf16 on a device without bfloat16 arithmetic (where it
    would fail deep in oneDNN, or run many times slower than fp32)."""
    if precision == "bf16" and not bf16_supported(device):
        where, hint = str(device), ""
        if device.type == "cpu":
            where, hint = f"this CPU ({torch.backends.cpu.get_cpu_capability()})", " (on x86 it needs AVX-512)"
        raise TextVAEError(f"{setting} bf16: {where} has no bfloat16 arithmetic{hint}; use {setting} fp32")


def precision_autocast(device: torch.device, precision: str) -> torch.autocast:
    """The forward passes of a ``train.precision`` (``bf16``: bfloat16 autocast over fp32 weights;
    ``fp32``: no autocast), for training, its hooks and evaluation alike."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_task(task: Task) -> None:
    """Everything a run of ``task`` checks before any work: its settings (:func:`check_config`), what its task
    needs (:meth:`Task.check`) and the data settings training would ignore (:meth:`Task.check_data`)."""
    check_config(task.cfg)
    task.check()
    task.check_data()


def run_training(task: Task, resume: bool = False, data: Any = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run ``out_dir/name`` of ``task``; returns the test
    report. ``data`` may be passed in when several runs share one loaded corpus (a study); it must
    be what ``task.cfg.data`` describes.

    Every rank of a ``torchrun`` launch calls this; each returns the same report.
    """
    cfg = task.cfg
    check_task(task)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.retain_memory:
        retain_freed_memory()
    world = World.from_environment()
    device = world.start(resolve_device(tc.device))
    check_precision(device, tc.precision)
    run_dir = Path(cfg.out_dir) / cfg.name
    done = world.on_main(lambda: finished_unchanged(run_dir, cfg)) if resume else None
    if done is not None:
        kept = run_dir / CHECKPOINT  # what stopped it (a folder may keep no checkpoint)
        state = LoopState.from_meta(read_checkpoint_meta(kept)["loop"]) if kept.is_file() else None
        log.info("%s is finished and its settings are unchanged: its test report stands (metrics.jsonl); %s", run_dir,
                 "a larger train.epochs or train.max_steps trains it on, unless its plateau schedule ended"
                 if state is None else "its plateau schedule ended, so no budget trains it on" if state.done else
                 f"{stop_reason(state, tc)}: --resume with a larger one trains it on")
        world.close(clean=True)
        return done
    # the folder as the file system names it ("runs/a/.." is "runs"): only one this start made is removed
    fresh, held_folder, finished = not resume and not run_dir.resolve().exists(), False, False
    run: Optional[Run] = None
    with contextlib.ExitStack() as held:
        # the whole run, its test report included, in one mode in every thread
        mode = held.enter_context(denormals_flushed(tc.flush_denormals))
        if mode != ("flushed" if tc.flush_denormals else "kept"):  # a CPU without the bits, an OpenMP not libgomp
            log.warning(f"train.flush_denormals is {tc.flush_denormals}, but denormals are {mode} in torch's "
                        f"threads on this machine")
        held.enter_context(native_kernels(tc.native_kernels))
        try:
            # rank 0 holds the run folder for every rank, from before its first file to the test report
            world.on_main(lambda: held.enter_context(run_folder_lock(run_dir)))
            held_folder = True
            held.enter_context(stop_on_signals())
            run = start_run(task, resume, world, device, data)
            if run.finished() and run.state.batch_in_epoch > 0 and not validated_at_start(run):
                # resumed where a signal stopped it within an epoch, with a budget that ends there: a run of
                # that budget is validated at its last step, as the loop below does
                end_epoch(run)
            while not run.finished():
                train_epoch(run)
                # validation and a checkpoint; a stop asked at the last step too, as a run not stopped ends
                if run.epoch_complete or not run.stopping or run.finished():
                    end_epoch(run)
                else:
                    run.checkpoint()  # mid-epoch: resumed at the next batch
                if run.stopping:
                    raise StopRequested(f"stopped on request at step {run.state.step}; its checkpoint is in "
                                        f"{run.run_dir}")
            log.info("training ends at step %d: %s", run.state.step, stop_reason(run.state, tc, run.out_of_time))
            report = finish_run(run)
            finished = True
        except BaseException as stop:
            # this start wrote the step-0 checkpoint of a run that took no step (check_run_dir refuses a folder
            # with one unless resumed); a run of no steps that failed in its test report is not one
            untrained = not resume and run is not None and run.state.step == 0 and not run.finished()
            after_failed_start(stop, run_dir, fresh, untrained, owner=held_folder and world.is_main)
            raise
        finally:
            world.close(clean=finished)
    return report


def after_failed_start(stop: BaseException, run_dir: Path, fresh: bool, untrained: bool, owner: bool) -> None:
    """What a run that ``stop`` ended leaves in its folder, and (for a stop on request) the hint of how to go on.

    ``fresh``: this start made the folder; ``untrained``: it wrote the run's step-0 checkpoint and took no step;
    ``owner``: this process held the folder (rank 0 of a launch), so it is the one to clear it.
    """
    if isinstance(stop, KeyboardInterrupt):  # the command's last line: how to go on
        # the run's config.yaml holds every override, so the command need not be retyped with them;
        # stopped before its first checkpoint (its data, a first kernel build), nothing is there to resume
        setattr(stop, "hint", f"continue with: textvae train {run_dir / 'config.yaml'} --resume"
                if (run_dir / CHECKPOINT).exists() else
                "no checkpoint was written yet: start it again, without --resume")
    if not owner:
        return
    if fresh and not (run_dir / "config.yaml").exists():
        # a start that failed before it wrote the run's settings (its data, its model) leaves no folder to
        # trip over; one with them keeps them for the command its error gives
        shutil.rmtree(run_dir.resolve(), ignore_errors=True)
    elif untrained and not isinstance(stop, (KeyboardInterrupt, NonFiniteStop)):
        # an error before the first step (a remedy's of the user's own, say) trained nothing: without its
        # step-0 checkpoint the same command starts the run again once mended; a stop on request, or on a
        # non-finite figure, keeps it for the resume command it gives
        (run_dir / CHECKPOINT).unlink(missing_ok=True)


@dataclasses.dataclass
class Run:
    """One training run as the loop's stages share it (built by :func:`start_run`)."""

    task: Task
    cfg: Any
    world: World
    device: torch.device
    data: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: LoopState
    logger: RunLogger
    lr_at: Callable[[int], float]  # step -> lr around the plateau schedule's state.lr
    working: Optional[WorkingCopies] = None  # train.bf16_weight_copies, where it applies
    step_fn: nn.Module = dataclasses.field(init=False)  # what DDP wraps
    sampler: Any = dataclasses.field(init=False)  # the training split's batch plan
    trainer: "LoopTrainer" = dataclasses.field(init=False)  # the remedies' view
    remedies: list[Remedy] = dataclasses.field(init=False)
    last_checkpoint: int = 0
    epoch_complete: bool = False
    tokens_per_s: float = 0.0
    out_of_time: bool = False
    stopping: bool = False  # a signal asked to stop: checkpoint, then StopRequested
    smoothed: SmoothedLoss = dataclasses.field(default_factory=SmoothedLoss)  # the progress bar's loss

    def __post_init__(self) -> None:
        self.step_fn = self.world.wrap(TrainStep(self.model, self.working), self.device,
                                       find_unused_parameters=parameters_may_go_unused(self.model))
        self.sampler = self.train_split.sampler(self.cfg.data.batch_size, shuffle=True, seed=self.cfg.train.seed,
                                                pool_batches=self.cfg.data.bucket_pool)
        self.trainer = LoopTrainer(self)
        self.remedies = list(self.model.objective.remedies)
        self.last_checkpoint = self.state.step
        self.check_stops(0.0)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out_dir) / self.cfg.name

    @property
    def train_split(self) -> Any:
        return self.data.splits["train"]

    def check_stops(self, this_pass: float) -> None:
        """Set ``out_of_time`` (``train.max_seconds`` used up, ``this_pass`` seconds into the current
        pass) and ``stopping`` (a signal asked any rank to stop, :mod:`textvae.training.signals`);
        every rank decides the same."""
        limit = self.cfg.train.max_seconds
        spent = limit is not None and self.state.train_seconds + this_pass >= limit
        flags = self.world.any(torch.tensor([spent, stop_requested()], device=self.device))
        self.out_of_time, self.stopping = bool(flags[0]), bool(flags[1])

    def finished(self) -> bool:
        return self.state.done or self.out_of_time or bool(budgets_used_up(self.state, self.cfg.train))

    def checkpoint(self, pass_seconds: float = 0.0) -> None:
        """Write the checkpoint; ``pass_seconds``: the training time of the pass under way (a checkpoint
        within it), which ``state.train_seconds`` gets only at the pass's end but a resume never redoes."""
        rng = self.world.gather(rng_state(self.device))
        loop = dataclasses.asdict(self.state)
        loop["train_seconds"] += pass_seconds
        meta = {"loop": loop, "config": self.cfg.to_dict(), "log_bytes": self.logger.offset()}
        self.world.on_main(lambda: save_checkpoint(self.run_dir / CHECKPOINT, self.model, self.optimizer, meta,
                                                   rng_states=rng))
        self.last_checkpoint = self.state.step

    def rebuild_optimizer(self) -> None:
        """A new optimiser and lr schedule at the plateau schedule's ``state.lr``."""
        self.optimizer = build_optimizer(self.cfg.optim, self.model, self.state.lr)
        self.lr_at = create_lr_schedule(self.cfg.optim.cycle_lr, self.state.lr, self.model.objective.schedule,
                                        self.cfg.optim.cycle_lr_stairs, self.cfg.optim.cycle_lr_options)


def start_run(task: Task, resume: bool, world: World, device: torch.device, data: Any) -> Run:
    """Data, model, optimiser and run folder of a new run, or of a resumed one from its checkpoint."""
    cfg, tc = task.cfg, task.cfg.train
    if not world.is_main:  # one copy of the data and progress messages
        logging.getLogger("textvae").setLevel(logging.WARNING)
    run_dir = Path(cfg.out_dir) / cfg.name
    world.on_main(lambda: check_run_dir(run_dir, resume))
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    data = world.node_first(task.load_data) if data is None else data
    warn_about_settings(cfg, len(data.splits["train"]))
    model = task.build_model(data).to(device)
    check_evaluated_splits(data, latent=not getattr(model, "is_lm", False))
    # before the reseed below: loading saved weights may draw (a throwaway model's init)
    started_from = {} if resume else task.warm_start(model, data) or {}  # a task's own may return nothing
    check_remedies_run_in(world, list(model.objective.remedies))
    if task.reseed_after_init or world.size > 1:
        torch.manual_seed(rank_seed(tc.seed, world.rank))  # this rank's z noise, dropout masks, ...
    state = LoopState(lr=cfg.optim.lr)
    optimizer = build_optimizer(cfg.optim, model, state.lr)
    changes, log_bytes = {}, 0
    if resume:
        ckpt: Checkpoint = world.on_main(lambda: read_checkpoint(run_dir / CHECKPOINT))
        state, changes = restore_run(ckpt, cfg, model, optimizer, world, device)
        log_bytes = ckpt.meta["log_bytes"]
    unigram = data.splits["train"].unigram(data.tokenizer.vocab_size).to(device)
    if tc.sampled_softmax:
        model.sampled_softmax = SampledSoftmax(unigram, tc.sampled_softmax)
    model.set_sparse_gradients(sparse_gradients_apply(cfg, world, device))
    if not resume:
        for remedy in model.objective.remedies:
            remedy.set_corpus_statistics(unigram)
        world.on_main(lambda: model.save_pretrained(run_dir / "model", data.tokenizer))
    if changes or not resume:
        world.on_main(lambda: (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    logger = RunLogger(run_dir, tensorboard=tc.tensorboard, enabled=world.is_main, truncate_to=log_bytes,
                       purge_step=state.step + 1 if resume else None)
    lr_at = create_lr_schedule(cfg.optim.cycle_lr, state.lr, model.objective.schedule, cfg.optim.cycle_lr_stairs,
                               cfg.optim.cycle_lr_options)
    working = working_copies_for(cfg, model, world.size, device)
    run = Run(task, cfg, world, device, data, model, optimizer, state, logger, lr_at, working)
    if world.is_main:  # the code each start of the run used (a resumed run may use newer code)
        logger.log("source", state.step, state.epoch, **source_revision(), **machine_facts(device),
                   denormals=denormal_mode(), native_kernels=native_kernels_used(cfg.train, device, model),
                   bf16_weight_copies=[] if working is None else working.names)
    if changes:
        logger.log("resume", state.step, state.epoch, changed={k: list(v) for k, v in changes.items()})
    if not resume:
        split = run.train_split
        logger.log("data", state.step, state.epoch, train_sentences=len(split), vocab_size=data.tokenizer.vocab_size,
                   padding_fraction=padding_fraction(run.sampler.epoch_batches(0), split.lengths),
                   world_size=world.size, sparse_gradients=model.sparse_gradients, **started_from)
        run.checkpoint()  # from here on, a killed run can be resumed
    return run


# the package's files that make its behaviour: code, kernel sources, packaged recipes and studies
SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".yaml")


@functools.lru_cache(maxsize=None)
def source_digest(root: Path) -> str:
    """sha256 (its first 16 hex digits) of the files under ``root`` that make textvae's behaviour
    (:data:`SOURCE_SUFFIXES`; each file's path relative to ``root`` and its bytes, in path order).

    A commit names the code only in a clean git checkout; this names it in an installed copy (no git),
    in a checkout with uncommitted changes, and it is the same for one source wherever it lies."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def source_revision() -> dict[str, Any]:
    """Which code a run (or each resumed part of it) ran: the git commit of the textvae checkout
    it was imported from, whether that checkout had uncommitted changes, the digest of the package's
    source (:func:`source_digest`) and the versions; ``commit`` is None for an installed copy outside git."""
    import textvae

    where = Path(textvae.__file__).resolve().parent
    revision: dict[str, Any] = {"textvae": textvae.__version__, "torch": torch.__version__, "commit": None,
                                "source_sha256": source_digest(where)}
    plugins = own_parts()
    if plugins:  # parts of the user's own that the run may use (TEXTVAE_PLUGINS, or a script's imports)
        revision["plugins"] = plugins
        revision["plugin_files"] = plugin_files(plugins)
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no", "."],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return revision
    return {**revision, "commit": commit, "dirty": bool(status.strip())}


def own_parts() -> list[str]:
    """The plugins loaded (``TEXTVAE_PLUGINS`` modules, ``name=module`` entry points) and the other modules
    outside textvae that registered parts in this process (a script's, a notebook's imports), each once: an
    entry point's own module is named by the entry point."""
    loaded = loaded_plugins()
    points = [name.split("=", 1)[1] for name in loaded if "=" in name]
    others = [m for m in part_modules() if not any(m == p or m.startswith(p + ".") for p in points)]
    return sorted(set(loaded) | set(others))


def plugin_files(plugins: list[str]) -> dict[str, dict[str, str]]:
    """Where each plugin module's code was read from and its digest (a package's: its folder's,
    :func:`source_digest`), so that a run says which version of the user's own parts it ran, and where another
    process finds them; a module without a file (built in a notebook) is left out."""
    files = {}
    for name in plugins:
        # an entry point is name=module or name=module:attribute
        path = getattr(sys.modules.get(name.split("=", 1)[-1].split(":")[0]), "__file__", None)
        if path is None or not Path(path).is_file():
            continue
        path = Path(path).absolute()  # as imported: a symlinked folder's name is the one on the import path
        package = path.name == "__init__.py"
        files[name] = {"file": str(path), "sha256": source_digest(path.parent) if package
                       else hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    return files


def machine_facts(device: torch.device) -> dict[str, Any]:
    """Where a run (or each resumed part of it) ran: its wall times mean little without the CPU
    model, the cores the machine has, the threads torch uses, and the GPU when it trains on one."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # Linux names the model; platform.processor() often does not
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    facts: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def native_kernels_used(tc: TrainConfig, device: torch.device, model: nn.Module) -> str:
    """For the ``source`` record: :func:`native_status` of the kernels that apply (on the CPU every one in
    bf16, the dropout mask's in fp32; the dropout mask's only where ``model`` drops anything), ``unused``
    where none does (a GPU). It builds them where not yet built, so that a first build is not counted as
    training time."""
    drops = any(isinstance(m, Dropout) and 0 < m.p < 1 for m in model.modules())
    applying = KERNELS if tc.precision == "bf16" else ("dropout",)
    kernels = [k for k in applying if k != "dropout" or drops] if device.type == "cpu" else []
    return native_status(kernels) if kernels else "unused"


def owns_updates(remedy: Remedy) -> bool:
    """Whether ``remedy`` takes optimiser steps of its own inside each training step (``before_update``)."""
    return type(remedy).before_update is not Remedy.before_update


def check_remedies_run_in(world: World, remedies: list[Remedy]) -> None:
    """Remedies that take optimiser steps of their own run in one process only."""
    for remedy in remedies:
        if world.size > 1 and owns_updates(remedy):
            raise TextVAEError(f"remedy {remedy.name!r} takes optimiser steps of its own inside each "
                               f"training step, which data-parallel training does not support; run it in "
                               f"one process (without torchrun)")


def train_epoch(run: Run) -> None:
    """Optimiser steps over (the rest of) the current epoch, until it ends or a limit is reached."""
    state, tc, world = run.state, run.cfg.train, run.world
    run.model.train()
    run.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    n_batches = len(run.sampler)
    # a step budget that ends the run within this epoch ends its bar there too (a batch is a step)
    end = n_batches if tc.max_steps is None else min(n_batches, state.batch_in_epoch + max(tc.max_steps - state.step, 0))
    desc = f"epoch {state.epoch + 1}/{tc.epochs}" + (f", to step {tc.max_steps}" if end < n_batches else "")
    bar = tqdm(run.sampler, total=end, initial=state.batch_in_epoch, disable=not (tc.progress and world.is_main),
               desc=desc, dynamic_ncols=True, leave=False)
    t0, tokens0 = time.perf_counter(), state.train_tokens
    for index in bar:
        index = np.asarray(index)
        out, grad_norm, n_mine = train_step(run, index)
        batch_tokens = int(token_counts(torch.from_numpy(run.train_split.lengths[index])).sum())
        state.train_tokens += batch_tokens
        if state.step % tc.log_every == 0:
            figures = world.weighted_mean({"loss": out.loss, "rec": out.rec.mean(), "kl": out.kl.sum(-1).mean(),
                                           **out.terms}, n_mine)
            smoothed = run.smoothed.add(figures["loss"], len(index), batch_tokens)
            bar.set_postfix({"loss/token": f"{smoothed:.3f}", "kl": f"{figures['kl']:.2f}"})
            # per sentence, one batch's loss jumps with its length bucket; per token it reads as a curve (the
            # bar's smoothing is not logged: it is not in the checkpoint, and a resumed log must equal an unbroken one)
            run.logger.log("train", state.step, state.epoch, lr=run.optimizer.param_groups[0]["lr"],
                           grad_norm=float(grad_norm), **figures, sentences=len(index), tokens=batch_tokens,
                           loss_per_token=figures["loss"] * len(index) / max(batch_tokens, 1))
        if tc.metrics_every and state.step % tc.metrics_every == 0:
            figures = world.on_main(lambda: evaluate_task(run, run.task.periodic_metrics, limit=tc.metrics_sentences))
            if figures is not None:
                run.logger.log("valid_metrics", state.step, state.epoch, **figures)
            run.model.train()
        if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
            run.checkpoint(time.perf_counter() - t0)
        run.check_stops(time.perf_counter() - t0)
        if run.out_of_time or run.stopping or (tc.max_steps is not None and state.step >= tc.max_steps):
            break
    bar.close()
    run.tokens_per_s, run.epoch_complete = state.end_pass(t0, tokens0, n_batches)


def train_step(run: Run, index: np.ndarray) -> tuple[VAEOutput, torch.Tensor, int]:
    """One optimiser step on the global batch ``index``; returns this rank's figures (detached),
    the gradient norm before clipping and this rank's number of sentences (0 when it only pads)."""
    state, optimizer, clip = run.state, run.optimizer, run.cfg.optim.clip
    set_lr(optimizer, run.lr_at(state.step))
    mine, weight = run.world.shard(index)  # this rank's share of the global batch
    batch = run.train_split.batch(mine).to(run.device)
    for remedy in run.remedies:
        remedy.before_update(run.trainer, batch)
    with run.trainer.forward_precision():
        loss, out = run.step_fn(batch, state.step, weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP: gradients averaged over the ranks during the backward pass
    grad_norm = clip_gradients(run.model, clip if clip > 0 else math.inf, run.working)
    bad = nonfinite_figures(out, grad_norm, run.world)
    if bad:
        stop_nonfinite(run, bad)
    for remedy in run.remedies:
        remedy.before_step(run.trainer)
    optimizer_step(run, clip_scale(float(grad_norm), clip) if clip > 0 else 1.0)
    state.step += 1
    state.batch_in_epoch += 1
    return out, grad_norm, len(mine) if weight else 0


class NonFiniteStop(TextVAEError):
    """A non-finite figure stopped training; the message gives the command that resumes the run from its last
    checkpoint with a lower lr, so that checkpoint stays even where it is the step-0 one (an inner update of a
    remedy, applied within that step, may be what the lr changes)."""


def stop_nonfinite(run: Run, bad: list[str], inner: bool = False) -> None:
    """Stop on a non-finite figure before the update; ``inner``: in a remedy's own update inside the step
    (aggressive training's encoder steps), whose earlier updates were applied."""
    state = run.state
    what = describe_nonfinite(bad[0], run.remedies)
    owners = ", ".join(repr(r.name) for r in run.remedies if owns_updates(r))
    where = f"in an inner update of remedy {owners} at step" if inner else "at step"
    run.logger.log("nonfinite", state.step + 1, state.epoch, terms=bad)
    raise NonFiniteStop(
        f"non-finite {what} {where} {state.step + 1} (epoch {state.epoch + 1}, batch "
        f"{state.batch_in_epoch + 1}); the update was not applied. The last good checkpoint, "
        f"{run.run_dir / CHECKPOINT} (step {run.last_checkpoint}), is kept; resume it with a lower learning rate: "
        f"textvae train {run.run_dir / 'config.yaml'} --resume --optim.lr {state.lr / 2:g}")


def evaluate_task(run: Run, figures: Callable[..., Any], **kwargs: Any) -> Any:
    """``figures(model, valid split, device, **kwargs)`` on the evaluation random stream: the same
    draws every time, or with ``train.valid_redraw`` new draws each epoch."""
    with evaluation_rng(run.device, draw=run.state.epoch if run.cfg.train.valid_redraw else 0):
        return figures(run.model, run.data.splits["valid"], run.device, **kwargs)


def end_epoch(run: Run) -> None:
    """Validation at beta = 1, the plateau lr decay with best-model reload (He et al. 2019) on
    rec + w KL (``optim.plateau_kl_weight``; w = 1: the -ELBO), the remedies' epoch hooks (after a
    complete epoch), the log and a checkpoint."""
    state, world, model = run.state, run.world, run.model
    best_dir = run.run_dir / "model"
    val = world.on_main(lambda: evaluate_task(run, run.task.validate))

    def reload_best() -> None:  # on rank 0; the other ranks get it from sync_module below
        reload_weights(model, best_dir, run.device, run.remedies)

    improved, decayed = plateau_update(state, selection_loss(val, run.cfg.optim.plateau_kl_weight),
                                       run.epoch_complete, run.cfg.optim,
                                       # config.json and tokenizer.json stay as written at start
                                       save_best=lambda: world.on_main(lambda: model.save_weights(best_dir)),
                                       reload_best=lambda: world.on_main(reload_best))
    if decayed:
        run.rebuild_optimizer()
    if run.epoch_complete:
        for remedy in run.remedies:
            val.update(remedy.after_epoch(run.trainer, state.epoch, val))
        world.sync_module(model)  # a reloaded best model, a decoder re-drawn from per-rank streams
    state.validated_step = state.step
    run.logger.log("valid", state.step, state.epoch, lr=state.lr, improved=improved, tokens_per_s=run.tokens_per_s,
                   **val)
    if world.is_main:
        # state.epoch counts complete epochs: a run stopped mid-epoch (max_steps, a signal) is in the next
        where = f"epoch {state.epoch}" if run.epoch_complete else \
            f"epoch {state.epoch + 1}, stopped after batch {state.batch_in_epoch}"
        line = (f"{where}: valid -ELBO {val['neg_elbo']:.3f}  ELBO-PPL {val['elbo_ppl']:.2f}  "
                f"KL {val.get('kl', 0.0):.3f}  lr {state.lr:g}  {run.tokens_per_s:,.0f} tok/s")
        # without bars (a study's runs, a batch job's log) the line is the log's one sign of progress
        if run.cfg.train.progress:
            tqdm.write(line)
        else:
            log.info(line)
    run.checkpoint()


def reload_weights(model: nn.Module, directory: Path, device: torch.device, remedies: list[Remedy]) -> None:
    """Load the saved model in ``directory`` into ``model``: its weights and buffers, except the
    remedies' procedure state (``Remedy.procedure_buffers``). He et al. (2019) keep their
    aggressive-mode flag in the training script, so a best-model reload at an lr decay never
    turns aggressive mode back on."""
    with keep_procedure_state(remedies):
        model.load_state_dict(type(model).from_pretrained(directory, device).state_dict())


def finish_run(run: Run) -> dict[str, Any]:
    """The test report of the best model, with the run's training figures; logged and returned."""
    state, split = run.state, run.train_split

    def test_report() -> dict[str, Any]:
        # marks the (long: an IW pass at K = 500) evaluation, for `textvae study --status`; a run
        # killed during it resumes from its last checkpoint, whose log offset drops this record, and
        # its IW pass from the batches it had finished (kept in `progress` until the report is logged)
        progress = run.run_dir / IW_PROGRESS_FILE
        kept = run.task.iw_progress(progress, run.run_dir / "model", run.device)
        if kept is not None and kept.batches:
            log.info("test report: %d IW batches kept by an earlier, stopped attempt; its pass goes on after them",
                     len(kept.batches))
        earlier = earlier_report_seconds(run.logger.cut, kept)
        run.logger.log("test_start", state.step, state.epoch, **({"earlier_seconds": earlier} if earlier else {}))
        stopped = (f"stopped on request in the test report; its finished IW batches are kept in {progress}, "
                   f"where --resume continues")
        with evaluation_rng(run.device), stop_at_once(stopped):
            report = run.task.test_report(run.data, run.run_dir / "model", run.device, kept)
        report["train_seconds"] = state.train_seconds
        report["train_steps"] = state.step
        report["train_epochs"] = state.epoch  # whole epochs trained
        report["train_plateau_ended"] = state.done  # not a budget: a study's archive tells a larger budget's run by it
        report["train_tokens_per_s"] = state.train_tokens / max(state.train_seconds, 1e-9)
        report["padding_fraction"] = padding_fraction(run.sampler.epoch_batches(0), split.lengths)
        run.logger.log("test", state.step, state.epoch, **report)
        progress.unlink(missing_ok=True)
        return report

    retain = run.cfg.train.retain_memory
    if retain:  # give back what training kept: the report's buffers have other sizes
        retain_freed_memory(False)
    # ... and keep what the report itself frees: its IW pass makes and frees the same logits chunks
    # thousands of times, and page-faulting each one in afresh slows it markedly
    # (benchmarks/throughput.py, iw section). Off again afterwards, as the defaults were.
    with freed_memory_kept() if retain else contextlib.nullcontext():
        report = run.world.on_main(test_report)
    run.logger.close()
    return report


def earlier_report_seconds(cut: list[dict[str, Any]], progress: Optional[IWProgress]) -> float:
    """The time an earlier, stopped attempt at the run's test report spent on the IW batches this one takes over
    (``progress``: the report's own, keyed to its best model and settings): from that attempt's ``test_start``
    record (in ``cut``, the records a resume cut from the log) to its last kept batch (the progress file's
    time), plus what that attempt had taken over itself. 0 when the pass takes none: no batch kept, or kept for
    other weights or settings (a run trained on since to a better model, whose pass starts afresh and is
    counted then)."""
    start = next((r for r in reversed(cut) if r.get("split") == "test_start"), None)
    if start is None or progress is None or not progress.batches:
        return 0.0
    return round(max(0.0, progress.path.stat().st_mtime - start["time"]) + start.get("earlier_seconds", 0.0), 3)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as JSON values, without its place (a moved or renamed run folder is the same run)."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k not in ("name", "out_dir")}


def reported(records: list[dict[str, Any]]) -> bool:
    """Whether a run's log ends with its test report (not resumed and trained further since)."""
    last = max((i for i, r in enumerate(records) if r.get("split") == "test"), default=None)
    return last is not None and not any(r.get("split") == "train" for r in records[last:])


def finished_unchanged(run_dir: Path, cfg: Any) -> Optional[dict[str, Any]]:
    """The test report of the finished run in ``run_dir`` when its saved settings are ``cfg``'s, else None:
    resumed, such a run would train no step and only evaluate itself again (at K = 500, a long pass)."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    saved = read_run_config(run_dir)
    if not reported(records) or saved is None:
        return None  # not finished, or resumed and trained further since
    # a setting added since the run was made reads as its default; threads and the like change nothing
    if effective_changes(settings_now(type(cfg), saved), cfg):
        return None
    return final_report(records)


def check_changes_train(run_dir: Path, cfg: Any, state: LoopState, changes: dict[str, tuple[Any, Any]]) -> None:
    """A one-line error for resuming a finished run (its test report logged) with settings changed that
    train it no further: they would go into its config.yaml, which then names settings no step of it
    used, and only its test report would run again. It says what would train it on: the budget that
    stopped it, or nothing where its plateau schedule ended (``state.done``, restored as it was)."""
    hit = spent_budgets(state, cfg.train)
    # its test report's own settings are used: resumed with those alone, it reports again
    effective = {k: v for k, v in changes.items() if k not in INCIDENTAL_KEYS and not is_report_setting(k)}
    if not (state.done or hit) or not effective or not reported(read_jsonl(run_dir / "metrics.jsonl")):
        return
    why, on = ((", its lr schedule ended", "no budget trains it on") if state.done else
               ("", f"raise {' and '.join(hit)} to train on"))
    raise TextVAEError(f"{run_dir} is finished (step {state.step}{why}): resumed, it trains no further step, so "
                       f"{_changed(effective)} would be written into its config.yaml unused; evaluate it again with "
                       f"`textvae evaluate {run_dir}` (or resume it with settings of its test report alone), train "
                       f"a new run (another --name), or {on}")


def check_budget_not_passed(state: LoopState, tc: TrainConfig, changes: dict[str, tuple[Any, Any]]) -> None:
    """A one-line error for a budget lowered, on resuming, below where the run is: a run of that budget would
    have stopped earlier, and its config.yaml would name a budget it did not keep."""
    # a lowered time budget is left to stop the run at once: its time is a measurement, not its position
    passed = budgets_passed(state, tc, lambda key: f"train.{key}" in changes and getattr(tc, key) is not None,
                            ("max_steps", "epochs"))
    if passed:
        key, now, at = passed[0]
        raise TextVAEError(f"{key} {now}: the run is past it ({key.split('.')[1].replace('max_', '')} {at}), so a run "
                           f"of that budget would have stopped earlier; resume it with a budget of at least {at}, or "
                           f"train a new run (another --name)")


def _changed(changes: dict[str, tuple[Any, Any]], shown: int = 8) -> str:
    """``a.b 1 -> 2, c.d 'x' -> 'y', ... and 3 more``."""
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:shown])
    return listed + (f", and {len(changes) - shown} more" if len(changes) > shown else "")


def restore_run(ckpt: Checkpoint, cfg: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer, world: World,
                device: torch.device) -> tuple[LoopState, dict[str, tuple[Any, Any]]]:
    """Load a checkpoint into this rank; returns the loop state and the configuration changes
    since the checkpoint, which take effect: ``optimizer`` (built from ``cfg``) keeps its hyper-parameters
    (momentum, betas, weight decay) over the checkpoint's, and a changed ``optim.lr`` replaces the plateau
    schedule's lr."""
    changes = setting_changes(type(cfg), _settings(ckpt.meta["config"]), _settings(cfg.to_dict()))
    same_world = len(ckpt.rng_states) == world.size
    # the optimiser's state comes back with the checkpoint's param_groups: its settings are put back after
    settings_now = [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]
    try:
        restore_checkpoint(ckpt, model, optimizer, rank=world.rank if same_world else None, device=device)
    except TextVAEError as e:
        if changes:
            raise TextVAEError(f"{e}; changed since the checkpoint: {_changed(changes)} (to resume with the run's own "
                               f"settings: textvae train {ckpt.path.parent / 'config.yaml'} --resume)") from None
        raise
    for group, now in zip(optimizer.param_groups, settings_now):
        group.update(now)
    state = LoopState.from_meta(ckpt.meta["loop"])
    # after a checkpoint that does not fit (the first thing to know), before the changes are said to take effect
    world.on_main(lambda: check_changes_train(ckpt.path.parent, cfg, state, changes))
    check_budget_not_passed(state, cfg.train, changes)
    log.info("resuming %s after step %d (epoch %d, batch %d next)", ckpt.path, state.step, state.epoch + 1,
             state.batch_in_epoch + 1)
    if changes:  # a resume that repeats the command but not the recipe or its overrides would change them unseen
        log.warning("resuming with settings changed since the checkpoint, which take effect (and go into its "
                    "config.yaml): %s", _changed(changes))
    if not same_world:  # data order does not depend on the world size; only the noise streams do
        log.warning("resuming a %d-process run with %d processes: random streams restart from the seed",
                    len(ckpt.rng_states), world.size)
        torch.manual_seed(rank_seed(cfg.train.seed + state.step, world.rank))
    if "optim.lr" in changes:
        state.lr = cfg.optim.lr
        set_lr(optimizer, state.lr)
    return state, changes
