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
                   generator: Optional[torch.Generator] = None,
                   per_dim: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` on ``batches`` (an iterable, or a callable returning a fresh iterator).

    Each batch is encoded once, in eval mode without gradients; its posterior, posterior means and
    one z ~ q(z|x) per sentence are kept and shared by the requested ``metrics``:

    * ``elbo``: rec, kl, neg_elbo, elbo_ppl (one sample, β = 1; see ``elbo_terms``);
    * ``iw``: iw_nll, iw_ppl, iw_samples (K = ``n_samples``; see ``iw_nll``; 0 skips it);
    * ``mi_batch`` / ``mi_dataset``: the two MI estimators (same z as the ELBO);
    * ``au``: au, au_threshold, latent_dim;
    * ``diagnostics``: au, latent_dim, dims_too_noisy, dims_signal_too_weak.

    A model with ``latent_dim == 0`` (the language model) gets the likelihood metrics only, and
    IW-NLL with one sample, which is exact for it.
    Returns a flat dict of floats (plus n_sentences, n_tokens); :func:`format_table` prints it.
    ``per_dim`` adds per-dimension lists [D]: ``kl_per_dim`` (mean analytic KL; with ``elbo``,
    when the posterior has a closed form), ``var_mu_per_dim`` (Var_x of the posterior mean; with
    ``au`` / ``diagnostics``), and with ``diagnostics`` ``sigma_per_dim`` (E_x[sigma_d], Gaussian
    posteriors) and ``dim_modes`` (active / too noisy / signal too weak).
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise TextVAEError(f"evaluate_model: unknown metrics {unknown}; valid: {', '.join(METRICS)}")
    if n_samples < 0:
        raise TextVAEError(f"evaluate_model: n_samples must be >= 0 (0 skips IW-NLL), got {n_samples}")
    if n_samples == 0:
        metrics = [m for m in metrics if m != "iw"]
    if getattr(model, "latent_dim", None) == 0:  # the language model: only likelihood figures exist
        metrics = [m for m in metrics if m in ("elbo", "iw")]
        n_samples = 1  # every importance weight is the same (see iw_log_marginal)
    want_mi = "mi_batch" in metrics or "mi_dataset" in metrics
    elbo, iw, counts = ElboAccumulator(), CorpusAccumulator(), CorpusAccumulator()
    posteriors, samples, means, mus, sigmas = [], [], [], [], []
    results: dict[str, Any] = {}
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
        summary = elbo.result()
        results.update(summary.summary())
        if per_dim and summary.kl_per_dim is not None:
            results["kl_per_dim"] = summary.kl_per_dim.tolist()
    if "iw" in metrics:
        results.update(iw_nll=iw.mean("nll"), iw_ppl=iw.ppl("nll"), iw_samples=float(n_samples))
    mean = torch.cat(means)  # [N, D]
    if "au" in metrics:
        au = active_units(mean, au_threshold)
        results.update(au=float(au.count), au_threshold=au_threshold, latent_dim=float(mean.shape[1]))
        if per_dim:
            results["var_mu_per_dim"] = au.variances.tolist()
    if "diagnostics" in metrics:
        gaussian = len(mus) == len(means)
        diag = collapse_diagnostics(torch.cat(mus) if gaussian else mean,
                                    torch.cat(sigmas) if gaussian else None,
                                    threshold=au_threshold)
        results.update(au=float(diag.n_active), latent_dim=float(mean.shape[1]),
                       dims_too_noisy=float(diag.modes.count("too noisy")),
                       dims_signal_too_weak=float(diag.modes.count("signal too weak")))
        if per_dim:
            results.update(var_mu_per_dim=diag.var_mu.tolist(), dim_modes=diag.modes)
            if diag.mean_sigma is not None:
                results["sigma_per_dim"] = diag.mean_sigma.tolist()
    return results


# (key, label, format) in display order; "{K}" / "{N}" / "{thr}" / "{G}" / "{P}" are filled from
# the results.
_ROWS = [
    ("n_sentences", "sentences", "{:.0f}"),
    ("n_tokens", "tokens (words + </s>)", "{:.0f}"),
    ("unk_rate", "unknown words (<unk>)", "{:.2%}"),
    ("iw_nll", "NLL (IW, K={K})", "{:.2f}"),
    ("true_nll", "NLL (true, synthetic corpus)", "{:.2f}"),
    ("iw_ppl", "PPL (IW)", "{:.2f}"),
    ("true_ppl", "PPL (true)", "{:.2f}"),
    ("neg_elbo", "-ELBO (bound on NLL)", "{:.2f}"),
    ("rec", "  reconstruction", "{:.2f}"),
    ("kl", "  KL", "{:.2f}"),
    ("kl_per_dim", "  KL per dim, largest", None),
    ("elbo_ppl", "PPL (ELBO bound)", "{:.2f}"),
    ("mi_batch", "MI (per-batch, He et al. 2019)", "{:.3f}"),
    ("mi_dataset", "MI (whole set, N={N})", "{:.3f}"),
    ("true_mi", "MI (true I(x; latent))", "{:.3f}"),
    ("au", "AU (Var >= {thr})", "{:.0f}"),
    ("dims_too_noisy", "inactive dims: too noisy", "{:.0f}"),
    ("dims_signal_too_weak", "inactive dims: signal too weak", "{:.0f}"),
    ("recon_bleu", "BLEU (greedy from posterior mean)", "{:.2f}"),
    ("distinct_1", "distinct-1 ({G} prior samples)", "{:.4f}"),
    ("distinct_2", "distinct-2 ({G} prior samples)", "{:.4f}"),
    ("self_bleu", "self-BLEU ({G} prior samples)", "{:.2f}"),
    ("probe_acc", "probe accuracy ({P}/class, mean ± std)", "{:.4f}"),
]
# shown inside other rows' labels or values
_HIDDEN = {"iw_samples", "au_threshold", "latent_dim", "gen_sentences", "probe_acc_std",
           "probe_n_per_class", "probe_draws"}
_TOP_DIMS = 5  # dimensions listed in the KL-per-dim row


def _kl_dims(kl: Sequence[float]) -> str:
    """The largest per-dimension KLs, e.g. ``d7 2.31, d3 1.02, ... (5 of 32 dims >= 0.01)``."""
    top = sorted(range(len(kl)), key=lambda d: -kl[d])[:_TOP_DIMS]
    used = sum(k >= 0.01 for k in kl)
    return ", ".join(f"d{d} {kl[d]:.2f}" for d in top) + f" ({used} of {len(kl)} dims >= 0.01)"


def format_table(results: dict[str, Any]) -> str:
    """Two-column text table of :func:`evaluate_model` results (and generation, probe and
    ground-truth figures when present), with the collapse verdict. Lists appear only as the
    KL-per-dim summary; they are for the JSON."""
    fill = {"K": f"{results.get('iw_samples', float('nan')):.0f}",
            "N": f"{results.get('n_sentences', float('nan')):.0f}",
            "thr": f"{results.get('au_threshold', AU_THRESHOLD):g}",
            "G": f"{results.get('gen_sentences', float('nan')):.0f}",
            "P": f"{results.get('probe_n_per_class', float('nan')):.0f}"}
    rows = []
    for key, label, fmt in _ROWS:
        if key not in results:
            continue
        value = _kl_dims(results[key]) if fmt is None else fmt.format(results[key])
        if key == "au" and "latent_dim" in results:
            value += f" / {results['latent_dim']:.0f}"
        if key == "probe_acc":
            value += f" ± {results.get('probe_acc_std', 0.0):.4f} ({results.get('probe_draws', 1):.0f} draws)"
        rows.append((label.format(**fill), value))
    known = {key for key, _, _ in _ROWS} | _HIDDEN
    rows += [(key, f"{value:.4g}") for key, value in results.items()
             if key not in known and isinstance(value, (int, float))]
    if results.get("train_steps") == 0:  # an initialised model's posterior says nothing about collapse
        rows.append(("latent space", "not trained (0 steps): no verdict"))
    elif "au" in results and "latent_dim" in results:
        rows.append(("latent space", collapse_verdict(int(results["au"]), int(results["latent_dim"]))))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
