"""Metrics on generated text: reconstruction BLEU, distinct-n and self-BLEU, and
:func:`generation_metrics`, which generates the texts from a model and scores them.

Sentences are strings of space-separated tokens as the tokenizer produced them (already
tokenized), so BLEU runs with sacrebleu's ``tokenize="none"``: it splits on whitespace only, and
a second tokenization would change the n-grams the model was scored on.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import Batches, eval_mode, iterate


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
    DialogWAE's evaluation (which ``textvae.dialogue.metrics`` follows); Li et al. (2016) divide by the
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


@dataclass
class GenerationResult:
    """The texts :func:`generation_metrics` generated and the figures computed on them."""

    references: list[str]  # the encoded sentences, as the tokenizer gives them back
    reconstructions: list[str]  # greedy decoding from each posterior mean ([] for the LM)
    samples: list[str]  # ancestral sampling from z ~ p(z) (from nothing for the LM)
    recon_bleu: Optional[float]  # None for the LM
    distinct_1: float
    distinct_2: float
    self_bleu: float

    def summary(self) -> dict[str, float]:
        figures = {"recon_bleu": self.recon_bleu, "distinct_1": self.distinct_1,
                   "distinct_2": self.distinct_2, "self_bleu": self.self_bleu,
                   "gen_sentences": float(len(self.samples))}
        return {k: v for k, v in figures.items() if v is not None}


def generation_metrics(model: Any, tokenizer: Any, batches: Batches, n_samples: int,
                       max_len: int, seed: int = 0, batch_size: int = 100) -> GenerationResult:
    """Generate with ``model`` and score the text.

    * Reconstruction BLEU (:func:`reconstruction_bleu`): every sentence of ``batches`` is encoded
      and its posterior mean decoded greedily; the reference is the input as the tokenizer decodes
      its ids, so a word outside the vocabulary is ``<unk>`` on both sides.
    * ``n_samples`` sentences sampled from z ~ p(z) with plain ancestral sampling (temperature 1, no
      truncation: the model's own distribution), in chunks of ``batch_size``; both z and the words
      come from one generator seeded with ``seed``: distinct-1/2 (:func:`distinct_n`) and self-BLEU
      (:func:`self_bleu`) of these samples.

    ``max_len`` caps decoding steps (``</s>`` included). Eval mode, no gradients.
    """
    from textvae.models.decoding import greedy, sample

    lm = getattr(model, "latent_dim", None) == 0
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    references, reconstructions, samples = [], [], []
    with eval_mode(model):
        if not lm:
            for batch in iterate(batches):
                references += [tokenizer.decode(ids) for ids in batch.tokens.tolist()]
                z = model.encode(batch).mean
                reconstructions += [tokenizer.decode(ids) for ids in greedy(model, z, max_len)]
        for start in range(0, n_samples, batch_size):
            n = min(batch_size, n_samples - start)
            z = None if lm else model.sample_prior(n, generator=generator)
            ids = sample(model, z, max_len, generator=generator, batch_size=n)
            samples += [tokenizer.decode(x) for x in ids]
    return GenerationResult(
        references=references, reconstructions=reconstructions, samples=samples,
        recon_bleu=None if lm else reconstruction_bleu(references, reconstructions),
        distinct_1=distinct_n(samples, 1), distinct_2=distinct_n(samples, 2),
        self_bleu=self_bleu(samples))
