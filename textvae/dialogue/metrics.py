"""Evaluation of dialogue CVAEs (Zhao et al. 2017, section 5.2): the texts the figures of generation read.

The likelihood of the response given its context is not here: the registered metrics
(:mod:`textvae.metrics`) compute it, with β = 1 and one z per pair (textvae's ELBO conventions), through
:class:`~textvae.dialogue.model.GivenContext`, the design protocol for a batch of fixed contexts:

    rec = −log p(x | z, c),  z ~ q(z|x,c);   KL = KL(q(z|x,c) || p(z|c)) (closed form);
    IW-NLL: −log p(x|c) ≈ −[logsumexp_k (log p(x|z_k,c) + log p(z_k|c) − log q(z_k|x,c)) − log K],
    z_k ~ q(z|x,c)

Generation: for each context, n responses h_1..h_n, each from its own z ~ p(z|c), against its true
response; the registered text metrics (:func:`textvae.metrics.score_texts`) score them: Zhao et al.'s
BLEU-k precision / recall (k = 1..4) and intra-context distinct-n per context, distinct-n and self-BLEU
of all responses pooled (inter-context distinct), and their length.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from textvae.data.tokenization import Tokenizer
from textvae.dialogue.data import DialogueSplit
from textvae.dialogue.generation import generate_responses
from textvae.dialogue.model import KgCVAE
from textvae.metrics import GeneratedTexts


def respond_to_split(model: KgCVAE, tokenizer: Tokenizer, split: DialogueSplit, n: int,
                     max_contexts: Optional[int] = None, batch_size: int = 50, method: str = "greedy",
                     max_len: int = 40, generator: Optional[torch.Generator] = None, **decoding: Any
                     ) -> GeneratedTexts:
    """n decoded responses to each of ``max_contexts`` contexts spread evenly over ``split`` (all when
    None, :meth:`DialogueSplit.subset`), each context's against its true response (the normalised text,
    so words outside the vocabulary count as misses), and all of them pooled as samples."""
    pairs = [int(p) for p in split.subset(max_contexts)]
    device = next(model.parameters()).device
    texts = GeneratedTexts()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = split.batch(chunk).to(device)
        for pair, ids in zip(chunk, generate_responses(model, batch, n, method, max_len, generator, **decoding)):
            responses = [tokenizer.decode(r) for r in ids]
            texts.responses.append(([split.response_text(pair)], responses))
            texts.samples += responses
    return texts
