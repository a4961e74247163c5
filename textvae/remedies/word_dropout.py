"""Word dropout (Bowman et al. 2016, "Generating Sentences from a Continuous Space").

The decoder conditions on a corrupted copy of the sentence, so it must lean on z:

    input_t = <unk>  with probability p,   input_t = w_t  otherwise      (t = 1..n)

while every target stays the true word. Only words are replaced: ``<s>`` (which starts every
sentence and carries no information) and padding are left alone, and so is ``</s>`` where it
appears in the inputs of shorter sentences (its target is padding, never scored). The model calls
this hook in training mode only; the mask is drawn from torch's global RNG, so a resumed run that
restores the RNG state replays the same corruption.
"""
from __future__ import annotations

import torch

from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy


def word_positions(inputs: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: True where ``inputs`` holds a word (not ``<pad>``, ``<s>`` or ``</s>``)."""
    return (inputs != PAD_ID) & (inputs != BOS_ID) & (inputs != EOS_ID)


def drop_mask(inputs: torch.Tensor, p: float) -> torch.Tensor:
    """Bool [B, T]: word positions chosen independently with probability ``p``."""
    return word_positions(inputs) & (torch.rand(inputs.shape, device=inputs.device) < p)


def check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise TextVAEError(f"remedy {name!r}: p must be in [0, 1], got {p}")
    return float(p)


@register_remedy("word_dropout")
class WordDropout(Remedy):
    """Word dropout (Bowman et al. 2016): each decoder input word becomes ``<unk>`` with probability
    ``p`` (they report keep rates 0.25-1; p = 1 - keep rate)."""

    needs_latent = False

    def __init__(self, p: float = 0.25):
        super().__init__()
        self.p = check_probability("word_dropout", p)

    def corrupt_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.masked_fill(drop_mask(inputs, self.p), UNK_ID)
