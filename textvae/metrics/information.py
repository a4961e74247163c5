"""Mutual information I_q(x; z) between sentences and codes under the encoder's joint q(x, z).

    I_q = E_x E_q(z|x)[log q(z|x)] − E_q(z)[log q(z)],   q(z) = (1/N) Σ_j q(z|x_j)

Two published estimators differ only in the set of sentences that stands in for the aggregate
posterior q(z), and are not comparable: name which one a table uses.

* :func:`mi_batch` (He et al. 2019, "Lagging inference networks"): q(z) from the B sentences of the
  same batch. Bounded by log B, noisy, and it can come out slightly negative.
* :func:`mi_dataset` (Li et al. 2019; also the BN-VAE and Optimus code): q(z) from all N
  evaluation sentences. Bounded by log N.

Both draw one z_i ~ q(z|x_i) per sentence and take the first term from the closed-form entropy
where the posterior has one (for a diagonal Gaussian −½·D·log 2π − ½·Σ_d(1 + log σ_d²)), else from
log q(z_i|x_i) with the same sample.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import seeded

# Default bound on the elements of one broadcast [M, B, D] block inside posterior.log_prob.
DEFAULT_MAX_ELEMENTS = 2**24


def _neg_entropy(posterior: Any, z: torch.Tensor) -> torch.Tensor:
    """E_q(z|x_i)[log q(z|x_i)] [B]: −entropy when closed-form, else log q(z_i|x_i) for z [B, D]."""
    entropy = posterior.entropy()
    return posterior.log_prob(z) if entropy is None else -entropy


def _pairs(posteriors: Iterable[Any], samples: Optional[Iterable[torch.Tensor]]
           ) -> Iterator[tuple[Any, torch.Tensor]]:
    """(posterior, z [B, D]) pairs, drawing one z per sentence where no samples were given."""
    if samples is None:
        return ((posterior, posterior.rsample(1)[0]) for posterior in posteriors)
    return zip(posteriors, samples, strict=True)


def mi_batch(posteriors: Iterable[Any], samples: Optional[Iterable[torch.Tensor]] = None,
             generator: Optional[torch.Generator] = None) -> float:
    """Per-batch MI estimator of He et al. (2019), batch-size-weighted over batches.

    For a batch of B sentences with z_i ~ q(z|x_i):

        log q(z_i) ≈ logsumexp_j log q(z_i|x_j) − log B       (j over the same batch)
        MI_batch   = mean_i E_q(z|x_i)[log q(z|x_i)] − mean_i log q(z_i)

    and the result is Σ_b B_b·MI_b / Σ_b B_b. Bounded by log B (exactly so when the first term
    uses log q(z_i|x_i), since the j = i term alone gives log q(z_i) ≥ log q(z_i|x_i) − log B);
    biased low when the true MI is not small against log B; noisy, and can be slightly negative.

    posteriors: one posterior per batch; samples: optionally one z [B, D] per batch (drawn here,
    seeded by ``generator``, when ``None``).
    """
    total, count = 0.0, 0
    with torch.no_grad(), seeded(generator):
        for posterior, z in _pairs(posteriors, samples):
            b = z.shape[0]
            log_q = posterior.log_prob(z.unsqueeze(1))  # [B (z_i), B (x_j)]
            log_qz = torch.logsumexp(log_q, dim=1) - math.log(b)  # [B]
            mi = _neg_entropy(posterior, z).mean() - log_qz.mean()
            total += b * float(mi)
            count += b
    if count == 0:
        raise TextVAEError("mi_batch: no posteriors given")
    return total / count


def mi_dataset(posteriors: Sequence[Any], samples: Optional[Sequence[torch.Tensor]] = None,
               generator: Optional[torch.Generator] = None,
               max_elements: int = DEFAULT_MAX_ELEMENTS) -> float:
    """Whole-set MI estimator (Li et al. 2019; BN-VAE and Optimus code): as :func:`mi_batch`,
    but the aggregate posterior is the mixture over all N evaluation sentences,

        log q(z_i) ≈ logsumexp_{j=1..N} log q(z_i|x_j) − log N,
        MI = mean_i E_q(z|x_i)[log q(z|x_i)] − mean_i log q(z_i).

    Bounded by log N. The N×N×D computation is done for M samples against one batch of
    posteriors at a time with M·B·D ≤ ``max_elements``; only [M, number of batches] partial
    log-sums are kept, never N×N×D (nor N×N).
    """
    with torch.no_grad(), seeded(generator):
        pairs = list(_pairs(posteriors, samples))
        if not pairs:
            raise TextVAEError("mi_dataset: no posteriors given")
        z = torch.cat([zb for _, zb in pairs])  # [N, D]
        neg_entropy = torch.cat([_neg_entropy(p, zb) for p, zb in pairs])  # [N]
        n, d = z.shape
        rows = max(1, max_elements // (max(zb.shape[0] for _, zb in pairs) * d))
        log_qz = []
        for start in range(0, n, rows):
            zi = z[start:start + rows].unsqueeze(1)  # [M, 1, D]
            # one logsumexp per batch of posteriors: [M, n_batches], then over batches
            partial = torch.stack([torch.logsumexp(p.log_prob(zi), dim=1) for p, _ in pairs], 1)
            log_qz.append(torch.logsumexp(partial, dim=1) - math.log(n))
        return float(neg_entropy.mean() - torch.cat(log_qz).mean())
