"""The registered metrics, one pass over an evaluation set computing them, and its table.

A metric is one registered function (:func:`register_metric`); :func:`evaluate_model` computes any
of them, the training loop computes those registered for its stages (``epoch``, ``periodic``,
``test``) for every task, and a study's table shows the columns a metric declares. A conditional
model (the dialogue CVAE) is evaluated given each batch's conditions (:func:`batch_protocol`).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import Batches, eval_mode, iterate, seeded
from textvae.metrics.information import HE2019_BATCH, he2019_noise_sd, mi_batch, mi_batch_he2019, mi_dataset
from textvae.metrics.latent import AU_THRESHOLD, active_units, collapse_diagnostics, collapse_verdict
from textvae.metrics.likelihood import (ElboAccumulator, IWAccumulator, IWProgress, elbo_batch,
                                        iw_samples_for)
from textvae.reduction import CorpusAccumulator
from textvae.registry import Registry

STAGES = ("epoch", "periodic", "test")


@dataclass
class EvalPass:
    """What one pass over an evaluation set keeps for the metrics: per batch the posterior's mean
    (and, for Gaussian posteriors, mu and sigma), and, when a metric ``keeps_posteriors``, the
    posterior and one z ~ q(z|x) per sentence; plus the accumulators of the per-batch metrics. The
    model reaches the metrics batch by batch, in their ``update`` (for a conditional model, given
    each batch's conditions)."""

    n_samples: int
    max_tokens: Optional[int]  # None: the device's default (likelihood.default_max_tokens)
    au_threshold: float
    per_dim: bool
    keep_posteriors: bool
    counts: CorpusAccumulator = field(default_factory=CorpusAccumulator)
    elbo: ElboAccumulator = field(default_factory=ElboAccumulator)
    iw: IWAccumulator = field(default_factory=IWAccumulator)
    posteriors: list[Any] = field(default_factory=list)
    samples: list[torch.Tensor] = field(default_factory=list)
    means: list[torch.Tensor] = field(default_factory=list)
    mus: list[torch.Tensor] = field(default_factory=list)
    sigmas: list[torch.Tensor] = field(default_factory=list)

    def add(self, batch: Any, posterior: Any, z: torch.Tensor) -> None:
        self.counts.add(batch.n_tokens)
        self.means.append(posterior.mean)
        if hasattr(posterior, "logvar"):
            self.mus.append(posterior.mu)
            self.sigmas.append(torch.exp(0.5 * posterior.logvar))
        if self.keep_posteriors:
            self.posteriors.append(posterior)
            self.samples.append(z[0])

    @property
    def mean(self) -> torch.Tensor:
        """Posterior means of the whole set [N, D]."""
        return torch.cat(self.means)


@dataclass(frozen=True)
class Metric:
    """One registered metric of :func:`evaluate_model`.

    ``result(pass) -> {figure: value}`` after the pass; ``update(pass, model, batch, posterior, z)``
    per batch when the metric needs the model batch by batch, ``model`` being the protocol for that
    batch (:func:`batch_protocol`; it may draw random numbers: updates run in the order of the
    metrics' names). ``latent``: the figure needs a latent space (the language
    model skips it). ``keeps_posteriors``: the pass keeps every posterior and z for it.
    ``stages``: where the training loop computes it besides ``textvae evaluate`` (``epoch``: each
    epoch's validation; ``periodic``: every ``train.metrics_every`` steps; ``test``: the final
    report). ``study_columns``: (figure, label, format) columns it adds to a study's table.
    """

    result: Callable[[EvalPass], dict[str, Any]]
    update: Optional[Callable[[EvalPass, Any, Any, Any, torch.Tensor], None]] = None
    latent: bool = True
    keeps_posteriors: bool = False
    stages: tuple[str, ...] = ()
    study_columns: tuple[tuple[str, str, str], ...] = ()

    @property
    def doc(self) -> str:
        """What ``textvae list metric`` says of it: its ``result``'s docstring and its stages."""
        return f"{inspect.getdoc(self.result) or ''}\n\nStages: {', '.join(self.stages) or 'textvae evaluate only'}."


METRICS: Registry = Registry("metric", recipe="every metric is computed by textvae evaluate and at the stages it names")


def register_metric(name: str, **options: Any) -> Callable[[Callable[[EvalPass], dict[str, Any]]], Metric]:
    """Decorator: ``@register_metric("au", stages=("epoch",))`` on ``result(pass) -> dict`` registers
    a :class:`Metric` with those options under ``name``."""
    unknown = sorted(set(options.get("stages", ())) - set(STAGES))
    if unknown:
        raise TextVAEError(f"metric {name!r}: unknown stages {unknown}; valid: {', '.join(STAGES)}")
    return lambda result: METRICS.register(name)(Metric(result, **options))


def list_metrics(stage: Optional[str] = None) -> list[str]:
    """Every registered metric, or those the training loop computes at ``stage``."""
    return [n for n in METRICS.names() if stage is None or stage in METRICS.get(n).stages]


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def _elbo_update(p: EvalPass, model: Any, batch: Any, posterior: Any, z: torch.Tensor) -> None:
    p.elbo.add(batch.n_tokens, *elbo_batch(model, batch, posterior, z))


@register_metric("elbo", update=_elbo_update, latent=False, stages=STAGES)
def _elbo(p: EvalPass) -> dict[str, Any]:
    """rec, kl, neg_elbo, elbo_ppl (one sample, beta = 1; see ``elbo_terms``)."""
    summary = p.elbo.result()
    figures = summary.summary()
    if p.per_dim and summary.kl_per_dim is not None:
        figures["kl_per_dim"] = summary.kl_per_dim.tolist()
    return figures


def _iw_update(p: EvalPass, model: Any, batch: Any, posterior: Any, z: torch.Tensor) -> None:
    p.iw.add(model, batch, posterior, p.n_samples, p.max_tokens)


@register_metric("iw", update=_iw_update, latent=False, stages=("test",))
def _iw(p: EvalPass) -> dict[str, Any]:
    """iw_nll, iw_ppl, iw_samples (K = ``n_samples``; see ``iw_nll``); beside the NLL its Monte
    Carlo standard error iw_nll_mc_se, from a second draw of iw_se_sentences sentences, and the
    weights' mean effective sample size iw_ess (see ``IWAccumulator``)."""
    return p.iw.result().summary()


@register_metric("mi_batch", keeps_posteriors=True, stages=STAGES)
def _mi_batch(p: EvalPass) -> dict[str, Any]:
    """The per-batch MI estimator (He et al. 2019's aggregate posterior over groups of at most their
    batch size HE2019_BATCH within each evaluation batch; same z as the ELBO), and that B as
    ``mi_batch_size``."""
    return {"mi_batch": mi_batch(p.posteriors, p.samples, batch_size=HE2019_BATCH),
            "mi_batch_size": float(HE2019_BATCH)}


@register_metric("mi_dataset", keeps_posteriors=True, stages=("periodic", "test"))
def _mi_dataset(p: EvalPass) -> dict[str, Any]:
    """The whole-set MI estimator (same z as the ELBO): textvae's reported MI."""
    return {"mi_dataset": mi_dataset(p.posteriors, p.samples)}


@register_metric("mi_batch_he2019", keeps_posteriors=True, stages=("epoch", "test"))
def _mi_batch_he2019(p: EvalPass) -> dict[str, Any]:
    """He et al.'s per-batch estimator as published, and its noise floor sd sqrt(D / 2N); at each
    epoch too, where aggressive training may take it as its switch-off signal, as He et al.'s code does.
    Over groups of HE2019_BATCH sentences, as ``mi_batch``."""
    n, d = sum(len(z) for z in p.samples), p.samples[0].shape[-1]
    return {"mi_batch_he2019": mi_batch_he2019(p.posteriors, p.samples, batch_size=HE2019_BATCH),
            "mi_batch_he2019_noise_sd": he2019_noise_sd(d, n), "mi_batch_size": float(HE2019_BATCH)}


@register_metric("au", stages=STAGES)
def _au(p: EvalPass) -> dict[str, Any]:
    """au, au_threshold, latent_dim (active units: Var_x E[z|x] >= the threshold)."""
    au = active_units(p.mean, p.au_threshold)
    figures = {"au": float(au.count), "au_threshold": p.au_threshold, "latent_dim": float(p.mean.shape[1])}
    if p.per_dim:
        figures["var_mu_per_dim"] = au.variances.tolist()
    return figures


@register_metric("diagnostics", stages=("test",))
def _diagnostics(p: EvalPass) -> dict[str, Any]:
    """au, latent_dim, dims_too_noisy, dims_signal_too_weak (why inactive dimensions are inactive)."""
    gaussian = len(p.mus) == len(p.means)
    diag = collapse_diagnostics(torch.cat(p.mus) if gaussian else p.mean, torch.cat(p.sigmas) if gaussian else None,
                                threshold=p.au_threshold)
    figures = {"au": float(diag.n_active), "latent_dim": float(p.mean.shape[1]),
               "dims_too_noisy": float(diag.modes.count("too noisy")),
               "dims_signal_too_weak": float(diag.modes.count("signal too weak"))}
    if p.per_dim:
        figures.update(var_mu_per_dim=diag.var_mu.tolist(), dim_modes=diag.modes)
        if diag.mean_sigma is not None:
            figures["sigma_per_dim"] = diag.mean_sigma.tolist()
    return figures


def batch_protocol(model: Any, item: Any) -> tuple[Any, Any]:
    """(the model protocol of ``docs/design.md`` for one item of the batches, the batch it scores).
    A conditional model says what it is given with ``given(item)`` (the dialogue CVAE: its view of
    the pairs given their contexts, and their responses); any other model is its own protocol."""
    given = getattr(model, "given", None)
    return (model, item) if given is None else given(item)


def evaluate_model(model: Any, batches: Batches, metrics: Optional[Sequence[str]] = None,
                   n_samples: int = 500, max_tokens: Optional[int] = None,
                   au_threshold: float = AU_THRESHOLD,
                   generator: Optional[torch.Generator] = None,
                   per_dim: bool = False, iw_progress: Optional[IWProgress] = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``batches`` (an iterable, or a callable returning a fresh iterator).

    Each batch is encoded once (a conditional model's given its conditions: :func:`batch_protocol`),
    in eval mode without gradients; its posterior, posterior means and one z ~ q(z|x) per sentence
    are kept and shared by the requested registered ``metrics`` (all
    by default; see :func:`list_metrics`): ``elbo``, ``iw`` (K = ``n_samples``; 0 skips it),
    ``mi_batch`` / ``mi_dataset``, ``au`` and ``diagnostics``, each documented where it is registered.

    A model with ``latent_dim == 0`` (the language model) gets the likelihood metrics only, and
    IW-NLL with one sample, which is exact for it.
    Returns a flat dict of floats (plus n_sentences, n_tokens); :func:`format_table` prints it.
    ``per_dim`` adds per-dimension lists [D]: ``kl_per_dim`` (mean analytic KL; with ``elbo``,
    when the posterior has a closed form), ``var_mu_per_dim`` (Var_x of the posterior mean; with
    ``au`` / ``diagnostics``), and with ``diagnostics`` ``sigma_per_dim`` (E_x[sigma_d], Gaussian
    posteriors) and ``dim_modes`` (active / too noisy / signal too weak). ``iw_progress``: the IW
    pass's finished batches are kept there, and a pass that was stopped resumes from them with the
    same figures (:class:`~textvae.metrics.likelihood.IWProgress`).
    """
    metrics = list_metrics() if metrics is None else metrics
    unknown = sorted(set(metrics) - set(list_metrics()))
    if unknown:
        raise TextVAEError(f"evaluate_model: unknown metrics {unknown}; valid: {', '.join(list_metrics())}")
    if n_samples < 0:
        raise TextVAEError(f"evaluate_model: n_samples must be >= 0 (0 skips IW-NLL), got {n_samples}")
    if n_samples == 0:
        metrics = [m for m in metrics if m != "iw"]
    if getattr(model, "latent_dim", None) == 0:  # the language model: only likelihood figures exist
        metrics = [m for m in metrics if not get_metric(m).latent]
    n_samples = iw_samples_for(model, n_samples)
    chosen = [get_metric(name) for name in sorted(set(metrics))]
    p = EvalPass(n_samples, max_tokens, au_threshold, per_dim, any(m.keeps_posteriors for m in chosen),
                 iw=IWAccumulator(progress=iw_progress))
    results: dict[str, Any] = {}
    with eval_mode(model), seeded(generator):
        for item in iterate(batches):
            view, batch = batch_protocol(model, item)
            posterior = view.encode(batch)
            z = posterior.rsample(1)  # [1, B, D]
            p.add(batch, posterior, z)
            for metric in chosen:
                if metric.update is not None:
                    metric.update(p, view, batch, posterior, z)
        if p.counts.n_sentences == 0:
            raise TextVAEError("evaluate_model: no batches to evaluate")
        results.update(n_sentences=float(p.counts.n_sentences), n_tokens=p.counts.n_tokens)
        for metric in chosen:
            results.update(metric.result(p))
    return results


# (key, label, format) in display order; "{K}" / "{N}" / "{thr}" / "{G}" / "{P}" are filled from
# the results.
_ROWS = [
    ("n_sentences", "sentences", "{:.0f}"),
    ("n_pairs", "pairs (context, response)", "{:.0f}"),
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
    ("mi_dataset", "MI (whole set, N={N})", "{:.3f}"),
    ("mi_batch", "MI (per-batch, B={B})", "{:.3f}"),
    ("mi_batch_he2019", "MI (per-batch, B={B}, He et al. 2019 as published)", "{:.3f}"),
    ("true_mi", "MI (true I(x; latent))", "{:.3f}"),
    ("au", "AU (Var >= {thr})", "{:.0f}"),
    ("dims_too_noisy", "inactive dims: too noisy", "{:.0f}"),
    ("dims_signal_too_weak", "inactive dims: signal too weak", "{:.0f}"),
    ("recon_bleu", "BLEU (greedy from posterior mean)", "{:.2f}"),
    ("distinct_1", "distinct-1 ({G})", "{:.4f}"),
    ("distinct_2", "distinct-2 ({G})", "{:.4f}"),
    ("self_bleu", "self-BLEU ({G})", "{:.2f}"),
    ("sample_words", "words per sample ({G})", "{:.1f}"),
    ("probe_acc", "probe accuracy ({P}/class, mean ± std)", "{:.4f}"),
]
# shown inside other rows' labels or values
_HIDDEN = {"iw_samples", "iw_nll_mc_se", "iw_se_sentences", "iw_ess", "au_threshold", "latent_dim", "gen_sentences",
           "n_contexts",
           "probe_acc_std", "mi_batch_he2019_noise_sd", "mi_batch_size", "probe_n_per_class", "probe_draws"}
_TOP_DIMS = 5  # dimensions listed in the KL-per-dim row


def _kl_dims(kl: Sequence[float]) -> str:
    """The largest per-dimension KLs, e.g. ``d7 2.31, d3 1.02, ... (5 of 32 dims >= 0.01)``."""
    top = sorted(range(len(kl)), key=lambda d: -kl[d])[:_TOP_DIMS]
    used = sum(k >= 0.01 for k in kl)
    return ", ".join(f"d{d} {kl[d]:.2f}" for d in top) + f" ({used} of {len(kl)} dims >= 0.01)"


def _samples(results: dict[str, Any]) -> str:
    """What the text metrics of samples read: a sentence model's prior samples, or a CVAE's responses."""
    n = f"{results.get('gen_sentences', float('nan')):.0f}"
    if "n_contexts" in results:
        return f"{n} responses to {results['n_contexts']:.0f} contexts"
    return f"{n} prior samples" if "latent_dim" in results else f"{n} samples"  # the language model has no prior


def format_table(results: dict[str, Any]) -> str:
    """Two-column text table of :func:`evaluate_model` results (and generation, probe and
    ground-truth figures when present), with the collapse verdict. Lists appear only as the
    KL-per-dim summary; they are for the JSON."""
    fill = {"K": f"{results.get('iw_samples', float('nan')):.0f}",
            "N": f"{results.get('n_sentences', results.get('n_pairs', float('nan'))):.0f}",
            "B": f"{results.get('mi_batch_size', float('nan')):.0f}",
            "thr": f"{results.get('au_threshold', AU_THRESHOLD):g}",
            "G": _samples(results),
            "P": f"{results.get('probe_n_per_class', float('nan')):.0f}"}
    rows = []
    exact = "latent_dim" not in results and results.get("iw_samples") == 1  # the language model's NLL
    for key, label, fmt in _ROWS:
        if key not in results or (fmt is None and not results[key]):  # no per-dimension KL without dimensions
            continue
        value = _kl_dims(results[key]) if fmt is None else fmt.format(results[key])
        if key == "iw_nll" and exact:
            label, value = "NLL (exact)", f"{value} (a language model's likelihood needs no sampling)"
        elif key == "iw_nll" and "iw_nll_mc_se" in results:
            value += (f" (Monte Carlo se {results['iw_nll_mc_se']:.3f}, from a second draw of "
                      f"{results.get('iw_se_sentences', math.nan):.0f} sentences; "
                      f"ESS {results.get('iw_ess', math.nan):.1f} of {fill['K']})")
        if key == "mi_batch_he2019" and "mi_batch_he2019_noise_sd" in results:
            value += f" (noise floor sd {results['mi_batch_he2019_noise_sd']:.3f})"
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
