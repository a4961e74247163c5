"""Issue 15: how far can the draw of the K = 500 importance samples move a row's IW-NLL, and does
the standard error textvae prints beside it say so?

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/iw_mc_error.py RUN [RUN ...] \
        [--sentences 100] [--groups 8] [--iw-samples 500] [--precision bf16] [--threads 1]

For each run folder (its best model), on ``--sentences`` test sentences spread over the split, in
the precision of the study's test report:

* **textvae's figure**: ``textvae.metrics.iw_nll`` with every batch drawn twice (``check_every=1``),
  its ``nll_mc_se`` and the weights' effective sample size (mean and smallest over the sentences);
* **the reference**: G = ``--groups`` independent draws of K samples of every sentence, taken as one
  draw of G·K: the sample variance of the G estimates, per sentence, averaged;
* **the delta method** for comparison: Var(e^w) / (K · E[e^w]²) read off each draw's own K weights,
  (K / ESS − 1) / (K − 1), averaged over sentences and draws (what a within-draw estimate gives; not
  textvae's figure);
* **the bias**: how far the K-sample IW-NLL sits above the G·K-sample one, times G / (G − 1) (the
  bias taken as ∝ 1 / K): an estimate of how far the IW-NLL at K sits above −log p(x).

Each variance is printed as the standard error it gives the whole test split, √(v̄ / N).

Measured 2026-12-05 (``--sentences 100 --groups 8``, one thread, beside the study's two training runs;
docs/results/ptb/iw_mc_error.md), K = 500, bf16:

    run                         n   IW-NLL ESS mean ESS min se textvae se reference se delta   bias
    pretrain_fb_lambda6_5     100   95.579     15.1     1.0     0.0121       0.0095   0.0061  0.211
    bn_vae                    100   98.076     18.4     1.3     0.0087       0.0082   0.0056  0.135
    pretrain_fb               100   96.216     21.7     1.6     0.0080       0.0067   0.0049  0.098
"""
from __future__ import annotations

import argparse
import math
import os
import time


def measure(run: str, args: argparse.Namespace) -> dict:
    import torch

    from textvae.config import DataConfig, from_dict
    from textvae.data.datasets import load_dataset
    from textvae.metrics import iw_log_weights, iw_nll
    from textvae.metrics._common import eval_mode, seeded
    from textvae.pretrained import load
    from textvae.training.train import freed_memory_kept, precision_autocast

    loaded = load(run)
    model, tokenizer, run_cfg = loaded.model, loaded.tokenizer, loaded.run_config
    data_cfg = from_dict(DataConfig, run_cfg["data"])
    data_cfg.max_sentences = None
    test = load_dataset(data_cfg, tokenizer=tokenizer).splits["test"]
    n, k, g = min(args.sentences, len(test)), args.iw_samples, args.groups
    start = time.perf_counter()
    with freed_memory_kept(), precision_autocast(torch.device("cpu"), args.precision):
        ours = iw_nll(model, lambda: test.batches(64, limit=n), n_samples=k, check_every=1,
                      generator=torch.Generator().manual_seed(1))
        draws = []  # per batch [G, K, B]
        with eval_mode(model), seeded(torch.Generator().manual_seed(2)):
            for batch in test.batches(64, limit=n):
                draws.append(iw_log_weights(model, batch, model.encode(batch), g * k).double().view(g, k, -1))
    log_w = torch.cat(draws, dim=2)  # [G, K, N]
    per_draw = torch.logsumexp(log_w, dim=1) - math.log(k)  # [G, N]
    pooled = torch.logsumexp(log_w.flatten(0, 1), dim=0) - math.log(g * k)  # [N]
    sum_sq = torch.exp(torch.logsumexp(2 * log_w, dim=1) - 2 * torch.logsumexp(log_w, dim=1))  # Σ p², [G, N]
    whole = len(test)
    return {"n": n, "iw_nll": ours.nll_mean, "ess_mean": ours.ess_mean, "ess_min": float(ours.ess.min()),
            "se_ours": ours.nll_mc_se * math.sqrt(n / whole),
            "se_reference": math.sqrt(float(per_draw.var(dim=0).mean()) / whole),
            "se_delta": math.sqrt(float(((k * sum_sq - 1) / (k - 1)).mean()) / whole),
            "bias": float((pooled - per_draw.mean(dim=0)).mean()) * g / (g - 1), "whole": whole,
            "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (their best model and configuration)")
    ap.add_argument("--sentences", type=int, default=100)
    ap.add_argument("--groups", type=int, default=8, help="independent draws of K for the reference variance")
    ap.add_argument("--iw-samples", type=int, default=500)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"K = {args.iw_samples}, {args.groups} reference draws, {args.precision}, {args.threads} thread(s); "
          "se: of the whole test split's mean IW-NLL")
    print(f"{'run':<24} {'n':>4} {'IW-NLL':>8} {'ESS mean':>8} {'ESS min':>7} {'se textvae':>10} {'se reference':>12} "
          f"{'se delta':>8} {'bias':>6} {'s':>5}")
    for run in args.runs:
        r = measure(run, args)
        name = os.path.basename(os.path.dirname(os.path.abspath(run)))
        print(f"{name:<24} {r['n']:>4} {r['iw_nll']:>8.3f} {r['ess_mean']:>8.1f} {r['ess_min']:>7.1f} "
              f"{r['se_ours']:>10.4f} {r['se_reference']:>12.4f} {r['se_delta']:>8.4f} {r['bias']:>6.3f} "
              f"{r['seconds']:>5.0f}")


if __name__ == "__main__":
    main()
