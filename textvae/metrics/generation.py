"""Metrics on generated text, registered like the evaluation pass's (``textvae list text_metric``).

A model's generated texts are gathered in :class:`GeneratedTexts` (:func:`generate_texts` for a
sentence VAE, ``textvae.dialogue.metrics.respond_to_split`` for the dialogue CVAE), and
:func:`score_texts` computes every registered text metric whose texts are there: reconstruction
BLEU, distinct-n and self-BLEU of samples, length, and Zhao et al. (2017)'s BLEU precision / recall
and intra-context distinct of responses. A new one is one function registered with
:func:`register_text_metric`.

Sentences are strings of space-separated tokens as the tokenizer produced them (already
tokenized), so BLEU runs with sacrebleu's ``tokenize="none"``: it splits on whitespace only, and
a second tokenization would change the n-grams the model was scored on.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import Batches, Row, eval_mode, iterate
from textvae.registry import Registry


def _bleu_class() -> Any:
    """sacrebleu's BLEU (the optional ``eval`` extra)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise TextVAEError("BLEU metrics need sacrebleu: pip install 'textvae[eval]'") from None
    return BLEU


def reconstruction_bleu(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus BLEU (Papineni et al. 2002, sacrebleu's defaults: 4-grams, exp smoothing) of the
    reconstructions ``hypotheses[i]`` against the inputs ``references[i]``, on a 0-100 scale."""
    if len(references) != len(hypotheses):
        raise TextVAEError(f"reconstruction_bleu: {len(references)} references but "
                           f"{len(hypotheses)} hypotheses")
    if not references:
        raise TextVAEError("reconstruction_bleu: no sentences")
    bleu = _bleu_class()(tokenize="none")
    return float(bleu.corpus_score(list(hypotheses), [list(references)]).score)


def distinct_n(sentences: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams / total n-grams, pooled over the whole set (not averaged per
    sentence); 0.0 when no sentence has n tokens. The denominator is the n-gram count, as in
    DialogWAE's evaluation (which the dialogue task's figures follow); Li et al. (2016) divide by the
    generated tokens instead, which gives distinct-2 about a tenth lower for ~10-word sentences."""
    if n < 1:
        raise TextVAEError(f"distinct_n: n must be >= 1, got {n}")
    ngrams = [tuple(toks[i:i + n]) for toks in (s.split() for s in sentences)
              for i in range(len(toks) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _ngram_counts(tokens: list[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_n + 1)
                   for i in range(len(tokens) - n + 1))


def self_bleu(sentences: Sequence[str], max_n: int = 4, sample: Optional[int] = 1000,
              seed: int = 0) -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen): each sentence scored by sentence-BLEU against all
    the other sentences of the set as references, averaged; 0-100, higher = less diverse.

    Identical to averaging sacrebleu's ``sentence_score(s_i, others)`` (``tokenize="none"``),
    but the multi-reference statistics are built once: a hypothesis n-gram is clipped at its
    largest count in any other sentence, which is the largest count overall unless sentence i
    itself holds it, then the second largest; the reference length is the other sentences' length
    closest to the hypothesis (the shorter on ties). sacrebleu's ``BLEU.compute_bleu`` turns these
    statistics into the score. Smoothing: Chen & Cherry's method 1 (floor 0.1 on zero n-gram
    counts; Texygen's choice), with the effective order for sentences shorter than ``max_n``.

    At most ``sample`` sentences (a seeded random subset; ``None`` = all) are scored, each
    still against all the others.
    """
    if len(sentences) < 2:
        raise TextVAEError(f"self_bleu: need at least 2 sentences, got {len(sentences)}")
    bleu = _bleu_class()
    tokens = [s.split() for s in sentences]
    counts = [_ngram_counts(t, max_n) for t in tokens]
    # n-gram -> (largest count, sentence holding it, second largest count over other sentences)
    top: dict[tuple[str, ...], tuple[int, int, int]] = {}
    for i, c in enumerate(counts):
        for gram, k in c.items():
            best, owner, second = top.get(gram, (0, -1, 0))
            if k > best:
                top[gram] = (k, i, best)
            elif k > second:
                top[gram] = (best, owner, k)
    length_counts = Counter(len(t) for t in tokens)

    scored = range(len(sentences))
    if sample is not None and len(sentences) > sample:
        scored = sorted(random.Random(seed).sample(scored, sample))
    scores = []
    for i in scored:
        correct, total = [0] * max_n, [0] * max_n
        for gram, k in counts[i].items():
            best, owner, second = top[gram]
            total[len(gram) - 1] += k
            correct[len(gram) - 1] += min(k, second if owner == i else best)
        hyp_len = len(tokens[i])
        others = [n for n, c in length_counts.items() if c - (n == hyp_len) > 0]
        ref_len = min(others, key=lambda n: (abs(n - hyp_len), n))
        scores.append(bleu.compute_bleu(correct, total, hyp_len, ref_len, smooth_method="floor",
                                        smooth_value=0.1, effective_order=True,
                                        max_ngram_order=max_n).score)
    return sum(scores) / len(scores)


@lru_cache(maxsize=None)
def _sentence_bleu(order: int) -> Callable[[str, str], float]:
    """hypothesis, reference -> sentence BLEU-``order`` on 0-1: whitespace tokens, exponential smoothing
    of zero n-gram counts (Chen & Cherry 2014, method 3) and effective order. Zhao et al. used NLTK's
    smoothing method 7, so absolute values differ from theirs."""
    scorer = _bleu_class()(tokenize="none", max_ngram_order=order, smooth_method="exp", effective_order=True)
    return lambda hyp, ref: scorer.sentence_score(hyp, [ref]).score / 100.0


def bleu_precision_recall(hypotheses: Sequence[str], references: Sequence[str], order: int = 4
                          ) -> tuple[float, float]:
    """Zhao et al. (2017, section 5.2)'s BLEU precision and recall of the n responses h_1..h_n to one
    context against its m references r_1..r_m, with sentence BLEU-``order`` (:func:`_sentence_bleu`):

        precision = 1/n sum_i max_j BLEU(r_j, h_i),   recall = 1/m sum_j max_i BLEU(r_j, h_i)
    """
    if not hypotheses or not references:
        raise TextVAEError("bleu_precision_recall: need at least one hypothesis and one reference")
    bleu = _sentence_bleu(order)
    scores = [[bleu(h, r) for r in references] for h in hypotheses]  # [n, m]
    precision = sum(max(row) for row in scores) / len(hypotheses)
    recall = sum(max(col) for col in zip(*scores)) / len(references)
    return precision, recall


@dataclass
class GeneratedTexts:
    """The texts a model generated for one evaluation, which the text metrics score. A field the
    model cannot fill stays empty, and the metrics that read it are skipped.

    ``reconstructions``: (input, its reconstruction) pairs; a sentence VAE's greedy decoding of each
    posterior mean (none for the language model). ``samples``: texts generated from the prior, pooled;
    a sentence VAE's decodings of z ~ p(z), the CVAE's responses to every context. ``responses``: per
    context, (its references, the n responses generated for it, each from its own z ~ p(z|c)).
    """

    reconstructions: list[tuple[str, str]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    responses: list[tuple[list[str], list[str]]] = field(default_factory=list)


@dataclass(frozen=True)
class TextMetric:
    """One registered text metric: ``result(texts) -> {figure: value}``, computed by :func:`score_texts`
    when the field of :class:`GeneratedTexts` it ``reads`` holds at least ``least`` texts; ``needs``: the
    optional packages it imports (:func:`check_text_metrics`); ``study_columns``: (figure, label, format)
    columns it adds to a study's table and ``textvae compare``'s, where a run has the figure; ``rows``: its
    figures' rows in ``textvae evaluate``'s table (:class:`~textvae.metrics._common.Row`)."""

    result: Callable[[GeneratedTexts], dict[str, float]]
    reads: str
    least: int = 1
    needs: tuple[str, ...] = ()
    study_columns: tuple[tuple[str, str, str], ...] = ()
    rows: tuple[Row, ...] = ()

    @property
    def doc(self) -> str:
        """What ``textvae list text_metric`` says of it: its ``result``'s docstring and what it reads."""
        needs = f" Needs: {', '.join(self.needs)}." if self.needs else ""
        return f"{inspect.getdoc(self.result) or ''}\n\nReads: {self.reads} (at least {self.least}).{needs}"


TEXT_METRICS: Registry = Registry(
    "text metric", recipe="computed on generated texts by textvae evaluate (sentences) and by the dialogue "
                          "task's test report (responses)")
_FIELDS = tuple(f.name for f in dataclasses.fields(GeneratedTexts))
_COUNTS = {"samples": "gen_sentences", "responses": "n_contexts"}  # how many texts a metric of them scored


def register_text_metric(name: str, reads: str, least: int = 1, needs: tuple[str, ...] = (),
                         study_columns: tuple[tuple[str, str, str], ...] = (), rows: tuple[Row, ...] = ()
                         ) -> Callable[[Callable[[GeneratedTexts], dict[str, float]]], TextMetric]:
    """Decorator: ``@register_text_metric("self_bleu", reads="samples", least=2, needs=("sacrebleu",))``
    on ``result(texts) -> dict`` registers a :class:`TextMetric` under ``name``."""
    if reads not in _FIELDS:
        raise TextVAEError(f"text metric {name!r}: unknown texts {reads!r}; valid: {', '.join(_FIELDS)}")
    return lambda result: TEXT_METRICS.register(name)(
        TextMetric(result, reads, least, tuple(needs), study_columns, rows))


def list_text_metrics() -> list[str]:
    return TEXT_METRICS.names()


def check_text_metrics(instead: str = "") -> None:
    """Before the work that ends in :func:`score_texts` (an IW pass, a training run), not after it: the
    packages the registered text metrics need are installed, else a one-line error naming them, the
    extra that installs them and ``instead``, the way to do without."""
    missing = sorted({package for name in list_text_metrics() for package in TEXT_METRICS.get(name).needs
                      if importlib.util.find_spec(package) is None})
    if missing:
        raise TextVAEError(f"the text metrics need {', '.join(missing)}: pip install 'textvae[eval]'"
                           + (f" ({instead})" if instead else ""))


def score_texts(texts: GeneratedTexts, metrics: Optional[Sequence[str]] = None) -> dict[str, float]:
    """The registered text ``metrics`` (all by default) of ``texts``, each where its texts are there,
    and how many texts they scored: ``gen_sentences`` (samples), ``n_contexts`` (responses)."""
    chosen = [TEXT_METRICS.get(name) for name in (list_text_metrics() if metrics is None else metrics)]
    figures: dict[str, float] = {}
    for metric in chosen:
        if len(getattr(texts, metric.reads)) >= metric.least:
            figures.update(metric.result(texts))
            if metric.reads in _COUNTS:
                figures[_COUNTS[metric.reads]] = float(len(getattr(texts, metric.reads)))
    return figures


@register_text_metric("recon_bleu", reads="reconstructions", needs=("sacrebleu",),
                      rows=(Row("recon_bleu", "BLEU, 0-100 (greedy from posterior mean)"),))
def _recon_bleu(texts: GeneratedTexts) -> dict[str, float]:
    """recon_bleu: corpus BLEU of the reconstructions against their inputs (:func:`reconstruction_bleu`)."""
    references, hypotheses = zip(*texts.reconstructions)
    return {"recon_bleu": reconstruction_bleu(references, hypotheses)}


@register_text_metric("distinct", reads="samples", study_columns=(("distinct_2", "dist-2", "{:.3f}"),),
                      rows=tuple(Row(f"distinct_{n}", f"distinct-{n} ({{G}})", "{:.4f}") for n in (1, 2)))
def _distinct(texts: GeneratedTexts) -> dict[str, float]:
    """distinct_1, distinct_2: distinct-n of the samples pooled (:func:`distinct_n`; for responses,
    Zhao et al.'s and DialogWAE's inter-context distinct)."""
    return {f"distinct_{n}": distinct_n(texts.samples, n) for n in (1, 2)}


@register_text_metric("self_bleu", reads="samples", least=2, needs=("sacrebleu",),
                      rows=(Row("self_bleu", "self-BLEU, 0-100 ({G})"),))
def _self_bleu(texts: GeneratedTexts) -> dict[str, float]:
    """self_bleu: each sample's BLEU against the others, averaged (:func:`self_bleu`)."""
    return {"self_bleu": self_bleu(texts.samples)}


@register_text_metric("length", reads="samples", rows=(Row("sample_words", "words per sample ({G})", "{:.1f}"),))
def _length(texts: GeneratedTexts) -> dict[str, float]:
    """sample_words: the samples' mean length in tokens (``</s>`` not counted), beside distinct-n and
    self-BLEU, which depend on it."""
    return {"sample_words": sum(len(s.split()) for s in texts.samples) / len(texts.samples)}


@register_text_metric("bleu_precision_recall", reads="responses", needs=("sacrebleu",),
                      study_columns=(("bleu2_precision", "BLEU-2 P", "{:.3f}"), ("bleu2_recall", "BLEU-2 R", "{:.3f}")),
                      rows=tuple(Row(f"bleu{k}_{side}", f"BLEU-{k} {side}, 0-1 ({{G}})", "{:.4f}")
                                 for k in (1, 2, 3, 4) for side in ("precision", "recall")))
def _bleu_precision_recall(texts: GeneratedTexts) -> dict[str, float]:
    """bleuK_precision, bleuK_recall (K = 1..4): Zhao et al. (2017)'s BLEU-K precision and recall of each
    context's responses (:func:`bleu_precision_recall`), averaged over contexts; on 0-1 as in their tables."""
    figures = {}
    for k in (1, 2, 3, 4):
        pr = [bleu_precision_recall(hyps, refs, k) for refs, hyps in texts.responses]
        figures[f"bleu{k}_precision"] = sum(p for p, _ in pr) / len(pr)
        figures[f"bleu{k}_recall"] = sum(r for _, r in pr) / len(pr)
    return figures


@register_text_metric("distinct_intra", reads="responses",
                      study_columns=(("intra_dist2", "intra dist-2", "{:.3f}"),),
                      rows=tuple(Row(f"intra_dist{n}", f"distinct-{n} within a context ({{G}})", "{:.4f}") for n in (1, 2)))
def _distinct_intra(texts: GeneratedTexts) -> dict[str, float]:
    """intra_dist1, intra_dist2: distinct-n of each context's responses, averaged over contexts (Zhao et
    al. 2017; the pooled, inter-context figure is ``distinct``)."""
    return {f"intra_dist{n}": sum(distinct_n(hyps, n) for _, hyps in texts.responses) / len(texts.responses)
            for n in (1, 2)}


def generate_texts(model: Any, tokenizer: Any, batches: Batches, n_samples: int,
                   max_len: int, seed: int = 0, batch_size: int = 100) -> GeneratedTexts:
    """The texts a sentence VAE (or the language model) generates for :func:`score_texts`.

    * Reconstructions: every sentence of ``batches`` is encoded and its posterior mean decoded
      greedily; the input is kept as the tokenizer decodes its ids, so a word outside the vocabulary
      is ``<unk>`` on both sides. None for the language model.
    * ``n_samples`` samples from z ~ p(z) (from nothing for the LM) with plain ancestral sampling
      (temperature 1, no truncation: the model's own distribution), in chunks of ``batch_size``; both
      z and the words come from one generator seeded with ``seed``.

    ``max_len`` caps decoding steps (``</s>`` included). Eval mode, no gradients.
    """
    from textvae.models.decoding import greedy, sample

    lm = getattr(model, "latent_dim", None) == 0
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    texts = GeneratedTexts()
    with eval_mode(model):
        if not lm:
            for batch in iterate(batches):
                inputs = [tokenizer.decode(ids) for ids in batch.tokens.tolist()]
                z = model.encode(batch).mean
                outputs = [tokenizer.decode(ids) for ids in greedy(model, z, max_len)]
                texts.reconstructions += zip(inputs, outputs)
        for start in range(0, n_samples, batch_size):
            n = min(batch_size, n_samples - start)
            z = None if lm else model.sample_prior(n, generator=generator)
            texts.samples += [tokenizer.decode(x) for x in sample(model, z, max_len, generator=generator, batch_size=n)]
    return texts
