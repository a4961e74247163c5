"""One pass over an evaluation set computing every latent-variable figure, and its table."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import Batches, eval_mode, iterate, seeded
from textvae.metrics.information import mi_batch, mi_dataset
from textvae.metrics.latent import AU_THRESHOLD, active_units, collapse_diagnostics, collapse_verdict
from textvae.metrics.likelihood import (DEFAULT_MAX_TOKENS, ElboAccumulator, elbo_batch,
                                        iw_log_marginal)
from textvae.reduction import CorpusAccumulator

METRICS = ("elbo", "iw", "mi_batch", "mi_dataset", "au", "diagnostics")


def evaluate_model(model: Any, batches: Batches, metrics: Sequence[str] = METRICS,
                   n_samples: int = 500, max_tokens: int = DEFAULT_MAX_TOKENS,
                   au_threshold: float = AU_THRESHOLD,
                   generator: Optional[torch.Generator] = None) -> dict[str, float]:
    """Evaluate ``model`` on ``batches`` (an iterable, or a callable returning a fresh iterator).

    Each batch is encoded once, in eval mode without gradients; its posterior, posterior means and
    one z ~ q(z|x) per sentence are kept and shared by the requested ``metrics``:

    * ``elbo``: rec, kl, neg_elbo, elbo_ppl (one sample, β = 1; see ``elbo_terms``);
    * ``iw``: iw_nll, iw_ppl, iw_samples (K = ``n_samples``; see ``iw_nll``);
    * ``mi_batch`` / ``mi_dataset``: the two MI estimators (same z as the ELBO);
    * ``au``: au, au_threshold, latent_dim;
    * ``diagnostics``: au, latent_dim, dims_too_noisy, dims_signal_too_weak.

    A model with ``latent_dim == 0`` (the language model) gets the likelihood metrics only.
    Returns a flat dict of floats (plus n_sentences, n_tokens); :func:`format_table` prints it.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise TextVAEError(f"evaluate_model: unknown metrics {unknown}; valid: {', '.join(METRICS)}")
    if getattr(model, "latent_dim", None) == 0:  # the language model: only likelihood figures exist
        metrics = [m for m in metrics if m in ("elbo", "iw")]
    want_mi = "mi_batch" in metrics or "mi_dataset" in metrics
    elbo, iw, counts = ElboAccumulator(), CorpusAccumulator(), CorpusAccumulator()
    posteriors, samples, means, mus, sigmas = [], [], [], [], []
    results: dict[str, float] = {}
    with eval_mode(model), seeded(generator):
        for batch in iterate(batches):
            posterior = model.encode(batch)
            z = posterior.rsample(1)  # [1, B, D]
            counts.add(batch.n_tokens)
            if "elbo" in metrics:
                elbo.add(batch.n_tokens, *elbo_batch(model, batch, posterior, z))
            if "iw" in metrics:
                nll = -iw_log_marginal(model, batch, posterior, n_samples, max_tokens)
                iw.add(batch.n_tokens, nll=nll)
            means.append(posterior.mean)
            if hasattr(posterior, "logvar"):
                mus.append(posterior.mu)
                sigmas.append(torch.exp(0.5 * posterior.logvar))
            if want_mi:
                posteriors.append(posterior)
                samples.append(z[0])
        if counts.n_sentences == 0:
            raise TextVAEError("evaluate_model: no batches to evaluate")
        if "mi_batch" in metrics:
            results["mi_batch"] = mi_batch(posteriors, samples)
        if "mi_dataset" in metrics:
            results["mi_dataset"] = mi_dataset(posteriors, samples)

    results["n_sentences"] = float(counts.n_sentences)
    results["n_tokens"] = counts.n_tokens
    if "elbo" in metrics:
        results.update(elbo.result().summary())
    if "iw" in metrics:
        results.update(iw_nll=iw.mean("nll"), iw_ppl=iw.ppl("nll"), iw_samples=float(n_samples))
    mean = torch.cat(means)  # [N, D]
    if "au" in metrics:
        results.update(au=float(active_units(mean, au_threshold).count),
                       au_threshold=au_threshold, latent_dim=float(mean.shape[1]))
    if "diagnostics" in metrics:
        gaussian = len(mus) == len(means)
        diag = collapse_diagnostics(torch.cat(mus) if gaussian else mean,
                                    torch.cat(sigmas) if gaussian else None,
                                    threshold=au_threshold)
        results.update(au=float(diag.n_active), latent_dim=float(mean.shape[1]),
                       dims_too_noisy=float(diag.modes.count("too noisy")),
                       dims_signal_too_weak=float(diag.modes.count("signal too weak")))
    return results


# (key, label, format) in display order; "{K}" / "{N}" / "{thr}" are filled from the results.
_ROWS = [
    ("n_sentences", "sentences", "{:.0f}"),
    ("n_tokens", "tokens (words + </s>)", "{:.0f}"),
    ("iw_nll", "NLL (IW, K={K})", "{:.2f}"),
    ("iw_ppl", "PPL (IW)", "{:.2f}"),
    ("neg_elbo", "-ELBO (bound on NLL)", "{:.2f}"),
    ("rec", "  reconstruction", "{:.2f}"),
    ("kl", "  KL", "{:.2f}"),
    ("elbo_ppl", "PPL (ELBO bound)", "{:.2f}"),
    ("mi_batch", "MI (per-batch, He et al. 2019)", "{:.3f}"),
    ("mi_dataset", "MI (whole set, N={N})", "{:.3f}"),
    ("au", "AU (Var >= {thr})", "{:.0f}"),
    ("dims_too_noisy", "inactive dims: too noisy", "{:.0f}"),
    ("dims_signal_too_weak", "inactive dims: signal too weak", "{:.0f}"),
]
_HIDDEN = {"iw_samples", "au_threshold", "latent_dim"}  # shown inside other rows' labels


def format_table(results: dict[str, float]) -> str:
    """Two-column text table of :func:`evaluate_model` results, with the collapse verdict."""
    fill = {"K": f"{results.get('iw_samples', float('nan')):.0f}",
            "N": f"{results.get('n_sentences', float('nan')):.0f}",
            "thr": f"{results.get('au_threshold', AU_THRESHOLD):g}"}
    rows = []
    for key, label, fmt in _ROWS:
        if key in results:
            value = fmt.format(results[key])
            if key == "au" and "latent_dim" in results:
                value += f" / {results['latent_dim']:.0f}"
            rows.append((label.format(**fill), value))
    known = {key for key, _, _ in _ROWS} | _HIDDEN
    rows += [(key, f"{value:.4g}") for key, value in results.items() if key not in known]
    if "au" in results and "latent_dim" in results:
        rows.append(("latent space", collapse_verdict(int(results["au"]), int(results["latent_dim"]))))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
