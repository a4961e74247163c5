"""``textvae evaluate``'s table: a row for each figure of the results, with its label.

The registered metrics and text metrics declare their own rows (their ``rows``), in the order they
were registered, so a new metric's figures are labelled here without a line of this module. The rows
of what no metric computes are this module's: the counts of an evaluation pass, the ``<unk>`` rate, a
synthetic corpus's ground truth (each beside the figure it is the truth of), the latent probe and the
training run's own figures.
"""
from __future__ import annotations

import math
from typing import Any

from textvae.metrics._common import Row, format_figure
from textvae.metrics.evaluate import METRICS
from textvae.metrics.generation import TEXT_METRICS
from textvae.metrics.latent import AU_THRESHOLD, collapse_verdict

_HEAD = (Row("n_sentences", "sentences", "{:.0f}"), Row("n_pairs", "pairs (context, response)", "{:.0f}"),
         Row("n_tokens", "tokens (words + </s>)", "{:.0f}"), Row("unk_rate", "unknown words (<unk>)", "{:.2%}"))
# a synthetic corpus's ground truth, each row after the figure it is the truth of (a built-in metric's)
_TRUTH = {"iw_nll": Row("true_nll", "NLL (true, synthetic corpus)"), "iw_ppl": Row("true_ppl", "PPL (true)"),
          "mi_batch_he2019": Row("true_mi", "MI (true I(x; latent))", "{:.3f}")}


def _probe_text(value: float, results: dict[str, Any]) -> str:
    return f"{value:.4f} ± {results.get('probe_acc_std', 0.0):.4f} ({results.get('probe_draws', 1):.0f} draws)"


# the training run's figures, in its test report (and evaluate's steps, for the collapse verdict)
_TRAINING = (Row("train_steps", "training steps", "{:.0f}"), Row("train_epochs", "  whole epochs", "{:.0f}"),
             Row("train_seconds", "  training time (s)", "{:.1f}"), Row("train_tokens_per_s", "  tokens/s", "{:.0f}"),
             Row("padding_fraction", "  padding (share of batch positions)", "{:.1%}"))
_TAIL = (Row("probe_acc", "probe accuracy ({P}/class, mean ± std)", _probe_text),
         *Row.within("probe_acc_std", "probe_n_per_class", "probe_draws", "gen_sentences", "n_contexts"), *_TRAINING)


def table_rows() -> list[Row]:
    """Every row, in the table's order: the counts, then each registered metric's and text metric's
    rows, the ground truth beside its figures, the probe, the training run's figures."""
    rows = list(_HEAD)
    declared = [row for name in METRICS.in_order() for row in METRICS.get(name).rows]
    declared += [row for name in TEXT_METRICS.in_order() for row in TEXT_METRICS.get(name).rows]
    for row in declared:
        rows.append(row)
        if row.figure in _TRUTH:
            rows.append(_TRUTH[row.figure])
    return rows + list(_TAIL)


def _generated(results: dict[str, Any]) -> str:
    """What the text metrics of samples read: a sentence model's prior samples, or a CVAE's responses."""
    n = f"{results.get('gen_sentences', math.nan):.0f}"
    if "n_contexts" in results:
        return f"{n} responses to {results['n_contexts']:.0f} contexts"
    return f"{n} prior samples" if "latent_dim" in results else f"{n} samples"  # the language model has no prior


def format_table(results: dict[str, Any]) -> str:
    """Two-column text table of :func:`~textvae.metrics.evaluate.evaluate_model` results (and generation,
    probe and ground-truth figures when present), with the collapse verdict. Each figure has one row (a
    figure two metrics compute, the first's); lists appear only where a row formats them (the KL per
    dimension); they are for the JSON. A number no row declares shows under its own key."""
    fill = {"K": f"{results.get('iw_samples', math.nan):.0f}",
            "N": f"{results.get('n_sentences', results.get('n_pairs', math.nan)):.0f}",
            "B": f"{results.get('mi_batch_size', math.nan):.0f}",
            "thr": f"{results.get('au_threshold', AU_THRESHOLD):g}",
            "G": _generated(results),
            "P": f"{results.get('probe_n_per_class', math.nan):.0f}"}
    lines, seen = [], set()
    for row in table_rows():
        if row.figure in seen or row.figure not in results:
            continue
        seen.add(row.figure)
        if row.label is None:
            continue
        value = results[row.figure]
        text = row.fmt(value, results) if callable(row.fmt) else format_figure(value, row.fmt)
        if text is not None:
            label = row.label(results) if callable(row.label) else row.label
            lines.append((label.format(**fill), text))
    lines += [(key, f"{value:.4g}") for key, value in results.items()
              if key not in seen and isinstance(value, (int, float)) and not isinstance(value, bool)]
    if results.get("train_steps") == 0:  # an initialised model's posterior says nothing about collapse
        lines.append(("latent space", "not trained (0 steps): no verdict"))
    elif "au" in results and "latent_dim" in results:
        lines.append(("latent space", collapse_verdict(int(results["au"]), int(results["latent_dim"]))))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)
