"""The registered metrics, one pass over an evaluation set computing them, and its table.

A metric is one registered function (:func:`register_metric`); :func:`evaluate_model` computes any
of them, the training loop computes those registered for its stages (``epoch``, ``periodic``,
``test``) for every task, ``textvae evaluate``'s table shows the rows it declares and a study's table
the columns. A conditional
model (the dialogue CVAE) is evaluated given each batch's conditions (:func:`batch_protocol`).
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import Batches, Row, eval_mode, format_figure, iterate, seeded
from textvae.metrics.information import (HE2019_BATCH, he2019_noise_sd, largest_group, mi_batch, mi_batch_he2019,
                                         mi_dataset)
from textvae.metrics.latent import AU_THRESHOLD, active_units, collapse_diagnostics
from textvae.metrics.likelihood import (ElboAccumulator, ElboRedraw, IWAccumulator, IWProgress, elbo_batch,
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
    elbo_redraw: ElboRedraw = field(default_factory=ElboRedraw)
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
            self.sigmas.append(torch.exp(0.5 * posterior.logvar))  # the protocol has mu and logvar, no std
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
    ``rows``: its figures' rows in ``textvae evaluate``'s table, in order (:class:`Row`).
    """

    result: Callable[[EvalPass], dict[str, Any]]
    update: Optional[Callable[[EvalPass, Any, Any, Any, torch.Tensor], None]] = None
    latent: bool = True
    keeps_posteriors: bool = False
    stages: tuple[str, ...] = ()
    study_columns: tuple[tuple[str, str, str], ...] = ()
    rows: tuple[Row, ...] = ()

    def __post_init__(self) -> None:
        # a plugin's slip is named as it registers, not when a table is printed long after (frozen: set directly)
        if isinstance(self.stages, str):
            object.__setattr__(self, "stages", (self.stages,))
        if isinstance(self.rows, Row):
            object.__setattr__(self, "rows", (self.rows,))
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise TextVAEError(f"unknown stages {unknown}; valid: {', '.join(STAGES)}")
        if not all(isinstance(row, Row) for row in self.rows):
            raise TextVAEError(f"rows must be Row(figure, label, format) entries, got {self.rows!r}")

    @property
    def doc(self) -> str:
        """What ``textvae list metric`` says of it: its ``result``'s docstring and its stages."""
        return f"{inspect.getdoc(self.result) or ''}\n\nStages: {', '.join(self.stages) or 'textvae evaluate only'}."


METRICS: Registry = Registry("metric", recipe="every metric is computed by textvae evaluate and at the stages it names")


def register_metric(name: str, **options: Any) -> Callable[[Callable[[EvalPass], dict[str, Any]]], Metric]:
    """Decorator: ``@register_metric("au", stages=("epoch",))`` on ``result(pass) -> dict`` registers
    a :class:`Metric` with those options under ``name``."""
    valid = [f.name for f in fields(Metric) if f.name != "result"]
    if set(options) - set(valid):
        raise TextVAEError(f"metric {name!r}: unknown option(s) {sorted(set(options) - set(valid))}; valid: "
                           f"{', '.join(valid)}")
    try:
        Metric(lambda p: {}, **options)  # its options' errors now, before the decorated function is reached
    except TextVAEError as e:
        raise TextVAEError(f"metric {name!r}: {e}") from None

    def add(result: Callable[[EvalPass], dict[str, Any]]) -> Metric:
        # a metric is an instance: its result function says where it was defined (a cell run again replaces it)
        origin = None if "<lambda>" in result.__qualname__ else f"{result.__module__}.{result.__qualname__}"
        return METRICS.register(name, origin, result.__module__)(Metric(result, **options))

    return add


def list_metrics(stage: Optional[str] = None) -> list[str]:
    """Every registered metric, or those the training loop computes at ``stage``."""
    return [n for n in METRICS.names() if stage is None or stage in METRICS.get(n).stages]


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def _iw_update(p: EvalPass, model: Any, batch: Any, posterior: Any, z: torch.Tensor) -> None:
    p.iw.add(model, batch, posterior, p.n_samples, p.max_tokens)


def _iw_nll_label(results: dict[str, Any]) -> str:
    exact = "latent_dim" not in results and results.get("iw_samples") == 1  # the language model's NLL
    return "NLL (exact)" if exact else "NLL (IW, K={K})"


def _iw_ppl_label(results: dict[str, Any]) -> str:
    return "PPL (exact)" if _iw_nll_label(results) == "NLL (exact)" else "PPL (IW)"


def _iw_nll_text(value: float, results: dict[str, Any]) -> str:
    if _iw_nll_label(results) == "NLL (exact)":
        return f"{value:.2f} (a language model's likelihood needs no sampling)"
    if "iw_nll_mc_se" not in results:
        return f"{value:.2f}"
    what = "pairs" if "n_pairs" in results else "sentences"  # the dialogue CVAE's are (context, response) pairs
    return (f"{value:.2f} (Monte Carlo se {results['iw_nll_mc_se']:.3f}, from a second draw of "
            f"{results.get('iw_se_sentences', math.nan):.0f} {what}; "
            f"ESS {results.get('iw_ess', math.nan):.1f} of {results.get('iw_samples', math.nan):.0f})")


@register_metric("iw", update=_iw_update, latent=False, stages=("test",),
                 rows=(Row("iw_nll", _iw_nll_label, _iw_nll_text), Row("iw_ppl", _iw_ppl_label),
                       *Row.within("iw_samples", "iw_nll_mc_se", "iw_se_sentences", "iw_ess")))
def _iw(p: EvalPass) -> dict[str, Any]:
    """iw_nll, iw_ppl, iw_samples (K = ``n_samples``; see ``iw_nll``); beside the NLL its Monte
    Carlo standard error iw_nll_mc_se, from a second draw of iw_se_sentences sentences, and the
    weights' mean effective sample size iw_ess (see ``IWAccumulator``)."""
    return p.iw.result().summary()


def _elbo_update(p: EvalPass, model: Any, batch: Any, posterior: Any, z: torch.Tensor) -> None:
    p.elbo.add(batch.n_tokens, *elbo_batch(model, batch, posterior, z))


_TOP_DIMS = 5  # dimensions listed in the KL-per-dim row


def _kl_dims(kl: Sequence[float], results: dict[str, Any]) -> Optional[str]:
    """The largest per-dimension KLs, e.g. ``d7 2.31, d3 1.02, ... (5 of 32 dims >= 0.01)``; no row
    without dimensions."""
    if not kl:
        return None
    top = sorted(range(len(kl)), key=lambda d: -kl[d])[:_TOP_DIMS]
    used = sum(k >= 0.01 for k in kl)
    return ", ".join(f"d{d} {kl[d]:.2f}" for d in top) + f" ({used} of {len(kl)} dims >= 0.01)"


def _with_mc_se(se_key: str, what: str) -> Callable[[float, dict[str, Any]], str]:
    """A row's text: the figure, and beside it ``(what; Monte Carlo se ...)`` where the results have ``se_key``
    (``elbo_mc_se``'s, in a test report; the KL's only where it is sampled)."""
    def text(value: float, results: dict[str, Any]) -> str:
        se = results.get(se_key)
        return format_figure(value, "{:.2f}") + (f" ({what}; Monte Carlo se {se:.3f})" if se is not None else "")
    return text


@register_metric("elbo", update=_elbo_update, latent=False, stages=STAGES,
                 rows=(Row("neg_elbo", "-ELBO (bound on NLL)", _with_mc_se("neg_elbo_mc_se", "one draw of z each")),
                       Row("rec", "  reconstruction"), Row("kl", "  KL", _with_mc_se("kl_mc_se", "one-sample estimate")),
                       Row("kl_per_dim", "  KL per dim, largest", _kl_dims), Row("elbo_ppl", "PPL (ELBO bound)")))
def _elbo(p: EvalPass) -> dict[str, Any]:
    """rec, kl, neg_elbo, elbo_ppl (one sample, beta = 1; see ``elbo_terms``)."""
    summary = p.elbo.result()
    figures = summary.summary()
    if p.per_dim and summary.kl_per_dim is not None:
        figures["kl_per_dim"] = summary.kl_per_dim.tolist()
    return figures


def _elbo_redraw_update(p: EvalPass, model: Any, batch: Any, posterior: Any, z: torch.Tensor) -> None:
    p.elbo_redraw.add(model, batch, posterior)


@register_metric("elbo_mc_se", update=_elbo_redraw_update, stages=("test",),
                 rows=Row.within("neg_elbo_mc_se", "kl_mc_se"))
def _elbo_mc_se(p: EvalPass) -> dict[str, Any]:
    """neg_elbo_mc_se: the Monte Carlo standard error of the one-sample -ELBO, from two more draws of every
    sentence's terms on a stream of their own (see ``ElboRedraw``); kl_mc_se too where the KL is a one-sample
    estimate (a flow prior or posterior). The language model's -ELBO is its exact NLL: no figure."""
    return p.elbo_redraw.summary()


@register_metric("mi_dataset", keeps_posteriors=True, stages=("periodic", "test"),
                 rows=(Row("mi_dataset", "MI (whole set, N={N})", "{:.3f}"),))
def _mi_dataset(p: EvalPass) -> dict[str, Any]:
    """The whole-set MI estimator (same z as the ELBO): textvae's reported MI."""
    return {"mi_dataset": mi_dataset(p.posteriors, p.samples)}


@register_metric("mi_batch", keeps_posteriors=True, stages=STAGES,
                 rows=(Row("mi_batch", "MI (per-batch, B={B})", "{:.3f}"), *Row.within("mi_batch_size")))
def _mi_batch(p: EvalPass) -> dict[str, Any]:
    """The per-batch MI estimator (He et al. 2019's aggregate posterior over groups of at most their
    batch size HE2019_BATCH within each evaluation batch; same z as the ELBO), and the largest group's
    size B as ``mi_batch_size``."""
    return {"mi_batch": mi_batch(p.posteriors, p.samples, batch_size=HE2019_BATCH), "mi_batch_size": _group_size(p)}


def _group_size(p: EvalPass) -> float:
    """The per-batch estimators' B: HE2019_BATCH, or fewer where the evaluation batches split into smaller
    groups (100 sentences: four of 25) or hold fewer (a file of four sentences), so the row's label says over
    which groups it averaged."""
    return float(largest_group((len(z) for z in p.samples), HE2019_BATCH))


def _he2019_text(value: float, results: dict[str, Any]) -> str:
    noise = results.get("mi_batch_he2019_noise_sd")
    return f"{value:.3f}" + (f" (noise floor sd {noise:.3f})" if noise is not None else "")


@register_metric("mi_batch_he2019", keeps_posteriors=True, stages=("epoch", "test"),
                 rows=(Row("mi_batch_he2019", "MI (per-batch, B={B}, He et al. 2019 as published)", _he2019_text),
                       *Row.within("mi_batch_he2019_noise_sd", "mi_batch_size")))
def _mi_batch_he2019(p: EvalPass) -> dict[str, Any]:
    """He et al.'s per-batch estimator as published, and its noise floor sd sqrt(D / 2N); at each
    epoch too, where aggressive training may take it as its switch-off signal, as He et al.'s code does.
    Over groups of at most HE2019_BATCH sentences, as ``mi_batch``."""
    n, d = sum(len(z) for z in p.samples), p.samples[0].shape[-1]
    return {"mi_batch_he2019": mi_batch_he2019(p.posteriors, p.samples, batch_size=HE2019_BATCH),
            "mi_batch_he2019_noise_sd": he2019_noise_sd(d, n), "mi_batch_size": _group_size(p)}


def _au_text(value: float, results: dict[str, Any]) -> str:
    return f"{value:.0f}" + (f" / {results['latent_dim']:.0f}" if "latent_dim" in results else "")


@register_metric("au", stages=STAGES,
                 rows=(Row("au", "AU (Var >= {thr})", _au_text), *Row.within("au_threshold", "latent_dim")))
def _au(p: EvalPass) -> dict[str, Any]:
    """au, au_threshold, latent_dim (active units: Var_x E[z|x] >= the threshold)."""
    au = active_units(p.mean, p.au_threshold)
    figures = {"au": float(au.count), "au_threshold": p.au_threshold, "latent_dim": float(p.mean.shape[1])}
    if p.per_dim:
        figures["var_mu_per_dim"] = au.variances.tolist()
    return figures


@register_metric("diagnostics", stages=("test",),
                 rows=(Row("dims_too_noisy", "inactive dims: too noisy", "{:.0f}"),
                       Row("dims_signal_too_weak", "inactive dims: signal too weak", "{:.0f}")))
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
            figures["snr_per_dim"] = diag.signal_to_noise.tolist()
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
    Returns a flat dict of floats (plus n_sentences, n_tokens); :func:`~textvae.metrics.table.format_table`
    prints it.
    ``per_dim`` adds per-dimension lists [D]: ``kl_per_dim`` (mean analytic KL; with ``elbo``,
    when the posterior has a closed form), ``var_mu_per_dim`` (Var_x of the posterior mean; with
    ``au`` / ``diagnostics``), and with ``diagnostics`` ``sigma_per_dim`` (E_x[sigma_d]) and
    ``snr_per_dim`` (Var_x(mu_d) / E_x[sigma_d²], whose ½·log(1 + ratio) is a Gaussian channel's information:
    scale-free where AU is not, as under BN-VAE's fixed variance of the means), Gaussian posteriors, and
    ``dim_modes`` (active / too noisy / signal too weak). ``iw_progress``: the IW
    pass's finished batches are kept there, and a pass that was stopped resumes from them with the
    same figures (:class:`~textvae.metrics.likelihood.IWProgress`).
    """
    metrics = list_metrics() if metrics is None else [metrics] if isinstance(metrics, str) else metrics
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
        given_by = {key: "evaluate_model" for key in results}
        for name, metric in zip(sorted(set(metrics)), chosen):
            for key, value in figures_of(name, metric.result(p)).items():
                # two metrics may share a figure (mi_batch_size) only where they agree on it
                if key in results and repr(results[key]) != repr(value):  # NaN, lists of floats: equal as written
                    raise TextVAEError(f"metric {name!r} gives the figure {key!r}, which {given_by[key]!r} gives as "
                                       f"{results[key]!r}; name its figures apart")
                results[key], given_by[key] = value, name
    return results


def figures_of(name: str, result: Any) -> dict[str, Any]:
    """A metric's result, checked to be what reports and logs take: a dict of figure name -> a number (or a list
    of numbers, per dimension); an error naming the metric otherwise, rather than a traceback where a report or
    its JSON log reads it."""
    if not isinstance(result, dict):
        raise TextVAEError(f"metric {name!r} returned {type(result).__name__}, not a dict of figures "
                           f"(name -> a number, or a list per dimension)")
    for key, value in result.items():
        try:  # what the run's JSON log will write
            json.dumps(value)
        except (TypeError, ValueError):
            raise TextVAEError(f"metric {name!r}: figure {key!r} is a {type(value).__name__}, which a report cannot "
                               f"write; give a float (a tensor's .item()) or a list of floats") from None
    return result
