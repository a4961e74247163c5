"""Data noising (Xie et al. 2017, "Data Noising as Smoothing in Neural Network Language Models").

Two ways to corrupt the decoder inputs ``<s> w1 .. wn`` in training (targets stay the true words;
``<s>``, ``</s>`` and padding are never replaced, see :mod:`textvae.remedies.word_dropout`):

* ``word_blank`` (blank noising): w_t -> a placeholder with probability p. The placeholder is
  ``<unk>`` by default: our vocabularies have no dedicated blank symbol, and ``<unk>`` is a token
  the model already treats as "some word"; pass ``blank_id`` to use a token added for the purpose.
  With the default this is exactly Bowman's word dropout.
* ``unigram_noise``: w_t -> a word drawn from the training unigram distribution q(w) with
  probability p.

Random draws use torch's global RNG (resumable like the rest of training).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy
from textvae.remedies.word_dropout import check_probability, drop_mask, word_positions


@register_remedy("word_blank")
class WordBlank(Remedy):
    """Blank noising (Xie et al. 2017): each decoder input word becomes ``blank_id`` with probability p."""

    needs_latent = False

    def __init__(self, vocab_size: int, p: float = 0.25, blank_id: int = UNK_ID):
        super().__init__()
        self.p = check_probability("word_blank", p)
        if not 0 <= blank_id < vocab_size:
            raise TextVAEError(f"remedy 'word_blank': blank_id {blank_id} outside the vocabulary of {vocab_size}")
        self.blank_id = blank_id

    def corrupt_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.masked_fill(drop_mask(inputs, self.p), self.blank_id)


@register_remedy("unigram_noise")
class UnigramNoise(Remedy):
    """Unigram noising (Xie et al. 2017): each decoder input word becomes w ~ q(w) ∝ count(w) with
    probability p.

    The counts (one per token id) come from

    * ``unigram``: a recipe list of V counts or frequencies; or
    * :meth:`set_corpus_statistics`, which the training loop calls once before training with
      ``torch.bincount(all training token ids, minlength=V)`` (one pass over the split; it
      replaces any earlier counts); or else
    * lazily: the words of the training batches are counted as they pass (a running estimate
      that converges to the corpus unigram within the first epoch).

    ``<pad>``, ``<s>`` and ``</s>`` get zero probability: they are not words. The counts are a
    persistent buffer, so a checkpoint carries them and a resumed run draws from the same q.
    """

    needs_latent = False

    def __init__(self, vocab_size: int, p: float = 0.25, unigram: Optional[Sequence[float]] = None):
        super().__init__()
        self.p = check_probability("unigram_noise", p)
        counts = torch.zeros(vocab_size, dtype=torch.float64)
        if unigram is not None:
            counts = self._checked(torch.as_tensor(unigram, dtype=torch.float64), vocab_size)
        self.register_buffer("counts", counts)
        self.register_buffer("running", torch.tensor(unigram is None))  # still estimating lazily

    @staticmethod
    def _checked(counts: torch.Tensor, vocab_size: int) -> torch.Tensor:
        if counts.shape != (vocab_size,) or bool((counts < 0).any()) or not torch.isfinite(counts).all():
            raise TextVAEError(f"remedy 'unigram_noise': unigram must hold {vocab_size} non-negative "
                               f"counts, got shape {tuple(counts.shape)}")
        counts = counts.clone()
        counts[[PAD_ID, BOS_ID, EOS_ID]] = 0.0
        if counts.sum() <= 0:
            raise TextVAEError("remedy 'unigram_noise': unigram counts are all zero")
        return counts

    def set_corpus_statistics(self, unigram: torch.Tensor) -> None:
        self.counts.copy_(self._checked(unigram.detach().to(self.counts), self.counts.numel()))
        self.running.fill_(False)

    def corrupt_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.running:
            words = inputs[word_positions(inputs)]
            self.counts.index_add_(0, words, torch.ones_like(words, dtype=self.counts.dtype))
        mask = drop_mask(inputs, self.p)
        n = int(mask.sum())
        if n == 0 or self.counts.sum() <= 0:
            return inputs
        draws = torch.multinomial(self.counts.float(), n, replacement=True)
        return inputs.masked_scatter(mask, draws.to(inputs.device))
