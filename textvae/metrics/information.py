"""Mutual information I_q(x; z) between sentences and codes under the encoder's joint q(x, z).

    I_q = E_x E_q(z|x)[log q(z|x)] − E_q(z)[log q(z)],   q(z) = (1/N) Σ_j q(z|x_j)

Every estimator draws one z_i ~ q(z|x_i) per sentence and differs in the set of sentences that
stands in for the aggregate posterior q(z) (the estimators are not comparable: name which one a
table uses):

* :func:`mi_dataset` (Li et al. 2019; also the BN-VAE and Optimus code): q(z) from all N evaluation
  sentences. Bounded by log N. textvae's reported MI.
* :func:`mi_batch` (He et al. 2019, "Lagging inference networks"): q(z) from the B sentences of the
  same batch. Bounded by log B and biased low when the MI is not small against log B, so its value
  depends on B: the registered metrics split every evaluation batch into consecutive groups of at
  most ``HE2019_BATCH`` = 32 sentences (He et al.'s batch size), as equal as possible, so that B no
  longer follows ``data.eval_batch_size`` (at its default 128, groups of exactly 32). Evaluation
  batches are sorted by length, so a group holds sentences of nearly equal length, as He et al.'s
  batches of one length do (theirs: exactly one length, so a length's last batch can be smaller).

Both take the first term as log q(z_i|x_i) of the *same* sample that enters log q(z_i). The
sampling noise then cancels term by term: an x-independent posterior gives exactly 0 (every
log q(z_i|x_j) equals log q(z_i|x_i)), and since the j = i term alone gives
log q(z_i) ≥ log q(z_i|x_i) − log N, the estimate never exceeds log N (log B per batch).

* :func:`mi_batch_he2019` is He et al.'s estimator as published, for comparison with published MI:
  the first term from the closed-form entropy, −½·D·log 2π − ½·Σ_d(1 + log σ_d²). With one sampled
  log q(z_i) beside it, a Gaussian posterior leaves the term ½·mean_i Σ_d(ε_id² − 1), ε ~ N(0, I),
  that does not cancel: noise of sd √(D / 2N) (:func:`he2019_noise_sd`), fixed for a fixed seed,
  and the log B bound no longer holds.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import seeded

# Default bound on the elements of one broadcast [M, B, D] block inside posterior.log_prob.
DEFAULT_MAX_ELEMENTS = 2**24
# He et al. 2019's batch size (their PTB, Yahoo and Yelp scripts): the B of the registered per-batch
# estimators, so that their figures do not change with the evaluation batch size.
HE2019_BATCH = 32


def he2019_noise_sd(latent_dim: int, n_sentences: int) -> float:
    """sd of :func:`mi_batch_he2019`'s noise floor, √(D / 2N): ½·mean_i Σ_d(ε_id² − 1) over N
    sentences is a mean of N terms of variance D / 2."""
    return math.sqrt(latent_dim / (2.0 * n_sentences))


def _pairs(posteriors: Iterable[Any], samples: Optional[Iterable[torch.Tensor]]
           ) -> Iterator[tuple[Any, torch.Tensor]]:
    """(posterior, z [B, D]) pairs, drawing one z per sentence where no samples were given."""
    if samples is None:
        return ((posterior, posterior.rsample(1)[0]) for posterior in posteriors)
    return zip(posteriors, samples, strict=True)


def _groups(n: int, batch_size: Optional[int]) -> list[int]:
    """Sizes of the consecutive groups a batch of n is split into: as equal as possible, none above
    ``batch_size`` (e.g. 100 at 32: 25, 25, 25, 25), or one group of n."""
    parts = -(-n // batch_size) if batch_size else 1
    return [n // parts + (i < n % parts) for i in range(parts)]


def largest_group(batch_lengths: Iterable[int], batch_size: Optional[int]) -> int:
    """The largest group :func:`mi_batch` averages within over batches of ``batch_lengths`` sentences: the B
    its figure is bounded by (log B), fewer than ``batch_size`` where the batches are small or split evenly."""
    return max((size for n in batch_lengths for size in _groups(n, batch_size)), default=0)


def _mi_batch(posteriors: Iterable[Any], samples: Optional[Iterable[torch.Tensor]],
              generator: Optional[torch.Generator], closed_form_entropy: bool,
              batch_size: Optional[int]) -> float:
    """Σ_b B_b·MI_b / Σ_b B_b, MI_b = mean_i first_term_i − mean_i log q̂(z_i) within group b: the
    given batches, or each split into groups of at most ``batch_size`` sentences (:func:`_groups`)."""
    total, count = 0.0, 0
    with torch.no_grad(), seeded(generator):
        for posterior, z in _pairs(posteriors, samples):
            log_q = posterior.log_prob(z.unsqueeze(1))  # [B (z_i), B (x_j)]
            entropy = posterior.entropy() if closed_form_entropy else None
            first = -entropy if entropy is not None else log_q.diagonal()  # [B]
            start = 0
            for b in _groups(z.shape[0], batch_size):
                block = log_q[start:start + b, start:start + b]  # the group's own [b, b] pairs
                log_qz = torch.logsumexp(block, dim=1) - math.log(b)  # [b]
                total += b * float(first[start:start + b].mean() - log_qz.mean())
                count += b
                start += b
    if count == 0:
        raise TextVAEError("mi_batch: no posteriors given")
    return total / count


def mi_batch(posteriors: Iterable[Any], samples: Optional[Iterable[torch.Tensor]] = None,
             generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None) -> float:
    """Per-batch MI (He et al. 2019's aggregate posterior), batch-size-weighted over batches.

    For a batch of B sentences with z_i ~ q(z|x_i):

        log q(z_i) ≈ logsumexp_j log q(z_i|x_j) − log B       (j over the same batch)
        MI_batch   = mean_i log q(z_i|x_i) − mean_i log q(z_i)

    and the result is Σ_b B_b·MI_b / Σ_b B_b. In [0 − noise, log B]: 0 exactly for an
    x-independent posterior, never above log B; biased low when the MI is not small against log B.

    posteriors: one posterior per batch; samples: optionally one z [B, D] per batch (drawn here,
    seeded by ``generator``, when ``None``); batch_size: B, each batch split into consecutive groups
    of at most this many sentences, as equal as possible (``None``: the batches as given).
    """
    return _mi_batch(posteriors, samples, generator, False, batch_size)


def mi_batch_he2019(posteriors: Iterable[Any], samples: Optional[Iterable[torch.Tensor]] = None,
                    generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None) -> float:
    """He et al. 2019's per-batch estimator as their code computes it: :func:`mi_batch` with the
    first term from the closed-form entropy where the posterior has one,

        MI_batch = mean_i (−½·D·log 2π − ½·Σ_d(1 + log σ_id²)) − mean_i log q(z_i),

    so it carries a noise floor of sd √(D / 2N) (:func:`he2019_noise_sd`) and can exceed log B.
    Kept to compare with published MI; report its noise floor beside it. ``batch_size`` as in
    :func:`mi_batch`."""
    return _mi_batch(posteriors, samples, generator, True, batch_size)


def mi_dataset(posteriors: Sequence[Any], samples: Optional[Sequence[torch.Tensor]] = None,
               generator: Optional[torch.Generator] = None,
               max_elements: int = DEFAULT_MAX_ELEMENTS) -> float:
    """Whole-set MI estimator (Li et al. 2019; BN-VAE and Optimus code): as :func:`mi_batch`,
    but the aggregate posterior is the mixture over all N evaluation sentences,

        log q(z_i) ≈ logsumexp_{j=1..N} log q(z_i|x_j) − log N,
        MI = mean_i log q(z_i|x_i) − mean_i log q(z_i).

    0 for an x-independent posterior, never above log N (the published code takes the first term
    from the closed-form entropy, which adds :func:`mi_batch_he2019`'s noise floor). The N×N×D computation is done for M samples against one batch of
    posteriors at a time with M·B·D ≤ ``max_elements``; only [M, number of batches] partial
    log-sums are kept, never N×N×D (nor N×N).
    """
    with torch.no_grad(), seeded(generator):
        pairs = list(_pairs(posteriors, samples))
        if not pairs:
            raise TextVAEError("mi_dataset: no posteriors given")
        z = torch.cat([zb for _, zb in pairs])  # [N, D]
        log_q_own = torch.cat([p.log_prob(zb) for p, zb in pairs])  # [N]: log q(z_i|x_i)
        n, d = z.shape
        rows = max(1, max_elements // (max(zb.shape[0] for _, zb in pairs) * d))
        log_qz = []
        for start in range(0, n, rows):
            zi = z[start:start + rows].unsqueeze(1)  # [M, 1, D]
            # one logsumexp per batch of posteriors: [M, n_batches], then over batches
            partial = torch.stack([torch.logsumexp(p.log_prob(zi), dim=1) for p, _ in pairs], 1)
            log_qz.append(torch.logsumexp(partial, dim=1) - math.log(n))
        return float(log_q_own.mean() - torch.cat(log_qz).mean())
