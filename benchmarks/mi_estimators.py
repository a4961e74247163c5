"""Issue 15, item 1: the MI estimators against posteriors whose MI is known.

    python benchmarks/mi_estimators.py [--seeds 20]

Three families of diagonal-Gaussian posteriors, each over ``--seeds`` draws of z (and of the
family where it is random), the per-batch estimators over groups of 100 (``textvae evaluate`` uses groups
of 32, He et al.'s batch, ``HE2019_BATCH``; the whole-set estimator does not depend on the grouping):

* x-independent: q(z|x) = N(m, diag s²) with the same m, s for every sentence; N = 500, D = 32
  (PTB's latent). I = 0.
* Gaussian family: μ_i ~ N(0, I_2), σ = 1, N = 2000. I = log 2 = 0.693.
* autoencoder: μ_i ~ N(0, 100 I_4), σ = 0.1 (codes far apart), N = 500. I = 2·log(1 + 10⁴) = 18.4,
  far above what any estimator over N sentences can show (log N = 6.21).

Prints mean ± sd over the seeds and the largest value of each estimator: ``mi_dataset`` (textvae's
reported MI), ``mi_batch`` (per batch) and ``mi_batch_he2019`` (He et al.'s as published, the
closed-form entropy beside one sampled log q(z)), with the published estimator's noise floor
sd √(D / 2N).
"""
from __future__ import annotations

import argparse
import math
import statistics

import torch

from textvae.metrics import he2019_noise_sd, mi_batch, mi_batch_he2019, mi_dataset
from textvae.models.distributions import DiagGaussian

BATCH = 100


def family(name: str, seed: int) -> tuple[list[DiagGaussian], float]:
    """Posteriors in batches of BATCH, and the true MI."""
    g = torch.Generator().manual_seed(seed)
    if name == "x-independent":
        n, d = 500, 32
        m, logvar = torch.randn(d, generator=g), torch.randn(d, generator=g)
        mu, lv, true = m.expand(n, d), logvar.expand(n, d), 0.0
    elif name == "Gaussian family":
        n, d = 2000, 2
        mu, lv, true = torch.randn(n, d, generator=g), torch.zeros(n, d), math.log(2)
    else:
        n, d = 500, 4
        mu, lv = 10 * torch.randn(n, d, generator=g), torch.full((n, d), math.log(0.01))
        true = d / 2 * math.log((100 + 0.01) / 0.01)
    return [DiagGaussian(mu[i:i + BATCH], lv[i:i + BATCH]) for i in range(0, n, BATCH)], true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    estimators = {"mi_dataset": mi_dataset, "mi_batch": mi_batch, "mi_batch_he2019": mi_batch_he2019}
    print(f"{'family':<16} {'true MI':>8} {'log N':>6} {'log B':>6} | " + " | ".join(
        f"{name + ' mean ± sd (max)':^30}" for name in estimators) + " | he2019 noise sd")
    for name in ("x-independent", "Gaussian family", "autoencoder"):
        values: dict[str, list[float]] = {k: [] for k in estimators}
        for seed in range(args.seeds):
            posteriors, true = family(name, seed)
            draws = torch.Generator().manual_seed(1000 + seed)  # one stream: every batch its own noise
            samples = [q.rsample(1, generator=draws)[0] for q in posteriors]
            for key, fn in estimators.items():
                values[key].append(fn(posteriors, samples))
        n, d = sum(len(z) for z in samples), samples[0].shape[-1]
        cells = [f"{statistics.mean(v):>8.3f} ± {statistics.stdev(v):.3f} ({max(v):.3f})" for v in values.values()]
        print(f"{name:<16} {true:>8.3f} {math.log(n):>6.2f} {math.log(BATCH):>6.2f} | "
              + " | ".join(f"{c:^30}" for c in cells) + f" | {he2019_noise_sd(d, n):.3f}")


if __name__ == "__main__":
    main()
