"""Evaluation of dialogue CVAEs (Zhao et al. 2017, section 5.2): the figures of generated responses.

The likelihood of the response given its context is not here: the registered metrics
(:mod:`textvae.metrics`) compute it, with β = 1 and one z per pair (textvae's ELBO conventions), through
:class:`~textvae.dialogue.model.GivenContext`, the design protocol for a batch of fixed contexts:

    rec = −log p(x | z, c),  z ~ q(z|x,c);   KL = KL(q(z|x,c) || p(z|c)) (closed form);
    IW-NLL: −log p(x|c) ≈ −[logsumexp_k (log p(x|z_k,c) + log p(z_k|c) − log q(z_k|x,c)) − log K],
    z_k ~ q(z|x,c)

Generation: for each context, n responses h_1..h_n (each from its own z ~ p(z|c)) against the m
references r_1..r_m (one in DailyDialog):

    BLEU precision = 1/n Σ_i max_j BLEU(r_j, h_i),   BLEU recall = 1/m Σ_j max_i BLEU(r_j, h_i),

averaged over contexts, with sentence-level BLEU-k (k = 1..4, uniform weights) from sacrebleu:
whitespace tokens, exponential smoothing of zero n-gram counts (Chen & Cherry 2014, method 3) and
effective order. Zhao et al. used NLTK's smoothing method 7, so absolute values differ from theirs.
Scores are on 0-1 as in their tables. Distinct-n (Li et al. 2016): ``inter`` pools all responses of
all contexts, ``intra`` is the mean over contexts of each context's n responses.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

import torch

from textvae.data.tokenization import Tokenizer
from textvae.dialogue.data import DialogueSplit
from textvae.dialogue.generation import generate_responses
from textvae.dialogue.model import KgCVAE
from textvae.errors import TextVAEError
from textvae.metrics.generation import distinct_n

BLEU_ORDERS = (1, 2, 3, 4)


@lru_cache(maxsize=None)
def _sentence_bleu(order: int) -> Callable[[str, str], float]:
    """hypothesis, reference -> sentence BLEU-``order`` on 0-1 (see the module docstring)."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise TextVAEError("BLEU metrics need sacrebleu: pip install 'textvae[eval]'") from None
    scorer = BLEU(tokenize="none", max_ngram_order=order, smooth_method="exp", effective_order=True)
    return lambda hyp, ref: scorer.sentence_score(hyp, [ref]).score / 100.0


def bleu_precision_recall(hypotheses: Sequence[str], references: Sequence[str], order: int = 4
                          ) -> tuple[float, float]:
    """Zhao et al. (2017)'s precision and recall for one context (module docstring); strings of
    space-separated tokens."""
    if not hypotheses or not references:
        raise TextVAEError("bleu_precision_recall: need at least one hypothesis and one reference")
    bleu = _sentence_bleu(order)
    scores = [[bleu(h, r) for r in references] for h in hypotheses]  # [n, m]
    precision = sum(max(row) for row in scores) / len(hypotheses)
    recall = sum(max(col) for col in zip(*scores)) / len(references)
    return precision, recall


def generation_metrics(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-k precision / recall (k = 1..4) and intra / inter distinct-1, 2 over contexts, given
    each context's responses and references."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise TextVAEError(f"generation_metrics: {len(hypotheses)} response sets for {len(references)} contexts")
    results: dict[str, float] = {}
    for k in BLEU_ORDERS:
        pr = [bleu_precision_recall(h, r, k) for h, r in zip(hypotheses, references)]
        results[f"bleu{k}_precision"] = sum(p for p, _ in pr) / len(pr)
        results[f"bleu{k}_recall"] = sum(r for _, r in pr) / len(pr)
    pooled = [h for hyps in hypotheses for h in hyps]
    for k in (1, 2):
        results[f"inter_dist{k}"] = distinct_n(pooled, k)
        results[f"intra_dist{k}"] = sum(distinct_n(h, k) for h in hypotheses) / len(hypotheses)
    results["n_contexts"] = float(len(hypotheses))
    results["response_words"] = sum(len(h.split()) for h in pooled) / len(pooled)
    return results


def respond_to_split(model: KgCVAE, tokenizer: Tokenizer, split: DialogueSplit, n: int,
                     max_contexts: Optional[int] = None, batch_size: int = 50, method: str = "greedy",
                     max_len: int = 40, generator: Optional[torch.Generator] = None, **decoding: Any
                     ) -> tuple[list[int], list[list[str]]]:
    """Pairs 0..``max_contexts``-1 of ``split`` (in split order) and n decoded responses for each."""
    pairs = list(range(len(split) if max_contexts is None else min(max_contexts, len(split))))
    device = next(model.parameters()).device
    responses: list[list[str]] = []
    for start in range(0, len(pairs), batch_size):
        batch = split.batch(pairs[start:start + batch_size]).to(device)
        for ids in generate_responses(model, batch, n, method, max_len, generator, **decoding):
            responses.append([tokenizer.decode(r) for r in ids])
    return pairs, responses


def evaluate_generation(model: KgCVAE, tokenizer: Tokenizer, split: DialogueSplit, n: int = 10,
                        max_contexts: Optional[int] = None, method: str = "greedy", max_len: int = 40,
                        generator: Optional[torch.Generator] = None, **decoding: Any
                        ) -> tuple[dict[str, float], list[list[str]]]:
    """:func:`generation_metrics` of n responses per context against the true response (the
    normalised text, so words outside the vocabulary count as misses); also returns the responses."""
    pairs, responses = respond_to_split(model, tokenizer, split, n, max_contexts, method=method,
                                        max_len=max_len, generator=generator, **decoding)
    references = [[split.response_text(p)] for p in pairs]
    return generation_metrics(responses, references), responses
