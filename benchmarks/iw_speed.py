"""Issue 3 figures: speed and memory of the importance-weighted NLL (K = 500) on PTB test.

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/iw_speed.py [--batches 2] [--model RUN/model]

Compares, on the same test sentences (whole batches of the evaluation plan of the split, so with
the padding a full evaluation has) and the same model (default: an untrained 256/256/32 LSTM-VAE
with the PTB vocabulary; ``--model`` takes a saved one):

* ``batched``: :func:`textvae.metrics.likelihood.iw_log_marginal`, whole length-sorted batches of
  sentences, S samples per decoder call with S·B·T <= max_tokens;
* ``reference``: what the published code does (He et al. 2019, ``nll_iw``): one sentence at a
  time, K samples in chunks of 100, each chunk re-encoding the sentence, sampling, and one decoder
  pass over the sentence repeated, scored with the plain ``F.linear`` + ``F.cross_entropy`` (the
  full [100·T, V] logits); the model's fused loss is switched off for it;
* ``batched bf16``: the batched method under bfloat16 autocast (recurrent and output GEMMs in bf16;
  posterior head, KL and softmax statistics in fp32), with its own agreement with the reference.

All are run in fresh subprocesses (one per method and repeat) so each one's peak resident memory
(ru_maxrss) is its own; the peak after loading the data is printed too, so that the IW pass is
seen to set the peak. The machine is shared: each timing is the best of ``--repeats`` runs. Then
peak memory against K at a fixed budget, and speed / memory against the budget (the choice of
``DEFAULT_MAX_TOKENS``).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb() -> float:
    """Resident memory of this process now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


def _peak_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is in kB on Linux), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One method on one set of sentences, in this (fresh) process; returns timings and NLLs."""
    import torch

    from textvae.config import DataConfig, ModelConfig
    from textvae.data.datasets import load_dataset
    from textvae.metrics._common import eval_mode
    from textvae.metrics.likelihood import iw_log_marginal
    from textvae.models.textvae import TextVAE

    torch.set_num_threads(job["threads"])
    if job["model"]:
        from textvae.data.tokenization import Tokenizer
        from textvae.models.textvae import TOKENIZER_FILE

        model = TextVAE.from_pretrained(job["model"])
        tokenizer = Tokenizer.load(Path(job["model"]) / TOKENIZER_FILE)
        data = load_dataset(DataConfig(name=job["data"]), tokenizer=tokenizer)
    else:
        data = load_dataset(DataConfig(name=job["data"]))
        torch.manual_seed(0)
        model = TextVAE(ModelConfig(), data.tokenizer.vocab_size)
    split = data.splits[job["split"]]
    # Whole batches of the evaluation plan of the full split (sorted by length), evenly spaced
    # (the middle of each of ``batches`` equal parts): the padding is that of a full evaluation.
    plan = list(split.sampler(job["batch_size"]))
    n = job["batches"]
    chosen = [plan[(2 * i + 1) * len(plan) // (2 * n)] for i in range(n)]
    k = job["samples"]
    torch.manual_seed(job["seed"])
    nll: dict[int, float] = {}
    rss_before, load_peak = _rss_mb(), _peak_mb()
    start = time.perf_counter()
    bf16 = job["method"] == "batched-bf16"
    with eval_mode(model), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if job["method"].startswith("batched"):
            for index in chosen:
                batch = split.batch(index)
                values = -iw_log_marginal(model, batch, model.encode(batch), k, job["max_tokens"])
                nll.update(zip(batch.index.tolist(), values.tolist()))
        else:
            model.fused_loss = False
            for i in np.concatenate(chosen).tolist():
                batch = split.batch([i])
                log_w = []
                for first in range(0, k, job["chunk"]):
                    posterior = model.encode(batch)
                    z = posterior.rsample(min(job["chunk"], k - first))  # [S, 1, D]
                    log_w.append(model.log_likelihood(batch, z) + model.prior.log_prob(z)
                                 - posterior.log_prob(z))
                nll[i] = -float(torch.logsumexp(torch.cat(log_w), 0) - math.log(k))
    seconds = time.perf_counter() - start
    positions = np.concatenate(chosen)
    tokens = int(split.lengths[positions].sum() - len(positions))  # words + </s>
    padded = sum(len(b) * int(split.lengths[b].max() - 1) for b in chosen)
    return {"seconds": seconds, "nll": nll, "tokens": tokens, "padding": 1 - tokens / padded,
            "rss_before_mb": rss_before, "load_peak_mb": load_peak, "peak_mb": _peak_mb(),
            "vocab": model.vocab_size, "hidden": model.decoder.out_dim}


def run_job(**job: Any) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], check=True,
                         capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["nll"] = {int(i): v for i, v in result["nll"].items()}
    return result


def best_of(repeats: int, **job: Any) -> dict[str, Any]:
    """The fastest of ``repeats`` runs (the machine is shared) and the largest peak memory."""
    runs = [run_job(**job) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [r["seconds"] for r in runs]
    best["peak_mb"] = max(r["peak_mb"] for r in runs)
    return best


def main() -> None:
    from textvae.metrics.likelihood import DEFAULT_MAX_TOKENS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="ptb")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="", help="saved model folder (default: untrained 256/256/32)")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--batches", type=int, default=2, help="evaluation batches scored, evenly spaced")
    ap.add_argument("--samples", type=int, default=500, help="K")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS["cpu"])
    ap.add_argument("--chunk", type=int, default=100, help="reference: samples per decoder pass")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep-batches", type=int, default=1)
    ap.add_argument("--sweep-k", type=int, nargs="*", default=[50, 500, 2000])
    ap.add_argument("--sweep-budgets", type=int, nargs="*", default=[1024, 4096, 16384])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    common = dict(data=args.data, split=args.split, model=args.model, threads=args.threads,
                  batch_size=args.batch_size, chunk=args.chunk, seed=0)

    # ---- batched vs one sentence at a time, K = --samples ------------------------------------
    ours = best_of(args.repeats, method="batched", batches=args.batches, samples=args.samples,
                   max_tokens=args.max_tokens, **common)
    ours16 = best_of(args.repeats, method="batched-bf16", batches=args.batches, samples=args.samples,
                     max_tokens=args.max_tokens, **common)
    ref = best_of(args.repeats, method="reference", batches=args.batches, samples=args.samples,
                  max_tokens=args.max_tokens, **common)
    ids = sorted(ref["nll"])
    assert ids == sorted(ours["nll"]) == sorted(ours16["nll"]), "the methods scored different sentences"
    flops = 2 * ours["hidden"] * ours["vocab"]  # output projection per (token, sample)
    print(f"model: {args.model or 'untrained 256/256/32 LSTM-VAE'}, vocabulary {ours['vocab']}; "
          f"{len(ids)} {args.data} {args.split} sentences ({args.batches} evaluation batches of "
          f"{args.batch_size}, {ours['tokens']} tokens, padding {ours['padding']:.1%}), K = {args.samples}, "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"{'method':<38} {'sent/s':>7} {'seconds':>8} {'tok*K/s':>8} {'proj GFLOP/s':>12} "
          f"{'base MB':>8} {'peak MB':>8}")
    for name, r in ((f"batched (max_tokens={args.max_tokens})", ours),
                    (f"batched bf16 (max_tokens={args.max_tokens})", ours16),
                    (f"reference (1 sentence, chunks of {args.chunk})", ref)):
        rate = r["tokens"] * args.samples / r["seconds"]
        print(f"{name:<38} {len(ids) / r['seconds']:>7.3f} {r['seconds']:>8.1f} {rate:>8.0f} "
              f"{rate * flops / 1e9:>12.1f} {r['rss_before_mb']:>8.0f} {r['peak_mb']:>8.0f}")
    for name, r in (("batched", ours), ("batched bf16", ours16)):
        diff = np.array([r["nll"][i] - ref["nll"][i] for i in ids])
        stderr = diff.std(ddof=1) / math.sqrt(len(diff))
        print(f"{name}: speed-up {ref['seconds'] / r['seconds']:.2f}x over the reference (all runs: "
              f"{', '.join(f'{s:.1f}' for s in r['all_seconds'])} s; reference "
              f"{', '.join(f'{s:.1f}' for s in ref['all_seconds'])} s); per-sentence IW-NLL - reference: "
              f"mean {diff.mean():+.4f} nats, standard error {stderr:.4f} "
              f"({diff.mean() / stderr if stderr > 0 else 0.0:+.2f} s.e.)")
    print(f"mean NLL (reference) {np.mean([ref['nll'][i] for i in ids]):.3f}")

    # ---- peak memory against K at a fixed budget, then speed and memory against the budget ------
    sweep = dict(common, method="batched", batches=args.sweep_batches)
    print(f"\n{'K':>6} {'max_tokens':>10} {'sent/s':>7} {'base MB':>8} {'load peak':>9} {'peak MB':>8} "
          f"{'IW pass MB':>10} {'logits MB':>9}   ({args.sweep_batches} batch of {args.batch_size}, 1 run each)")
    for k, budget in [(k, args.max_tokens) for k in args.sweep_k] + \
                     [(args.samples, b) for b in args.sweep_budgets if b != args.max_tokens]:
        r = run_job(samples=k, max_tokens=budget, **sweep)
        print(f"{k:>6} {budget:>10} {len(r['nll']) / r['seconds']:>7.3f} {r['rss_before_mb']:>8.0f} "
              f"{r['load_peak_mb']:>9.0f} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['rss_before_mb']:>10.0f} "
              f"{budget * r['vocab'] * 4 / 2**20:>9.0f}")


if __name__ == "__main__":
    main()
