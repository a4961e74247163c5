"""Issue 3 demo: ``textvae evaluate`` on a short PTB VAE run and a short synthetic run, and KL / MI /
AU over training time read back from the runs' metrics.jsonl.

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/evaluate_demo.py [--out out/evaluate_demo]

PTB: ``recipes/ptb/vae.yaml`` unchanged except for a step cap (``--ptb-steps``); synthetic: the
embedded recipe capped the same way. Both log validation metrics every ``--metrics-every`` steps
(the machine is shared: the defaults keep the whole demo to a few minutes).
Each run is then evaluated on an evenly spread subset of its test split (IW-NLL on PTB costs
~K × tokens decoder steps per sentence, so K and the subset are kept small on a CPU).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from textvae.cli import main as textvae_main
from textvae.training.logger import read_jsonl
from textvae.tasks import run_training
from textvae.tasks.runconfig import default_recipe, parse_run_config


def train(recipe: str, out: str, steps: int, metrics_every: int, metrics_sentences: int, threads: int) -> Path:
    cfg, _ = parse_run_config([recipe, "--out_dir", out, "--train.max_steps", str(steps),
                               "--train.metrics_every", str(metrics_every),
                               "--train.metrics_sentences", str(metrics_sentences),
                               "--train.iw_samples_final", "0", "--train.progress", "false",
                               "--train.tensorboard", "false", "--train.threads", str(threads)])
    run_dir = Path(out) / cfg.name
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    run_training(cfg)
    print(f"trained {cfg.name}: {steps} steps in {time.perf_counter() - start:.0f} s")
    return run_dir


def latent_curve(run_dir: Path, metrics_sentences: int) -> None:
    """KL, MI and AU of the validation subset at each logged step."""
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["split"] == "valid_metrics"]
    print(f"\n{run_dir.name}: validation figures during training ({metrics_sentences} valid sentences "
          f"spread over the split, beta = 1)")
    print(f"{'step':>6} {'-ELBO':>8} {'rec':>8} {'KL':>7} {'MI batch':>8} {'MI set':>7} {'AU':>4}")
    for r in rows:
        print(f"{r['step']:>6} {r['neg_elbo']:>8.2f} {r['rec']:>8.2f} {r['kl']:>7.3f} {r['mi_batch']:>8.3f} "
              f"{r['mi_dataset']:>7.3f} {r['au']:>4.0f}")


def evaluate(run_dir: Path, *flags: str) -> None:
    argv = ["evaluate", str(run_dir), *flags]
    print(f"\n$ textvae {' '.join(argv)}")
    start = time.perf_counter()
    textvae_main(argv)
    print(f"({time.perf_counter() - start:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/evaluate_demo")
    ap.add_argument("--ptb-steps", type=int, default=120)
    ap.add_argument("--synthetic-steps", type=int, default=400)
    ap.add_argument("--metrics-every", type=int, default=40)
    ap.add_argument("--metrics-sentences", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = [train(recipe, args.out, steps, args.metrics_every, args.metrics_sentences, args.threads)
            for recipe, steps in (("recipes/ptb/vae.yaml", args.ptb_steps), (default_recipe(), args.synthetic_steps))]
    evaluate(runs[0], "--max-sentences", "60", "--iw-samples", "100", "--gen-sentences", "100")
    evaluate(runs[1], "--max-sentences", "300", "--iw-samples", "500", "--gen-sentences", "300")
    for run_dir in runs:
        latent_curve(run_dir, args.metrics_sentences)


if __name__ == "__main__":
    main()
