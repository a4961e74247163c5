"""Evaluation metrics of text VAEs, with the field's published definitions.

Likelihood (``likelihood``): :func:`iw_nll` (importance-weighted NLL / IW-PPL, with the NLL's Monte Carlo
standard error from a second draw, :class:`IWAccumulator`), :func:`elbo_terms`
(rec, KL, −ELBO, ELBO-PPL). Information (``information``): :func:`mi_dataset` (whole set),
:func:`mi_batch` (He et al. 2019's per-batch aggregate), :func:`mi_batch_he2019` (their estimator
as published, with its noise floor :func:`he2019_noise_sd`). Latent usage (``latent``): :func:`active_units`,
:func:`collapse_diagnostics`. Text (``generation``): :func:`reconstruction_bleu`, :func:`distinct_n`,
:func:`self_bleu`, :func:`bleu_precision_recall`, registered as text metrics (:func:`register_text_metric`)
that :func:`score_texts` computes on a model's :class:`GeneratedTexts` (:func:`generate_texts`). Probing
(``probe``): :func:`latent_probe`, :func:`probe_model`. All at once: :func:`evaluate_model` and
:func:`format_table` (``table``; ``textvae evaluate`` adds generation, probe and ground truth); a new metric
is one function registered with :func:`register_metric` (on an evaluation pass) or
:func:`register_text_metric` (on generated texts), with the rows it adds to the table (:class:`Row`).

Models are used only through the protocol of ``docs/design.md``: ``encode``, ``prior.log_prob``,
``log_likelihood``, ``latent_dim`` and, for a conditional model, ``given``; the generation metrics also
``sample_prior`` and the decoding steps of :mod:`textvae.models.decoding` (``decode_step``, ``reorder_state``).
"""
from textvae.metrics._common import Row, format_figure
from textvae.metrics.evaluate import METRICS, EvalPass, Metric, evaluate_model, get_metric, list_metrics, register_metric
from textvae.metrics.generation import (TEXT_METRICS, GeneratedTexts, TextMetric, bleu_precision_recall,
                                        check_text_metrics, distinct_n, generate_texts, list_text_metrics, reconstruction_bleu,
                                        register_text_metric, score_texts, self_bleu)
from textvae.metrics.information import he2019_noise_sd, mi_batch, mi_batch_he2019, mi_dataset
from textvae.metrics.latent import (ActiveUnits, CollapseDiagnostics, active_units,
                                    collapse_diagnostics, collapse_verdict)
from textvae.metrics.likelihood import (ElboRedraw, ElboResult, IWAccumulator, IWEstimate, IWProgress, IWResult, draw_samples,
                                        elbo_batch, elbo_terms, iw_batch, iw_estimate, iw_log_marginal, iw_log_weights,
                                        iw_description, iw_nll, iw_redraw_variance, iw_samples_for)
from textvae.metrics.probe import ProbeResult, draw_labelled, latent_probe, probe_model
from textvae.metrics.table import format_table

__all__ = [
    "METRICS", "EvalPass", "Metric", "Row", "evaluate_model", "format_figure", "format_table", "get_metric", "list_metrics",
    "register_metric",
    "TEXT_METRICS", "GeneratedTexts", "TextMetric", "bleu_precision_recall", "check_text_metrics", "distinct_n", "generate_texts",
    "list_text_metrics", "reconstruction_bleu", "register_text_metric", "score_texts", "self_bleu",
    "mi_batch", "mi_batch_he2019", "mi_dataset", "he2019_noise_sd",
    "ActiveUnits", "CollapseDiagnostics", "active_units", "collapse_diagnostics", "collapse_verdict",
    "ElboRedraw", "ElboResult", "IWAccumulator", "IWEstimate", "IWProgress", "IWResult", "draw_samples", "elbo_batch", "elbo_terms",
    "iw_batch", "iw_estimate", "iw_log_marginal", "iw_log_weights", "iw_nll", "iw_redraw_variance",
    "iw_description", "iw_samples_for",
    "ProbeResult", "draw_labelled", "latent_probe", "probe_model",
]
