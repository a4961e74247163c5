"""The one place where per-sentence sums become corpus figures.

Models return per-sentence summed negative log-likelihoods and per-sentence token counts; every
NLL / PPL figure textvae reports (``evaluate``, validation, test reports, studies) is reduced here, so
there is a single definition. (The training step's loss, the mean over the batch's sentences, is the
objective's: :class:`textvae.objective.Objective`.)

* token count of a sentence = number of words + 1 (``</s>`` is predicted and counted, ``<s>`` is not);
* NLL = mean over sentences of the per-sentence sum, in nats;
* PPL = exp(Σ_sentences NLL / Σ_sentences tokens) -- a corpus-level ratio, not a mean of per-sentence PPLs.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def sentence_tokens(n_words: Any) -> Any:
    """Predicted tokens of sentences of ``n_words`` words (a number, tensor or array): n + 1.

    The decoder predicts ``w1 .. wn </s>``; ``<s>`` is only ever an input.
    """
    return n_words + 1


def token_counts(lengths: torch.Tensor) -> torch.Tensor:
    """Predicted tokens per sentence from the lengths of ``<s> w1 .. wn </s>`` (= n + 2): n + 1."""
    return sentence_tokens(lengths - 2)


def perplexity(total_nll: float, total_tokens: float) -> float:
    """PPL = exp(Σ NLL / Σ tokens); ``inf`` when the exponent overflows."""
    if total_tokens <= 0:
        raise ValueError("perplexity of an empty corpus")
    x = total_nll / total_tokens
    return math.exp(x) if x < 700 else math.inf


def corpus_nll(nll: Any, n_tokens: Any) -> tuple[float, float]:
    """(NLL, PPL) of a corpus from its sentences' NLLs and predicted-token counts (1-D arrays or tensors):
    the mean per sentence and exp(Σ NLL / Σ tokens)."""
    total = float(nll.sum())
    return total / max(len(nll), 1), perplexity(total, float(n_tokens.sum()))


class CorpusAccumulator:
    """Accumulates per-sentence sums (any named quantity) and token counts over batches.

    ``add(n_tokens=..., rec=..., kl=...)`` takes 1-D per-sentence tensors; ``mean(name)`` is the
    per-sentence mean and ``ppl(name)`` the corpus perplexity of that quantity.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n_sentences = 0
        self.n_tokens = 0.0

    def add(self, n_tokens: torch.Tensor, **per_sentence: torch.Tensor) -> None:
        self.n_sentences += int(n_tokens.numel())
        self.n_tokens += float(n_tokens.sum())
        for name, value in per_sentence.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach().double().sum())

    def mean(self, name: str) -> float:
        return self.sums[name] / max(self.n_sentences, 1)

    def ppl(self, name: str) -> float:
        return perplexity(self.sums[name], self.n_tokens)
