"""Training a dialogue CVAE: the loop of :mod:`textvae.training.train` for (context, response) pairs.

    textvae train recipes/dailydialog/cvae.yaml [--section.key value ...] [--resume]

The sentence loop's parts and helpers, in one process: optimiser, plateau lr decay with best-model
reload, per-cycle lr with a cyclical KL schedule, bf16 autocast, the remedies' training-procedure hooks (through
:class:`CVAETrainer`), a stop before any non-finite update, resumable checkpoints and
``metrics.jsonl`` logs, an evaluation RNG apart from the training one. The validation loss is
−ELBO at β = 1 of the responses given their contexts; the final report adds IW-NLL and Zhao et al.
(2017)'s BLEU / distinct figures on the test split (:mod:`textvae.dialogue.metrics`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import yaml
from tqdm import tqdm

from textvae.config import from_dict
from textvae.data.batching import BucketBatchSampler
from textvae.dialogue.config import CVAERunConfig
from textvae.dialogue.data import DialogueBatch, DialogueData, DialogueSplit, load_dialogue_data
from textvae.dialogue.metrics import evaluate_generation, likelihood_metrics
from textvae.dialogue.model import KgCVAE
from textvae.errors import TextVAEError
from textvae.models.textvae import set_sparse_embeddings
from textvae.schedules import cycle_fraction, cycle_restart
from textvae.training.checkpoint import read_checkpoint, rng_state, save_checkpoint
from textvae.training.distributed import World
from textvae.training.logger import RunLogger
from textvae.training.progress import SmoothedLoss
from textvae.training.train import (CHECKPOINT, EVAL_SEED, LoopState, LoopTrainer, build_optimizer, check_config,
                                    check_run_dir, clip_gradients, describe_nonfinite, nonfinite_figures,
                                    plateau_update, resolve_device, restore_run, set_lr, sparse_gradients_apply,
                                    warn_about_settings)

TASK = "dialogue"


def names_dialogue_recipe(argv: list[str]) -> bool:
    """True when the recipe of ``textvae train`` arguments (the first argument, or the one after
    ``--config``) is a YAML file saying ``task: dialogue`` (a run's saved config.yaml says so too)."""
    if argv and not argv[0].startswith("-"):
        path = argv[0]
    elif "--config" in argv[:-1]:
        path = argv[argv.index("--config") + 1]
    else:
        return False
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False  # the sentence-VAE parser reports unreadable recipes
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


class CVAETrainer(LoopTrainer):
    """The :class:`~textvae.remedies.Trainer` view of the dialogue loop: the inference network is
    q(z|x,c)'s; re-drawing the decoder (``pretraining``) is not supported (it shares its embedding
    with the utterance encoder)."""

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.inference_parameters()

    def reinit_decoder(self) -> None:
        raise TextVAEError("re-initialising the decoder (remedy 'pretraining') is not supported for the dialogue CVAE")


def train_cvae(cfg: CVAERunConfig, resume: bool = False, data: Optional[DialogueData] = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the run ``out_dir/name``; returns the test report.

    One process (no ``torchrun``). ``data`` may be passed in when several runs share one loaded
    corpus (a study); it must be what ``cfg.data`` describes.
    """
    tc, oc = cfg.train, cfg.optim
    check_config(cfg)  # type: ignore[arg-type]  (every section's ranges; the train and optim names)
    if tc.sampled_softmax:
        raise TextVAEError("train.sampled_softmax is a lever of the sentence VAE's loss; the dialogue "
                           "CVAE trains with the full softmax (leave it at 0)")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device, world = resolve_device(tc.device), World()
    run_dir = Path(cfg.out_dir) / cfg.name
    ckpt_path, best_dir = run_dir / CHECKPOINT, run_dir / "model"
    check_run_dir(run_dir, resume)

    torch.manual_seed(tc.seed)
    data = data or load_dialogue_data(cfg.data)
    train_split, valid_split = data.splits["train"], data.splits["valid"]
    warn_about_settings(cfg, len(train_split))
    text = {"context_turns": cfg.data.context_turns, "max_turn_words": cfg.data.max_turn_words}
    model = KgCVAE(cfg.model, data.tokenizer.vocab_size, cfg.objective, data.act_names, text).to(device)
    remedies = list(model.objective.remedies)
    state = LoopState(lr=oc.lr)
    set_sparse_embeddings(model, sparse_gradients_apply(cfg, world))  # type: ignore[arg-type]
    optimizer = build_optimizer(oc, model, state.lr)
    if resume:
        ckpt = read_checkpoint(ckpt_path)
        state, changes = restore_run(ckpt, cfg, model, optimizer, world, device)
        log_bytes = ckpt.meta["log_bytes"]
    else:
        changes, log_bytes = {}, 0
        responses = np.concatenate([train_split.ids[r] for r in train_split.responses])
        unigram = torch.bincount(torch.from_numpy(responses).long(), minlength=data.tokenizer.vocab_size)
        for remedy in remedies:
            remedy.set_corpus_statistics(unigram.to(device))
        best_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        model.save_pretrained(best_dir, data.tokenizer)
    logger = RunLogger(run_dir, tensorboard=tc.tensorboard, truncate_to=log_bytes,
                       purge_step=state.step + 1 if resume else None)
    if changes:
        logger.log("resume", state.step, state.epoch, changed={k: list(v) for k, v in changes.items()})
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    eval_plan = BucketBatchSampler(train_split.lengths, cfg.data.batch_size, shuffle=False).epoch_batches(0)
    trainer = CVAETrainer(model, optimizer, state, oc.clip, lambda: train_split.batch(
        eval_plan[int(torch.randint(len(eval_plan), ()))]).to(device))

    def checkpoint() -> None:
        meta = {"loop": dataclasses.asdict(state), "config": cfg.to_dict(), "log_bytes": logger.offset()}
        save_checkpoint(ckpt_path, model, optimizer, meta, rng_states=[rng_state(device)])

    n_batches = train_split.num_batches(cfg.data.batch_size)
    if not resume:
        checkpoint()
    smoothed = SmoothedLoss()
    while not state.done and state.epoch < tc.epochs and (tc.max_steps is None or state.step < tc.max_steps):
        model.train()
        batches: Iterator[DialogueBatch] = train_split.batches(
            cfg.data.batch_size, shuffle=True, seed=tc.seed, epoch=state.epoch, pool_batches=cfg.data.bucket_pool,
            start_batch=state.batch_in_epoch)
        bar = tqdm(batches, total=n_batches, initial=state.batch_in_epoch, disable=not tc.progress,
                   desc=f"epoch {state.epoch + 1}/{tc.epochs}", dynamic_ncols=True, leave=False)
        t0, tokens0 = time.perf_counter(), state.train_tokens
        for batch in bar:
            if oc.cycle_lr != "none":  # as the sentence loop: per-cycle lr with a cyclical KL schedule
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
            grad_norm = clip_gradients(model, oc.clip if oc.clip > 0 else math.inf)
            bad = nonfinite_figures(out, grad_norm, world)
            if bad:
                logger.log("nonfinite", state.step + 1, state.epoch, terms=bad)
                raise TextVAEError(f"non-finite {describe_nonfinite(bad[0], remedies)} at step {state.step + 1}; "
                                   f"the update was not applied; resume {run_dir} with --resume and a lower --optim.lr")
            for remedy in remedies:
                remedy.before_step(trainer)
            optimizer.step()
            state.step += 1
            state.batch_in_epoch += 1
            state.train_tokens += int(out.n_tokens.sum())
            if state.step % tc.log_every == 0:
                figures = {"loss": out.loss.item(), "rec": float(out.rec.detach().mean()),
                           "kl": float(out.kl.detach().sum(-1).mean()), **{k: float(v) for k, v in out.terms.items()}}
                loss_per_token = smoothed.add(figures["loss"], out.n_tokens.shape[0], int(out.n_tokens.sum()))
                bar.set_postfix({"loss/token": f"{loss_per_token:.3f}", "kl": f"{figures['kl']:.2f}"})
                logger.log("train", state.step, state.epoch, lr=optimizer.param_groups[0]["lr"],
                           grad_norm=float(grad_norm), **figures)
            if tc.metrics_every and state.step % tc.metrics_every == 0:
                logger.log("valid_metrics", state.step, state.epoch, **cvae_evaluation(
                    model, valid_split, cfg.data.eval_batch_size, device, limit=tc.metrics_sentences))
                model.train()
            if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                checkpoint()
            if tc.max_steps is not None and state.step >= tc.max_steps:
                break
        bar.close()
        tok_s, epoch_complete = state.end_pass(t0, tokens0, n_batches)

        # ---- validation at beta = 1; plateau decay with best-model reload ----------------------------
        val = cvae_evaluation(model, valid_split, cfg.data.eval_batch_size, device)
        improved, decayed = plateau_update(
            state, val["neg_elbo"], epoch_complete, oc,
            save_best=lambda: model.save_weights(best_dir),  # config.json and tokenizer.json stay as written at start
            reload_best=lambda: model.load_state_dict(KgCVAE.from_pretrained(best_dir, device).state_dict()))
        if decayed:
            optimizer = trainer.optimizer = build_optimizer(oc, model, state.lr)
        if epoch_complete:
            for remedy in remedies:
                val.update(remedy.after_epoch(trainer, state.epoch, val))
        logger.log("valid", state.step, state.epoch, lr=state.lr, improved=improved, tokens_per_s=tok_s, **val)
        if tc.progress:
            tqdm.write(f"epoch {state.epoch}: valid -ELBO {val['neg_elbo']:.3f}  ELBO-PPL {val['elbo_ppl']:.2f}  "
                       f"KL {val['kl']:.3f}  lr {state.lr:g}  {tok_s:,.0f} tok/s")
        checkpoint()

    report = final_report(cfg, data, best_dir, device)
    report["train_seconds"] = state.train_seconds
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
    from textvae.training.epilogue import run_epilogue

    cfg, resume = parse_cvae_run_config(argv)
    report = train_cvae(cfg, resume=resume)
    print(format_table(report))
    print(run_epilogue(Path(cfg.out_dir) / cfg.name, report, cfg.objective.remedies))
    return report
