"""Responses from the CVAE: z ~ p(z|c), then any decoder of :mod:`textvae.models.decoding`.

The decoders speak the step protocol of ``docs/design.md`` (``decode_step(tokens, z, state)``);
:class:`ContextDecoder` is that protocol for a fixed set of contexts, so greedy decoding, sampling
and beam search are textvae's own.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from textvae.config import COUNT, SEED
from textvae.dialogue.config import DialogueEvalConfig
from textvae.dialogue.data import DialogueBatch
from textvae.dialogue.model import KgCVAE
from textvae.errors import TextVAEError
from textvae.metrics._common import eval_mode
from textvae.models.decoding import beam_search, greedy, sample

METHODS = ("greedy", "sample", "beam")
SAMPLING_OPTIONS = ("temperature", "top_p")  # what only method sample reads
RANGES = {"n": COUNT, "seed": SEED, **{name: DialogueEvalConfig.RANGES[name] for name in ("max_len", *SAMPLING_OPTIONS)}}


def check_response_options(method: str, spell: Callable[[str], str] = str, **given: Any) -> None:
    """One-line errors, before a model is read, for the settings of the responses (``textvae respond``,
    :meth:`textvae.pretrained.PretrainedCVAE.respond`, a dialogue run's test report): an unknown ``method``, a
    value of ``given`` (name -> value, None where not given) out of its range, and a sampling option given with a
    method that would ignore it. ``spell`` names a setting as the caller's user wrote it (``--top-p``,
    ``eval.top_p``)."""
    if method not in METHODS:
        raise TextVAEError(f"{spell('method')} {method!r}: unknown decoding method; valid: {', '.join(METHODS)}",
                           spell("method"))
    for name, value in given.items():
        problem = None if value is None else RANGES[name].violation(value)
        if problem:
            raise TextVAEError(f"{spell(name)} {problem}, got {value}", spell(name))
    ignored = [name for name in SAMPLING_OPTIONS if given.get(name) is not None]
    if ignored and method != "sample":
        raise TextVAEError(f"{spell(ignored[0])} is an option of {spell('method')} sample, and {spell('method')} "
                           f"{method} would ignore it", spell(ignored[0]))


class ContextDecoder(nn.Module):
    """``decode_step(tokens [R, 1], z [R, D], state)`` for rows that belong to the contexts c [B, H_c]:
    R is a multiple of B and row r belongs to context r // (R / B) (the layout ``repeat_interleave``
    gives, as beam search and :func:`generate_responses` use)."""

    def __init__(self, model: KgCVAE, c: torch.Tensor):
        super().__init__()
        self.model = model
        self.c = c

    def decode_step(self, tokens: torch.Tensor, z: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        c = None
        if state is None:  # the context is needed only to build the initial state
            if z.shape[0] % self.c.shape[0]:
                raise TextVAEError(f"ContextDecoder: {z.shape[0]} rows of z for {self.c.shape[0]} contexts")
            c = self.c.repeat_interleave(z.shape[0] // self.c.shape[0], dim=0)
        return self.model.decode_step(tokens, c, z, state)

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        return self.model.reorder_state(state, index)


def generate_responses(model: KgCVAE, batch: DialogueBatch, n: int, method: str = "greedy", max_len: int = 40,
                       generator: Optional[torch.Generator] = None, temperature: float = 1.0, top_p: float = 1.0,
                       beam_size: int = 5) -> list[list[list[int]]]:
    """For each context of ``batch``, n responses (id lists without ``<s>`` / ``</s>``), response j
    decoded from its own z_j ~ p(z|c). ``greedy`` (Zhao et al. 2017) or ``beam`` make z the only
    source of diversity; ``sample`` adds the word-level randomness. ``<unk>`` is never generated."""
    check_response_options(method)
    if n < 1:
        raise TextVAEError(f"the number of responses must be >= 1, got {n}")
    with eval_mode(model):
        c = model.encode_context(batch)
        rows = c.repeat_interleave(n, dim=0)  # row b * n + j: response j of context b
        z = model.prior(rows).rsample(1, generator=generator)[0]
        view = ContextDecoder(model, c)
        if method == "greedy":
            ids = greedy(view, z, max_len, ban_unk=True)
        elif method == "beam":
            ids = beam_search(view, z, max_len, beam_size=beam_size, ban_unk=True)
        else:
            ids = sample(view, z, max_len, temperature=temperature, top_p=top_p, generator=generator, ban_unk=True)
    return [ids[b * n:(b + 1) * n] for b in range(len(batch))]
