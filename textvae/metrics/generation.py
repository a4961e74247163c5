"""Metrics on generated text: reconstruction BLEU, distinct-n and self-BLEU.

Sentences are strings of space-separated tokens as the tokenizer produced them (already
tokenized), so BLEU runs with sacrebleu's ``tokenize="none"``: it splits on whitespace only, and
a second tokenization would change the n-grams the model was scored on.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Optional, Sequence

from textvae.errors import TextVAEError


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
    """Distinct-n (Li et al. 2016): unique n-grams / total n-grams, pooled over the whole set
    (not averaged per sentence); 0.0 when no sentence has n tokens."""
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
