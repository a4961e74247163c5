"""Issue 15: how far can the draw of the K = 500 importance samples move a row's IW-NLL?

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/iw_mc_error.py RUN [RUN ...] \
        [--sentences 200] [--seeds 1 2] [--iw-samples 500] [--precision bf16] [--threads 1]

For each run folder (its best model), the IW-NLL of ``--sentences`` test sentences spread over the
split, once per seed of the importance samples (``textvae.metrics.iw_nll`` with its own generator),
in the precision of the study's test report. Per run and seed: the subset's IW-NLL, its Monte Carlo
standard error (``iw_estimate``'s delta method, √(Σ var) / n), the weights' effective sample size
(mean and smallest over the sentences), and the standard error this predicts for the whole test
split, √(mean var / N), which is what a study row's ``iw_nll_mc_se`` reads when its test report
computed it; and half the mean variance, the delta method's estimate of how far the IW-NLL sits
above −log p(x) (Jensen; the language model's is exact). With several seeds, the subset IW-NLL's spread across them is printed beside the
predicted one: the delta method is first-order and reads low where the weights are heavy-tailed (a
small ESS; ``tests/test_metrics.py``).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time


def evaluate_run(run: str, args: argparse.Namespace) -> list[dict]:
    import torch

    from textvae.cli import load_model_dir
    from textvae.config import DataConfig, from_dict
    from textvae.data.datasets import load_dataset
    from textvae.metrics import iw_nll
    from textvae.training.train import freed_memory_kept, precision_autocast

    model, tokenizer, run_cfg = load_model_dir(run)
    data_cfg = from_dict(DataConfig, run_cfg["data"])
    data_cfg.max_sentences = None
    test = load_dataset(data_cfg, tokenizer=tokenizer).splits["test"]
    n = min(args.sentences, len(test))
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        with freed_memory_kept(), precision_autocast(torch.device("cpu"), args.precision):
            res = iw_nll(model, lambda: test.batches(64, limit=n), n_samples=args.iw_samples,
                         generator=torch.Generator().manual_seed(seed))
        mean_var = float(res.mc_var.mean())
        rows.append({"seed": seed, "n": n, "iw_nll": res.nll_mean, "mc_se": res.nll_mc_se,
                     "ess_mean": res.ess_mean, "ess_min": float(res.ess.min()),
                     "se_full": math.sqrt(mean_var / len(test)), "bias": mean_var / 2,
                     "seconds": time.perf_counter() - start})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (their best model and configuration)")
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--iw-samples", type=int, default=500)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    print(f"K = {args.iw_samples}, {args.precision}, {args.threads} thread(s)")
    print(f"{'run':<28} {'seed':>4} {'n':>5} {'IW-NLL':>9} {'MC se':>7} {'ESS mean':>9} {'ESS min':>8} "
          f"{'se, whole test':>15} {'bias ~ var/2':>13} {'s':>6}")
    for run in args.runs:
        rows = evaluate_run(run, args)
        name = os.path.basename(os.path.dirname(run.rstrip("/"))) or run
        for r in rows:
            print(f"{name:<28} {r['seed']:>4} {r['n']:>5} {r['iw_nll']:>9.3f} {r['mc_se']:>7.4f} {r['ess_mean']:>9.1f} "
                  f"{r['ess_min']:>8.1f} {r['se_full']:>15.4f} {r['bias']:>13.4f} {r['seconds']:>6.0f}")
        if len(rows) > 1:
            spread = statistics.stdev(r["iw_nll"] for r in rows)
            print(f"{'':<28} sd of the subset IW-NLL over {len(rows)} seeds: {spread:.4f} "
                  f"(predicted {statistics.mean(r['mc_se'] for r in rows):.4f})")


if __name__ == "__main__":
    main()
