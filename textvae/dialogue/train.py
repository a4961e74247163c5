"""Training a dialogue CVAE: the loop of :mod:`textvae.training.train` for (context, response) pairs.

    textvae train recipes/dailydialog/cvae.yaml [--section.key value ...] [--resume]

The same parts as sentence VAEs: optimiser, plateau lr decay with best-model reload, resumable
safetensors checkpoints, ``metrics.jsonl`` logs, an evaluation RNG apart from the training one. The
validation loss is −ELBO at β = 1 of the responses given their contexts; the final report adds
IW-NLL and Zhao et al. (2017)'s BLEU / distinct figures on the test split
(:mod:`textvae.dialogue.metrics`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml
from tqdm import tqdm

from textvae.config import from_dict
from textvae.dialogue.config import CVAERunConfig
from textvae.dialogue.data import DialogueBatch, DialogueData, DialogueSplit, load_dialogue_data
from textvae.dialogue.metrics import evaluate_generation, likelihood_metrics
from textvae.dialogue.model import KgCVAE
from textvae.errors import TextVAEError
from textvae.remedies import Remedy
from textvae.training.checkpoint import load_checkpoint, save_checkpoint
from textvae.training.logger import RunLogger
from textvae.training.train import CHECKPOINT, EVAL_SEED, LoopState, build_optimizer, resolve_device

TASK = "dialogue"


def is_dialogue_recipe(path: str | Path) -> bool:
    """True when the YAML recipe at ``path`` says ``task: dialogue``."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(values, dict) and values.get("task") == TASK


def parse_cvae_run_config(argv: list[str]) -> tuple[CVAERunConfig, bool]:
    """``RECIPE.yaml [--section.key value ...] [--resume]`` -> (config, resume), with the CLI's
    override syntax and errors (jsonargparse over :class:`CVAERunConfig`)."""
    from jsonargparse import ArgumentError, ArgumentParser

    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0]] + argv[1:]
    if argv[:1] == ["--config"] and len(argv) > 1 and not Path(argv[1]).is_file():
        raise TextVAEError(f"no such recipe: {argv[1]}")
    parser = ArgumentParser(prog="textvae train", exit_on_error=False,
                            description="Train a dialogue CVAE from a YAML recipe with overrides.")
    parser.add_argument("--config", action="config", help="recipe YAML (also accepted as the first argument)")
    parser.add_argument("--resume", action="store_true", help="continue the run in out_dir/name")
    parser.add_class_arguments(CVAERunConfig, None)
    try:
        values = parser.parse_args(argv).as_dict()
    except ArgumentError as e:
        raise TextVAEError(" ".join(str(e).split())) from None
    resume = values.pop("resume")
    values.pop("config", None)
    values.pop("__path__", None)
    cfg = from_dict(CVAERunConfig, values)
    if cfg.task != TASK:
        raise TextVAEError(f"task must be {TASK!r} for a dialogue recipe, got {cfg.task!r}")
    return cfg, resume


def cvae_evaluation(model: KgCVAE, split: DialogueSplit, batch_size: int, device: torch.device,
                    limit: Optional[int] = None, iw_samples: int = 0) -> dict[str, float]:
    """Likelihood figures on the first ``limit`` pairs of ``split`` with a fixed random stream
    (seed ``EVAL_SEED``), leaving the training RNG untouched."""
    batches = (b.to(device) for b in split.batches(batch_size, shuffle=False, limit=limit))
    return likelihood_metrics(model, batches, iw_samples, generator=torch.Generator().manual_seed(EVAL_SEED))


TRAINING_HOOKS = ("set_corpus_statistics", "before_update", "before_step", "after_epoch")


def check_remedies(model: KgCVAE) -> None:
    """Remedies that change the training procedure (aggressive inference training, pretraining with
    a decoder re-draw, unigram noising statistics) hook into the sentence-VAE loop only."""
    for remedy in model.objective.remedies:
        hooks = [h for h in TRAINING_HOOKS if getattr(type(remedy), h) is not getattr(Remedy, h)]
        if hooks:
            raise TextVAEError(f"remedy {type(remedy).__name__} uses training-loop hooks ({', '.join(hooks)}) "
                               f"that the dialogue CVAE loop does not run")


def train_cvae(cfg: CVAERunConfig, resume: bool = False, data: Optional[DialogueData] = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run ``out_dir/name``; returns the test report.

    ``data`` may be passed in when several runs share one loaded corpus (a study).
    """
    tc, oc = cfg.train, cfg.optim
    if oc.cycle_lr != "none":
        raise TextVAEError("optim.cycle_lr: cyclical learning rates are not supported by the dialogue loop "
                           "(a cyclical KL schedule is: objective.kl_schedule)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    run_dir = Path(cfg.out_dir) / cfg.name
    ckpt_path = run_dir / CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise TextVAEError(f"--resume: no checkpoint in {run_dir}")
    if not resume and ckpt_path.is_file():
        raise TextVAEError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --name")

    torch.manual_seed(tc.seed)
    data = data or load_dialogue_data(cfg.data)
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    text = {"context_turns": cfg.data.context_turns, "max_turn_words": cfg.data.max_turn_words}
    model = KgCVAE(cfg.model, data.tokenizer.vocab_size, cfg.objective, data.act_names, text).to(device)
    check_remedies(model)
    state = LoopState(lr=oc.lr)
    optimizer = build_optimizer(oc, model, state.lr)
    best_dir = run_dir / "model"
    if resume:
        state = LoopState(**load_checkpoint(ckpt_path, model, optimizer)["loop"])
    else:
        best_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        model.save_pretrained(best_dir, data.tokenizer)
    logger = RunLogger(run_dir, tensorboard=tc.tensorboard)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, model, optimizer, {"loop": dataclasses.asdict(state)})

    n_batches = train_split.num_batches(cfg.data.batch_size)
    while not state.done and state.epoch < tc.epochs:
        model.train()
        batches: Iterator[DialogueBatch] = train_split.batches(
            cfg.data.batch_size, shuffle=True, seed=tc.seed, epoch=state.epoch, pool_batches=cfg.data.bucket_pool,
            start_batch=state.batch_in_epoch)
        bar = tqdm(batches, total=n_batches, initial=state.batch_in_epoch, disable=not tc.progress,
                   desc=f"epoch {state.epoch + 1}/{tc.epochs}", dynamic_ncols=True, leave=False)
        t0, tokens0 = time.perf_counter(), state.train_tokens
        for batch in bar:
            out = model(batch.to(device), step=state.step)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip) if oc.clip > 0 else None
            optimizer.step()
            state.step += 1
            state.batch_in_epoch += 1
            state.train_tokens += int(out.n_tokens.sum())
            if state.step % tc.log_every == 0:
                rec, kl = float(out.rec.detach().mean()), float(out.kl.detach().sum(-1).mean())
                bar.set_postfix(loss=f"{out.loss.item():.2f}", rec=f"{rec:.2f}", kl=f"{kl:.2f}")
                logger.log("train", state.step, state.epoch, loss=out.loss.item(), rec=rec, kl=kl, lr=state.lr,
                           grad_norm=None if grad_norm is None else float(grad_norm),
                           **{k: float(v) for k, v in out.terms.items()})
            if tc.metrics_every and state.step % tc.metrics_every == 0:
                logger.log("valid_metrics", state.step, state.epoch, **cvae_evaluation(
                    model, valid_split, cfg.data.eval_batch_size, device, limit=tc.metrics_sentences))
                model.train()
            if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                checkpoint()
            if tc.max_steps is not None and state.step >= tc.max_steps:
                state.done = True
                break
        bar.close()
        state.train_seconds += time.perf_counter() - t0
        epoch_tokens = state.train_tokens - tokens0
        if not state.done or state.batch_in_epoch == n_batches:
            state.epoch += 1
            state.batch_in_epoch = 0

        # ---- end of epoch: validation at beta = 1, plateau decay with best-model reload ----------
        val = cvae_evaluation(model, valid_split, cfg.data.eval_batch_size, device)
        improved = val["neg_elbo"] < state.best_val
        if improved:
            state.best_val, state.bad_epochs = val["neg_elbo"], 0
            model.save_pretrained(best_dir)
        else:
            state.bad_epochs += 1
        if not improved and state.epoch >= oc.decay_start_epoch and state.bad_epochs >= oc.decay_patience:
            state.lr *= oc.decay_factor
            state.decays += 1
            state.bad_epochs = 0
            if oc.reload_best_on_decay:
                model.load_state_dict(KgCVAE.from_pretrained(best_dir, device).state_dict())
            optimizer = build_optimizer(oc, model, state.lr)
            state.done = state.done or state.decays >= oc.max_decays
        tok_s = epoch_tokens / max(time.perf_counter() - t0, 1e-9)
        logger.log("valid", state.step, state.epoch, lr=state.lr, improved=improved, tokens_per_s=tok_s, **val)
        if tc.progress:
            tqdm.write(f"epoch {state.epoch}: valid -ELBO {val['neg_elbo']:.3f} ELBO-PPL {val['elbo_ppl']:.2f} "
                       f"KL {val['kl']:.3f} lr {state.lr:g} {tok_s:,.0f} tok/s")
        checkpoint()

    report = final_report(cfg, data, best_dir, device)
    logger.log("test", state.step, state.epoch, **report)
    logger.close()
    return report


def final_report(cfg: CVAERunConfig, data: DialogueData, best_dir: Path, device: torch.device) -> dict[str, Any]:
    """Test figures of the best model: likelihood (with IW-NLL) and generation (BLEU, distinct)."""
    model = KgCVAE.from_pretrained(best_dir, device)
    test, ec = data.splits["test"], cfg.eval
    report = cvae_evaluation(model, test, cfg.data.eval_batch_size, device, limit=ec.max_pairs,
                             iw_samples=cfg.train.iw_samples_final)
    generated, _ = evaluate_generation(model, data.tokenizer, test, ec.n_responses, ec.max_contexts, ec.method,
                                       ec.max_len, torch.Generator().manual_seed(EVAL_SEED),
                                       temperature=ec.temperature, top_p=ec.top_p)
    report.update(generated)
    return report


def cmd_train_cvae(argv: list[str]) -> dict[str, Any]:
    """The ``textvae train`` entry for dialogue recipes: parse, train, print the report."""
    from textvae.metrics import format_table

    cfg, resume = parse_cvae_run_config(argv)
    report = train_cvae(cfg, resume=resume)
    print(format_table(report))
    return report
