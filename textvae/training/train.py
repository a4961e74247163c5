"""The training loop, top to bottom in one function.

    textvae train recipes/ptb/vae.yaml [--overrides] [--resume]
    torchrun --nproc_per_node 4 -m textvae.cli train recipes/ptb/vae.yaml     # data-parallel

One pass: build data, model (whose forward returns the loss), optimiser; restore a checkpoint if
resuming; then epochs of steps; each epoch ends with validation at beta = 1, the plateau lr decay
with best-model reload (He et al. 2019), and a checkpoint. Remedies that change the procedure
(aggressive encoder updates, encoder pretraining) act through the hooks of
:class:`~textvae.remedies.Remedy`; figures reported to the user come from ``textvae.metrics``.
Under ``torchrun`` the same loop runs data-parallel (:mod:`textvae.training.distributed`).

Never losing work:

* A checkpoint (model, optimiser, every rank's RNG, loop position, the log's length) is written
  atomically at step 0, every ``train.checkpoint_every`` steps and at each epoch end. ``--resume``
  continues from it exactly: the batch plan is a function of (seed, epoch) resumed at the saved
  batch, the RNG streams are restored, and ``metrics.jsonl`` is cut back to the checkpoint, so a
  run killed at any moment ends with the parameters, best model and log of an uninterrupted one.
* A non-finite loss or gradient stops training before the update, naming the term that went
  non-finite and the step; the last checkpoint is kept and the message gives the command that
  resumes it with a lower learning rate (``--resume`` applies a changed ``--optim.lr``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from textvae.config import OptimConfig, RunConfig, check_ranges
from textvae.data.batch import Batch
from textvae.data.batching import padding_fraction
from textvae.data.datasets import load_dataset
from textvae.errors import TextVAEError
from textvae.metrics import evaluate_model
from textvae.models.sampled_softmax import SampledSoftmax
from textvae.models.textvae import TextVAE, VAEOutput
from textvae.reduction import token_counts
from textvae.remedies import REMEDIES, Remedy, inference_parameters, reinit_decoder
from textvae.schedules import cycle_fraction, cycle_restart
from textvae.training.checkpoint import (Checkpoint, read_checkpoint, restore_checkpoint, rng_state,
                                         save_checkpoint)
from textvae.training.distributed import World, parameters_may_go_unused, rank_seed
from textvae.training.logger import RunLogger
from textvae.training.progress import SmoothedLoss

CHECKPOINT = "checkpoint.safetensors"
EVAL_SEED = 1234  # evaluation draws its own random numbers so it never shifts the training stream

log = logging.getLogger("textvae.train")


@dataclasses.dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue exactly.

    ``done``: the plateau schedule has used up its decays (``max_steps`` and ``epochs`` are read
    from the configuration, so a resumed run may be given more of either).
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
    state.lr *= oc.decay_factor
    state.decays += 1
    state.bad_epochs = 0
    if oc.reload_best_on_decay:
        reload_best()
    state.done = state.decays >= oc.max_decays
    return improved, True


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise TextVAEError(f"unknown optimizer {cfg.name!r}; valid: adam, sgd")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TextVAEError(f"unknown train.device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TextVAEError(f"train.device {name!r}: CUDA is not available on this machine")
    return device


def evaluation(model: TextVAE, batches: Callable[[], Iterator[Batch]], device: torch.device,
               **kwargs: Any) -> dict[str, float]:
    """Metrics on a split with a fixed random stream, leaving the training RNG untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        return evaluate_model(model, lambda: (b.to(device) for b in batches()), **kwargs)


class LoopTrainer:
    """The :class:`textvae.remedies.Trainer` view of this loop that procedure remedies act through."""

    def __init__(self, model: TextVAE, optimizer: torch.optim.Optimizer, state: LoopState, clip: float,
                 sample_batch: Callable[[], Batch]):
        self.model, self.optimizer, self.state, self.clip = model, optimizer, state, clip
        self._sample_batch = sample_batch

    @property
    def step(self) -> int:
        return self.state.step

    def random_batch(self) -> Batch:
        return self._sample_batch()

    def clip_gradients(self) -> None:
        if self.clip > 0:
            clip_gradients(self.model, self.clip)

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return inference_parameters(self.model)

    def reinit_decoder(self) -> None:
        reinit_decoder(self.model, self.optimizer)
        self.state.best_val, self.state.bad_epochs = math.inf, 0


class TrainStep(nn.Module):
    """What DDP wraps: the model's forward with only the weighted loss left in the autograd graph.

    Returns (weight · loss, the output with every tensor detached). DDP looks for parameters in
    the graph of every tensor of the output; detaching the figures that are only logged makes
    that graph exactly the loss's, so unused parameters are recognised as such.
    """

    def __init__(self, model: TextVAE):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, step: int, weight: float) -> tuple[torch.Tensor, VAEOutput]:
        out = self.model(batch, step=step)
        figures = VAEOutput(rec=out.rec.detach(), kl=out.kl.detach(), n_tokens=out.n_tokens,
                            loss=out.loss.detach(), terms={k: v.detach() for k, v in out.terms.items()})
        return out.loss * weight, figures


def remedy_name(remedy: Remedy) -> str:
    """The registered name of a remedy (what a recipe calls it)."""
    return next((n for n in REMEDIES.names() if REMEDIES.get(n) is type(remedy)), type(remedy).__name__)


def describe_nonfinite(name: str, remedies: list[Remedy]) -> str:
    """What a figure of :func:`nonfinite_figures` is, for the user."""
    known = {"rec": "reconstruction term (rec)", "kl": "KL term (kl)",
             "kl_term": "weighted KL term (kl_term: beta * KL, or the remedy's replacement)",
             "loss": "total loss (every term finite: the sum overflowed)",
             "gradient": "gradient norm (the loss was finite)"}
    if name in known:
        return known[name]
    owner = next((r for r in remedies if type(r).__name__ == name), None)
    return f"extra loss of remedy {remedy_name(owner)!r}" if owner is not None else f"term {name!r}"


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` that skips the scaling pass when it would multiply by exactly 1, and
    takes sparse gradients (``train.sparse_gradients``).

    Same result bit for bit on dense gradients: torch scales every gradient by
    min(1, max_norm / (norm + 1e-6)), a pass over all of them (memory-bound, ~2 % of a CPU step)
    even when the factor is 1. A sparse gradient is coalesced first (an embedding's backward
    holds one row per occurrence of a word; the norm needs each row's sum). Returns the total
    norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    norm = torch.nn.utils.get_total_norm([p.grad._values() if p.grad.is_sparse else p.grad for p in params])
    if norm + 1e-6 > max_norm:  # one host sync; the non-finite check syncs every step anyway
        torch.nn.utils.clip_grads_with_norm_([p for p in params if not p.grad.is_sparse], max_norm, norm)
        scale = max_norm / (norm + 1e-6)
        for p in params:
            if p.grad.is_sparse:
                p.grad.mul_(scale)
    return norm


def sparse_gradients_apply(cfg: RunConfig, world: World) -> bool:
    """Whether ``train.sparse_gradients`` takes effect: only where a sparse gradient gives the
    same update as its dense form -- plain SGD (momentum 0, weight decay 0: an untouched row
    does not move) in one process (DDP all-reduces dense buckets)."""
    oc = cfg.optim
    return (cfg.train.sparse_gradients and oc.name == "sgd" and oc.momentum == 0 and oc.weight_decay == 0
            and world.size == 1)


def nonfinite_figures(out: VAEOutput, grad_norm: torch.Tensor, world: World) -> list[str]:
    """Names of the figures of this step that are NaN or infinite on any rank: rec, kl, the
    objective's terms (kl_term, each remedy's extra loss), loss, gradient -- in that order."""
    figures = {"rec": out.rec, "kl": out.kl, **{k: v for k, v in out.terms.items() if k != "beta"},
               "loss": out.loss, "gradient": grad_norm}
    flags = torch.stack([~torch.isfinite(v.detach().to(grad_norm.device)).all() for v in figures.values()])
    return [name for name, bad in zip(figures, world.any(flags).tolist()) if bad]


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{"optim.lr": (1.0, 0.5), ...}``: the leaves that differ between two configuration dicts."""
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = (a, b)
    return changes


def check_run_dir(run_dir: Path, resume: bool) -> None:
    ckpt = run_dir / CHECKPOINT
    if resume and not ckpt.is_file():
        raise TextVAEError(f"--resume: no checkpoint in {run_dir}; start the run without --resume")
    if not resume and ckpt.is_file():
        raise TextVAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --name")
    check_writable(run_dir)


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and write a file in it, so an output folder on a read-only file system
    (or under a file, or without permission) fails before the data is loaded, not mid-run."""
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TextVAEError(f"cannot write the run folder {run_dir}: {e.strerror} ({e.filename}); "
                           f"choose another --out_dir") from None


def check_config(cfg: RunConfig) -> None:
    """One-line errors for settings out of range or unknown (before any work is done)."""
    tc, oc = cfg.train, cfg.optim
    check_ranges(cfg)
    if tc.precision not in ("fp32", "bf16"):
        raise TextVAEError(f"unknown train.precision {tc.precision!r}; valid: fp32, bf16")
    if oc.cycle_lr not in ("none", "restart", "cosine"):
        raise TextVAEError(f"unknown optim.cycle_lr {oc.cycle_lr!r}; valid: none, restart, cosine")


def warn_about_settings(cfg: Any, n_train: int) -> None:
    """Warnings for settings that run but rarely do what was meant (both training loops)."""
    if cfg.data.batch_size > n_train:
        log.warning("data.batch_size %d is larger than the training split (%d): every epoch is one step of "
                    "%d; lower data.batch_size for more updates", cfg.data.batch_size, n_train, n_train)
    if cfg.train.epochs == 0:
        log.warning("train.epochs 0: no training step; the report describes the model as initialised")


def retain_freed_memory(retain: bool = True) -> bool:
    """Make glibc's malloc keep freed memory for reuse (``retain``), or go back to its defaults
    and give the kept memory back to the system; False where it cannot (not glibc).

    By default an allocation above a dynamic threshold (at most 32 MB) is a fresh ``mmap``, and
    freed memory at the heap top is trimmed: every step then page-faults its logits, softmax and
    gradient buffers (tens of MB) in again, one 4 kB page at a time. Raising both thresholds
    serves them from the heap, where the previous step left them. Process-wide; the loop turns it
    off again before the test report, whose differently sized buffers would only add to the heap.
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


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run ``out_dir/name``; returns the test report.

    Every rank of a ``torchrun`` launch calls this; each returns the same report.
    """
    check_config(cfg)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.retain_memory:
        retain_freed_memory()
    world = World.from_environment()
    device = world.start(resolve_device(tc.device))
    finished = False
    try:
        report = _train(cfg, resume, world, device)
        finished = True
    finally:
        world.close(clean=finished)
    return report


def _train(cfg: RunConfig, resume: bool, world: World, device: torch.device) -> dict[str, Any]:
    tc, oc = cfg.train, cfg.optim
    if not world.is_main:  # one copy of the data and progress messages
        logging.getLogger("textvae").setLevel(logging.WARNING)
    run_dir = Path(cfg.out_dir) / cfg.name
    ckpt_path, best_dir = run_dir / CHECKPOINT, run_dir / "model"
    world.on_main(lambda: check_run_dir(run_dir, resume))

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    data = world.node_first(lambda: load_dataset(cfg.data))
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    warn_about_settings(cfg, len(train_split))
    model = TextVAE(cfg.model, data.tokenizer.vocab_size, cfg.objective).to(device)
    remedies = list(model.objective.remedies)
    for remedy in remedies:
        if world.size > 1 and type(remedy).before_update is not Remedy.before_update:
            raise TextVAEError(f"remedy {remedy_name(remedy)!r} takes optimiser steps of its own inside each "
                               f"training step, which data-parallel training does not support; run it in "
                               f"one process (without torchrun)")
    torch.manual_seed(rank_seed(tc.seed, world.rank))  # this rank's z noise, dropout masks, ...
    state = LoopState(lr=oc.lr)
    optimizer = build_optimizer(oc, model, state.lr)
    if resume:
        ckpt: Checkpoint = world.on_main(lambda: read_checkpoint(ckpt_path))
        state, changes = restore_run(ckpt, cfg, model, optimizer, world, device)
        log_bytes = ckpt.meta["log_bytes"]
    unigram = torch.bincount(torch.from_numpy(train_split.ids.flat).long(),
                             minlength=data.tokenizer.vocab_size).to(device)
    if tc.sampled_softmax:
        model.sampled_softmax = SampledSoftmax(unigram, tc.sampled_softmax)
    model.set_sparse_gradients(sparse_gradients_apply(cfg, world))
    if not resume:
        changes, log_bytes = {}, 0
        for remedy in remedies:
            remedy.set_corpus_statistics(unigram)

        def start_run_dir() -> None:
            best_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            model.save_pretrained(best_dir, data.tokenizer)

        world.on_main(start_run_dir)
    logger = RunLogger(run_dir, tensorboard=tc.tensorboard, enabled=world.is_main, truncate_to=log_bytes,
                       purge_step=state.step + 1 if resume else None)
    if changes:
        logger.log("resume", state.step, state.epoch, changed={k: list(v) for k, v in changes.items()})
        world.on_main(lambda: (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))

    def sample_batch() -> Batch:
        """A uniformly drawn training batch, from torch's global RNG (so resuming replays it)."""
        batches = train_split.sampler(cfg.data.batch_size, shuffle=False).epoch_batches(0)
        return train_split.batch(batches[int(torch.randint(len(batches), ()))]).to(device)

    trainer = LoopTrainer(model, optimizer, state, oc.clip, sample_batch)
    step_fn = world.wrap(TrainStep(model), device, find_unused_parameters=parameters_may_go_unused(model))
    last_checkpoint = [state.step]

    def valid_batches(limit: int | None = None) -> Callable[[], Iterator[Batch]]:
        return lambda: valid_split.batches(cfg.data.eval_batch_size, shuffle=False, limit=limit)

    def checkpoint() -> None:
        rng = world.gather(rng_state(device))
        meta = {"loop": dataclasses.asdict(state), "config": cfg.to_dict(), "log_bytes": logger.offset()}
        world.on_main(lambda: save_checkpoint(ckpt_path, model, optimizer, meta, rng_states=rng))
        last_checkpoint[0] = state.step

    def stop_nonfinite(bad: list[str]) -> None:
        what = describe_nonfinite(bad[0], remedies)
        logger.log("nonfinite", state.step + 1, state.epoch, terms=bad)
        raise TextVAEError(
            f"non-finite {what} at step {state.step + 1} (epoch {state.epoch + 1}, batch "
            f"{state.batch_in_epoch + 1}); the update was not applied. The last good checkpoint, "
            f"{ckpt_path} (step {last_checkpoint[0]}), is kept; resume it with a lower learning rate: "
            f"textvae train {run_dir / 'config.yaml'} --resume --optim.lr {state.lr / 2:g}")

    sampler = train_split.sampler(cfg.data.batch_size, shuffle=True, seed=tc.seed, pool_batches=cfg.data.bucket_pool)
    n_batches = len(sampler)
    padding = padding_fraction(sampler.epoch_batches(0), train_split.lengths)
    if not resume:
        logger.log("data", state.step, state.epoch, train_sentences=len(train_split), padding_fraction=padding,
                   vocab_size=data.tokenizer.vocab_size, world_size=world.size, sparse_gradients=model.sparse_gradients)
        checkpoint()  # from here on, a killed run can be resumed
    epoch_metrics = ("elbo",) if model.is_lm else ("elbo", "mi_batch", "au")
    out_of_time = tc.max_seconds is not None and state.train_seconds >= tc.max_seconds
    smoothed = SmoothedLoss()
    while (not state.done and not out_of_time and state.epoch < tc.epochs
           and (tc.max_steps is None or state.step < tc.max_steps)):
        model.train()
        sampler.set_epoch(state.epoch, state.batch_in_epoch)
        bar = tqdm(sampler, total=n_batches, initial=state.batch_in_epoch, disable=not (tc.progress and world.is_main),
                   desc=f"epoch {state.epoch + 1}/{tc.epochs}", dynamic_ncols=True, leave=False)
        t0, tokens0 = time.perf_counter(), state.train_tokens
        for index in bar:
            if oc.cycle_lr != "none":
                u = cycle_fraction(model.objective.schedule, state.step)
                if oc.cycle_lr == "cosine" and u is not None:
                    set_lr(optimizer, state.lr * (1 + math.cos(math.pi * u)) / 2)
                elif oc.cycle_lr == "restart" and cycle_restart(model.objective.schedule, state.step):
                    set_lr(optimizer, state.lr)
            index = np.asarray(index)
            mine, weight = world.shard(index)  # this rank's share of the global batch
            batch = train_split.batch(mine).to(device)
            for remedy in remedies:
                remedy.before_update(trainer, batch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
                loss, out = step_fn(batch, state.step, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP: gradients averaged over the ranks during the backward pass
            grad_norm = clip_gradients(model, oc.clip if oc.clip > 0 else math.inf)
            bad = nonfinite_figures(out, grad_norm, world)
            if bad:
                stop_nonfinite(bad)
            for remedy in remedies:
                remedy.before_step(trainer)
            optimizer.step()
            state.step += 1
            state.batch_in_epoch += 1
            batch_tokens = int(token_counts(torch.from_numpy(train_split.lengths[index])).sum())
            state.train_tokens += batch_tokens

            if state.step % tc.log_every == 0:
                figures = world.weighted_mean({"loss": out.loss, "rec": out.rec.mean(), "kl": out.kl.sum(-1).mean(),
                                               **out.terms}, len(mine) if weight else 0)
                bar.set_postfix({"loss/token": f"{smoothed.add(figures['loss'], len(index), batch_tokens):.3f}",
                                 "kl": f"{figures['kl']:.2f}"})
                logger.log("train", state.step, state.epoch, lr=optimizer.param_groups[0]["lr"],
                           grad_norm=float(grad_norm), **figures)
            if tc.metrics_every and state.step % tc.metrics_every == 0 and not model.is_lm:
                figures = world.on_main(lambda: evaluation(model, valid_batches(tc.metrics_sentences), device,
                                                           metrics=("elbo", "mi_batch", "mi_dataset", "au")))
                logger.log("valid_metrics", state.step, state.epoch, **figures)
                model.train()
            if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                checkpoint()
            if tc.max_steps is not None and state.step >= tc.max_steps:
                break
            if tc.max_seconds is not None and state.step % tc.log_every == 0:  # all ranks decide together
                spent = state.train_seconds + time.perf_counter() - t0
                out_of_time = bool(world.any(torch.tensor([spent >= tc.max_seconds], device=device)))
                if out_of_time:
                    break
        bar.close()
        tok_s, epoch_complete = state.end_pass(t0, tokens0, n_batches)

        # ---- validation at beta = 1; plateau decay with best-model reload (He et al. 2019) ----------
        val = world.on_main(lambda: evaluation(model, valid_batches(), device, metrics=epoch_metrics))
        val_loss = val["neg_elbo"]

        def reload_best() -> None:  # on rank 0; the other ranks get it from sync_module below
            model.load_state_dict(TextVAE.from_pretrained(best_dir, device).state_dict())

        improved, decayed = plateau_update(state, val_loss, epoch_complete, oc,
                                           # config.json stays as written at start
                                           save_best=lambda: world.on_main(lambda: model.save_weights(best_dir)),
                                           reload_best=lambda: world.on_main(reload_best))
        if decayed:
            optimizer = trainer.optimizer = build_optimizer(oc, model, state.lr)
        if epoch_complete:
            for remedy in remedies:
                val.update(remedy.after_epoch(trainer, state.epoch, val))
            world.sync_module(model)  # a reloaded best model, a decoder re-drawn from per-rank streams
        logger.log("valid", state.step, state.epoch, lr=state.lr, improved=improved, tokens_per_s=tok_s, **val)
        if tc.progress and world.is_main:
            tqdm.write(f"epoch {state.epoch}: valid -ELBO {val_loss:.3f}  ELBO-PPL {val['elbo_ppl']:.2f}  "
                       f"KL {val.get('kl', 0.0):.3f}  lr {state.lr:g}  {tok_s:,.0f} tok/s")
        checkpoint()

    def test_report() -> dict[str, Any]:
        report = final_report(cfg, data, best_dir, device)
        report["train_seconds"] = state.train_seconds
        report["train_steps"] = state.step
        report["train_tokens_per_s"] = state.train_tokens / max(state.train_seconds, 1e-9)
        report["padding_fraction"] = padding
        logger.log("test", state.step, state.epoch, **report)
        return report

    if tc.retain_memory:
        retain_freed_memory(False)
    report = world.on_main(test_report)
    logger.close()
    return report


def restore_run(ckpt: Checkpoint, cfg: RunConfig, model: TextVAE, optimizer: torch.optim.Optimizer, world: World,
                device: torch.device) -> tuple[LoopState, dict[str, tuple[Any, Any]]]:
    """Load a checkpoint into this rank; returns the loop state and the configuration changes
    since the checkpoint (a changed ``optim.lr`` takes effect; others are only reported)."""
    def settings(config: dict[str, Any]) -> dict[str, Any]:  # a moved or renamed run folder is the same run
        return {k: v for k, v in config.items() if k not in ("name", "out_dir")}

    changes = config_changes(settings(ckpt.meta["config"]), settings(json.loads(json.dumps(cfg.to_dict()))))
    same_world = len(ckpt.rng_states) == world.size
    try:
        restore_checkpoint(ckpt, model, optimizer, rank=world.rank if same_world else None, device=device)
    except TextVAEError as e:
        if changes:
            changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            raise TextVAEError(f"{e}; changed since the checkpoint: {changed}") from None
        raise
    state = LoopState(**ckpt.meta["loop"])
    log.info("resuming %s after step %d (epoch %d, batch %d next)", ckpt.path, state.step, state.epoch + 1,
             state.batch_in_epoch + 1)
    if not same_world:  # data order does not depend on the world size; only the noise streams do
        log.warning("resuming a %d-process run with %d processes: random streams restart from the seed",
                    len(ckpt.rng_states), world.size)
        torch.manual_seed(rank_seed(cfg.train.seed + state.step, world.rank))
    if "optim.lr" in changes:
        state.lr = cfg.optim.lr
        set_lr(optimizer, state.lr)
    return state, changes


def final_report(cfg: RunConfig, data: Any, best_dir: Path, device: torch.device) -> dict[str, Any]:
    """Test-set figures of the best model, and the ground truth when the corpus is synthetic."""
    model = TextVAE.from_pretrained(best_dir, device)
    test = data.splits["test"]
    metrics = ("elbo",) if model.is_lm else ("elbo", "mi_batch", "mi_dataset", "au", "diagnostics")
    if cfg.train.iw_samples_final > 0 and not model.is_lm:
        metrics += ("iw",)
    report = evaluation(model, lambda: test.batches(cfg.data.eval_batch_size, shuffle=False), device,
                        metrics=metrics, n_samples=cfg.train.iw_samples_final)
    if data.truth is not None:
        report.update(truth_figures(data.truth, "test"))
    return report


def truth_figures(truth: dict[str, Any], split: str) -> dict[str, float]:
    """The synthetic corpus' true NLL, PPL and mutual information, to set beside the model's."""
    figures = truth["splits"][split]
    return {"true_nll": figures["nll"], "true_ppl": figures["ppl"], "true_mi": truth["mi"]}
