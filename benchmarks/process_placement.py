"""Issue 18, thread placement: one training process with T threads against T data-parallel
processes (``torchrun``, gloo) with one thread each, on the same recipe, alternating.

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/process_placement.py \
        [--recipe recipes/ptb/vae.yaml] [--cores 2] [--steps 200] [--rounds 2] [--precision bf16]

Each run is ``textvae train RECIPE --train.max_steps STEPS`` in a scratch folder (no IW pass);
the figure is the loop's own ``train_tokens_per_s`` (all ranks' tokens over the training loop's
time, first steps included, the same for both). Data-parallel runs use dense embedding gradients
(sparse ones are one-process only) and all-reduce every gradient each step; the one-process run
splits each GEMM over its threads. Print: tok/s per round, median, ratio.

Measured 2026-12-04, every other process stopped, 2 cores (``--steps 200 --rounds 2``, bf16,
recipes/ptb/vae.yaml): one process x 2 threads 8,326 / 8,353 tok/s; 2 processes x 1 thread
5,337 / 5,385 (0.64x). The per-step all-reduce of ~8M dense gradients over gloo costs more than
two threads lose inside the small GEMMs: not a lever on a CPU; one process per machine stays the
way to use its cores (and ``textvae study --jobs N`` one run per core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from textvae.study import finished_report

HERE = Path(__file__).resolve().parent


def train(mode: str, args: argparse.Namespace, folder: Path, name: str) -> float:
    """One run; its training tokens per second."""
    threads = args.cores if mode == "threads" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    launcher = ([sys.executable, "-m", "textvae.cli"] if mode == "threads" else
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.cores),
                 "-m", "textvae.cli"])
    cmd = [*launcher, "train", args.recipe, "--train.max_steps", str(args.steps), "--train.threads", str(threads),
           "--train.precision", args.precision, "--train.iw_samples_final", "0", "--train.progress", "false",
           "--train.tensorboard", "false", "--train.metrics_every", "0", "--out_dir", str(folder), "--name", name]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return float(finished_report(folder / name)["train_tokens_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(HERE.parent / "textvae" / "recipes" / "ptb" / "vae.yaml"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    args = ap.parse_args()
    modes = {"threads": f"1 process x {args.cores} threads", "ranks": f"{args.cores} processes x 1 thread (DDP)"}
    figures: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for mode in modes:
                figures[mode].append(train(mode, args, Path(scratch), f"{mode}{r}"))
    print(f"\n{Path(args.recipe).name}, {args.precision}, {args.steps} steps, {args.rounds} rounds, "
          f"{os.getloadavg()[0]:.2f} load (1 min) after")
    base = statistics.median(figures["threads"])
    for mode, label in modes.items():
        med = statistics.median(figures[mode])
        print(f"{label:<34} {' / '.join(f'{x:,.0f}' for x in figures[mode]):<24} median {med:,.0f} tok/s "
              f"({med / base:.2f}x)")


if __name__ == "__main__":
    main()
