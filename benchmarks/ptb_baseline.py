"""Issue 2 figures: PTB LM and VAE recipes, training tokens/s, padding fraction, valid ELBO-PPL
after 1 and 3 epochs on this CPU.

    TEXTVAE_DATA_DIR=../shared/data python benchmarks/ptb_baseline.py [--epochs 3] [--out out/bench_ptb]

Runs ``textvae train recipes/ptb/{lm,vae}.yaml`` unchanged except for the epoch budget, then reads
the runs' metrics.jsonl.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from textvae.tasks.runconfig import parse_run_config
from textvae.training.logger import read_jsonl
from textvae.tasks import run_training


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="out/bench_ptb")
    ap.add_argument("--recipes", nargs="+", default=["recipes/ptb/lm.yaml", "recipes/ptb/vae.yaml"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for recipe in args.recipes:
        cfg, _ = parse_run_config([recipe, "--out_dir", args.out, "--train.epochs", str(args.epochs),
                                   "--train.iw_samples_final", "0", "--train.metrics_every", "0",
                                   "--train.progress", "false", "--train.threads", str(args.threads)])
        shutil.rmtree(Path(args.out) / cfg.name, ignore_errors=True)
        run_training(cfg)
        log = read_jsonl(Path(args.out) / cfg.name / "metrics.jsonl")
        padding = next(r["padding_fraction"] for r in log if r["split"] == "data")
        valid = [r for r in log if r["split"] == "valid"]
        for r in valid:
            rows.append((cfg.name, r["epoch"], r["tokens_per_s"], padding, r["elbo_ppl"], r["neg_elbo"],
                         r.get("kl", 0.0)))
    print(f"{'run':<10} {'epoch':>5} {'train tok/s':>11} {'padding':>8} {'valid ELBO-PPL':>14} "
          f"{'valid -ELBO':>11} {'KL':>6}")
    for name, epoch, tok_s, pad, ppl, nelbo, kl in rows:
        print(f"{name:<10} {epoch:>5} {tok_s:>11,.0f} {pad:>8.2%} {ppl:>14.2f} {nelbo:>11.2f} {kl:>6.2f}")


if __name__ == "__main__":
    main()
