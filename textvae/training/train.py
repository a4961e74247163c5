"""The training loop, top to bottom in one function.

    textvae train recipes/ptb/vae.yaml [--overrides] [--resume]

One pass: build data, model (whose forward returns the loss), optimiser; restore a checkpoint if
resuming; then epochs of steps; each epoch ends with validation at beta = 1, the plateau lr decay
with best-model reload (He et al. 2019), and a checkpoint. Remedies that change the procedure
(aggressive encoder updates, encoder pretraining) act through the hooks of
:class:`~textvae.remedies.Remedy`; figures reported to the user come from ``textvae.metrics``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml
from tqdm import tqdm

from textvae.config import OptimConfig, RunConfig
from textvae.data.batch import Batch
from textvae.data.batching import padding_fraction
from textvae.data.datasets import load_dataset
from textvae.errors import TextVAEError
from textvae.metrics import evaluate_model
from textvae.models.textvae import TextVAE
from textvae.remedies import inference_parameters, reinit_decoder
from textvae.schedules import cycle_fraction, cycle_restart
from textvae.training.checkpoint import load_checkpoint, save_checkpoint
from textvae.training.logger import RunLogger

CHECKPOINT = "checkpoint.safetensors"
EVAL_SEED = 1234  # evaluation draws its own random numbers so it never shifts the training stream


@dataclasses.dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

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
    return torch.device(name)


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
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return inference_parameters(self.model)

    def reinit_decoder(self) -> None:
        reinit_decoder(self.model, self.optimizer)
        self.state.best_val, self.state.bad_epochs = math.inf, 0


def run_training(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    tc, oc = cfg.train, cfg.optim
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    run_dir = Path(cfg.out_dir) / cfg.name
    ckpt_path = run_dir / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise TextVAEError(f"--resume: no checkpoint in {run_dir}")
    if not resume and ckpt_path.is_file():
        raise TextVAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --name")
    if tc.precision not in ("fp32", "bf16"):
        raise TextVAEError(f"unknown train.precision {tc.precision!r}; valid: fp32, bf16")
    if oc.cycle_lr not in ("none", "restart", "cosine"):
        raise TextVAEError(f"unknown optim.cycle_lr {oc.cycle_lr!r}; valid: none, restart, cosine")

    torch.manual_seed(tc.seed)
    data = load_dataset(cfg.data)
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    model = TextVAE(cfg.model, data.tokenizer.vocab_size, cfg.objective).to(device)
    remedies = list(model.objective.remedies)
    state = LoopState(lr=oc.lr)
    optimizer = build_optimizer(oc, model, state.lr)
    best_dir = run_dir / "model"
    if resume:
        state = LoopState(**load_checkpoint(ckpt_path, model, optimizer)["loop"])
    else:
        best_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        model.save_pretrained(best_dir, data.tokenizer)
        unigram = torch.bincount(torch.from_numpy(train_split.ids.flat).long(), minlength=data.tokenizer.vocab_size)
        for remedy in remedies:
            remedy.set_corpus_statistics(unigram.to(device))
    logger = RunLogger(run_dir, tensorboard=tc.tensorboard)

    def sample_batch() -> Batch:
        """A uniformly drawn training batch, from torch's global RNG (so resuming replays it)."""
        batches = train_split.sampler(cfg.data.batch_size, shuffle=False).epoch_batches(0)
        return train_split.batch(batches[int(torch.randint(len(batches), ()))]).to(device)

    trainer = LoopTrainer(model, optimizer, state, oc.clip, sample_batch)

    def valid_batches(limit: int | None = None) -> Callable[[], Iterator[Batch]]:
        return lambda: valid_split.batches(cfg.data.eval_batch_size, shuffle=False, limit=limit)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, model, optimizer, {"loop": dataclasses.asdict(state)})

    n_batches = train_split.num_batches(cfg.data.batch_size)
    padding = padding_fraction(train_split.sampler(cfg.data.batch_size, shuffle=True, seed=tc.seed,
                                                   pool_batches=cfg.data.bucket_pool).epoch_batches(0),
                               train_split.lengths)
    logger.log("data", state.step, state.epoch, train_sentences=len(train_split), padding_fraction=padding,
               vocab_size=data.tokenizer.vocab_size)
    epoch_metrics = ("elbo",) if model.is_lm else ("elbo", "mi_batch", "au")
    while not state.done and state.epoch < tc.epochs:
        model.train()
        batches = train_split.batches(cfg.data.batch_size, shuffle=True, seed=tc.seed, epoch=state.epoch,
                                      pool_batches=cfg.data.bucket_pool, start_batch=state.batch_in_epoch)
        bar = tqdm(batches, total=n_batches, initial=state.batch_in_epoch, disable=not tc.progress,
                   desc=f"epoch {state.epoch + 1}/{tc.epochs}", dynamic_ncols=True, leave=False)
        t0, tokens0 = time.perf_counter(), state.train_tokens
        for batch in bar:
            if oc.cycle_lr != "none":
                u = cycle_fraction(model.objective.schedule, state.step)
                if oc.cycle_lr == "cosine" and u is not None:
                    set_lr(optimizer, state.lr * (1 + math.cos(math.pi * u)) / 2)
                elif oc.cycle_lr == "restart" and cycle_restart(model.objective.schedule, state.step):
                    set_lr(optimizer, state.lr)
            batch = batch.to(device)
            for remedy in remedies:
                remedy.before_update(trainer, batch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
                out = model(batch, step=state.step)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip) if oc.clip > 0 else None
            for remedy in remedies:
                remedy.before_step(trainer)
            optimizer.step()
            state.step += 1
            state.batch_in_epoch += 1
            state.train_tokens += int(out.n_tokens.sum())

            if state.step % tc.log_every == 0:
                rec, kl = out.rec.mean().item(), out.kl.sum(-1).mean().item()
                bar.set_postfix(loss=f"{out.loss.item():.2f}", rec=f"{rec:.2f}", kl=f"{kl:.2f}")
                logger.log("train", state.step, state.epoch, loss=out.loss.item(), rec=rec, kl=kl,
                           lr=optimizer.param_groups[0]["lr"],
                           grad_norm=None if grad_norm is None else grad_norm.item(),
                           **{k: v.item() for k, v in out.terms.items()})
            if tc.metrics_every and state.step % tc.metrics_every == 0 and not model.is_lm:
                logger.log("valid_metrics", state.step, state.epoch, **evaluation(
                    model, valid_batches(tc.metrics_sentences), device,
                    metrics=("elbo", "mi_batch", "mi_dataset", "au")))
                model.train()
            if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                checkpoint()
            if tc.max_steps is not None and state.step >= tc.max_steps:
                state.done = True
                break
        bar.close()
        elapsed = time.perf_counter() - t0
        state.train_seconds += elapsed
        tok_s = (state.train_tokens - tokens0) / max(elapsed, 1e-9)
        epoch_complete = state.batch_in_epoch >= n_batches
        if epoch_complete:
            state.epoch += 1
            state.batch_in_epoch = 0

        # ---- validation at beta = 1; plateau decay with best-model reload (He et al. 2019) ----------
        val = evaluation(model, valid_batches(), device, metrics=epoch_metrics)
        val_loss = val["neg_elbo"]
        improved = val_loss < state.best_val
        if improved:
            state.best_val, state.bad_epochs = val_loss, 0
            model.save_pretrained(best_dir)
        else:
            state.bad_epochs += 1
        if not improved and state.epoch >= oc.decay_start_epoch and state.bad_epochs >= oc.decay_patience:
            state.lr *= oc.decay_factor
            state.decays += 1
            state.bad_epochs = 0
            if oc.reload_best_on_decay:
                model.load_state_dict(TextVAE.from_pretrained(best_dir, device).state_dict())
            optimizer = trainer.optimizer = build_optimizer(oc, model, state.lr)
            state.done = state.done or state.decays >= oc.max_decays
        for remedy in remedies:
            val.update(remedy.after_epoch(trainer, state.epoch, val))
        logger.log("valid", state.step, state.epoch, lr=state.lr, improved=improved, tokens_per_s=tok_s, **val)
        if tc.progress:
            tqdm.write(f"epoch {state.epoch}: valid -ELBO {val_loss:.3f}  ELBO-PPL {val['elbo_ppl']:.2f}  "
                       f"KL {val.get('kl', 0.0):.3f}  lr {state.lr:g}  {tok_s:,.0f} tok/s")
        checkpoint()

    report = final_report(cfg, data, best_dir, device)
    report["train_seconds"] = state.train_seconds
    report["train_tokens_per_s"] = state.train_tokens / max(state.train_seconds, 1e-9)
    report["padding_fraction"] = padding
    logger.log("test", state.step, state.epoch, **report)
    logger.close()
    return report


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
