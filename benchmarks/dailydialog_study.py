"""DailyDialog on a CPU budget: plain CVAE vs CVAE + bag-of-words vs BN-CVAE.

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/dailydialog_study.py [--train-pairs 10000] [--epochs 3]

The three runs share the data, the model sizes, the KL annealing and the seed; they differ only in
``objective.remedies`` (none / ``bow`` / ``bn_vae`` on the means of q(z|x,c) and p(z|c)). Each is
trained by :func:`textvae.tasks.run_training` (the ``dialogue`` task; best validation −ELBO kept) and scored on
test pairs taken at an even stride through the test split: KL(q(z|x,c) || p(z|c)), −ELBO and IW-NLL
of the response given its context, and Zhao et al. (2017)'s BLEU precision / recall and distinct-n
of ``--responses`` greedy responses per context, each decoded from its own z ~ p(z|c). Samples for
three test contexts follow the table.

A reduced setting (sizes, vocabulary, context of 5 turns, a subset of the training pairs, a few
epochs) so that the whole study fits in about 20 minutes on 2 CPU cores; it compares the remedies,
it does not reproduce published numbers. One intra-op thread by default: on a shared machine more
threads than free cores slow torch's RNN kernels down several-fold.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import textvae.remedies.bn_vae  # noqa: F401  (registration)
import textvae.remedies.bow  # noqa: F401
from textvae.config import ObjectiveConfig, TrainConfig
from textvae.data.tokenization import create_tokenizer
from textvae.dialogue.config import (CVAEConfig, CVAERunConfig, DialogueDataConfig, DialogueEvalConfig,
                                     DialogueOptimConfig)
from textvae.dialogue.data import DialogueData, encode_split, read_dialogue_splits
from textvae.dialogue.respond import respond
from textvae.tasks import run_training as train_cvae

VARIANTS = {
    "CVAE": [],
    "CVAE+BoW": [{"name": "bow", "mlp_dim": 256}],
    "BN-CVAE": [{"name": "bn_vae", "gamma": 0.7}],
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-pairs", type=int, default=10000, help="first N training pairs")
    ap.add_argument("--valid-pairs", type=int, default=1000)
    ap.add_argument("--test-pairs", type=int, default=300, help="test pairs for every figure, at an even stride")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--anneal-steps", type=int, default=500, help="KL weight 0 -> 1 over this many steps")
    ap.add_argument("--responses", type=int, default=10, help="responses per test context")
    ap.add_argument("--iw-samples", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="keep the runs here (default: a temporary folder)")
    return ap.parse_args()


def load_data(cfg: DialogueDataConfig, args: argparse.Namespace) -> DialogueData:
    texts, act_names = read_dialogue_splits(cfg)
    test = texts["test"]
    stride = np.linspace(0, len(test.responses) - 1, num=min(args.test_pairs, len(test.responses))).astype(np.int64)
    texts = {"train": texts["train"].head(args.train_pairs), "valid": texts["valid"].head(args.valid_pairs),
             "test": test.subset(stride)}
    tokenizer = create_tokenizer("word", texts["train"].turns, min_freq=cfg.min_freq, max_vocab=cfg.max_vocab)
    return DialogueData(tokenizer, {s: encode_split(s, t, tokenizer) for s, t in texts.items()}, act_names)


def run_config(name: str, remedies: list, data_cfg: DialogueDataConfig, out: str, args: argparse.Namespace
               ) -> CVAERunConfig:
    return CVAERunConfig(
        name=name, out_dir=out, data=data_cfg,
        model=CVAEConfig(emb_dim=96, utterance_hidden=96, context_hidden=192, latent_dim=32, prior_hidden=192,
                         decoder_hidden=192, act_hidden=192),
        objective=ObjectiveConfig(kl_schedule={"name": "linear", "start": 0.0, "end": 1.0,
                                               "warmup_steps": args.anneal_steps}, remedies=remedies),
        optim=DialogueOptimConfig(),  # Adam 1e-3, clip 5, no lr decay
        train=TrainConfig(epochs=args.epochs, seed=args.seed, threads=args.threads, log_every=50, metrics_every=0,
                          iw_samples_final=args.iw_samples, progress=False, tensorboard=False),
        eval=DialogueEvalConfig(n_responses=args.responses, method="greedy", max_len=30))


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    data_cfg = DialogueDataConfig(name="dailydialog", context_turns=5, max_turn_words=30, min_freq=2, max_vocab=4000,
                                  batch_size=32, eval_batch_size=100)
    t_start = time.perf_counter()
    data = load_data(data_cfg, args)
    test = data.splits["test"]
    print(f"pairs: train {len(data.splits['train'])}, valid {len(data.splits['valid'])}, test {len(test)}; "
          f"vocabulary {data.tokenizer.vocab_size}; {args.epochs} epochs; {args.threads} thread(s)", flush=True)

    reports, minutes, samples = {}, {}, {}
    shown = [0, len(test) // 2, len(test) - 1]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        for name, remedies in VARIANTS.items():
            t0 = time.perf_counter()
            run = name.lower().replace("+", "_")
            reports[name] = train_cvae(run_config(run, remedies, data_cfg, out, args), data=data)
            minutes[name] = (time.perf_counter() - t0) / 60
            samples[name] = [respond(Path(out) / run, test.context_texts(p), n=3, max_len=30, show=False)
                             for p in shown]
            r = reports[name]
            print(f"{name}: {minutes[name]:.1f} min, KL {r['kl']:.2f}, -ELBO {r['neg_elbo']:.2f}", flush=True)

    print("\n| model | KL | -ELBO | IW-NLL | BLEU-1 P / R | BLEU-2 P / R | BLEU-4 P / R | dist-2 inter / intra | min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in reports.items():
        print(f"| {name} | {r['kl']:.2f} | {r['neg_elbo']:.2f} | {r['iw_nll']:.2f} "
              + " ".join(f"| {r[f'bleu{k}_precision']:.3f} / {r[f'bleu{k}_recall']:.3f}" for k in (1, 2, 4))
              + f" | {r['distinct_2']:.3f} / {r['intra_dist2']:.3f} | {minutes[name]:.1f} |")
    print(f"\n{len(test)} test pairs; {args.responses} greedy responses per context, z ~ p(z|c); "
          f"IW-NLL with {args.iw_samples} samples; total {(time.perf_counter() - t_start) / 60:.1f} min")

    for i, p in enumerate(shown):
        print(f"\n--- test context {i + 1} (pair {p}) ---")
        for turn in test.context_texts(p)[-3:]:
            print(textwrap.shorten(f"  > {turn}", 110))
        print(textwrap.shorten(f"  reference: {test.response_text(p)}", 110))
        for name in VARIANTS:
            for line in samples[name][i]:
                print(textwrap.shorten(f"  {name:9s} {line}", 110))


if __name__ == "__main__":
    main()
