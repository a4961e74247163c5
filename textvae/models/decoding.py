"""Generating sentences from a text VAE: greedy, ancestral sampling (temperature, top-k, nucleus), beam search.

Every decoder talks to the model only through the step protocol of ``docs/design.md``::

    model.decode_step(tokens [B, 1], z [B, D] | None, state) -> (logits [B, V], state)
    model.reorder_state(state, index [B']) -> state

``state=None`` asks the model for its initial state (built from z, or zeros without z); z is passed at
every step because the decoder concatenates it to each input embedding.

Conventions shared by all decoders:

* Decoding starts from ``<s>``; the returned id lists hold neither ``<s>`` nor ``</s>``.
* ``max_len`` is the number of decoding steps, ``</s>`` included (the token count of
  ``textvae.reduction.token_counts``). A sentence without ``</s>`` after ``max_len`` steps is returned
  truncated, with ``max_len`` ids.
* ``<pad>`` and ``<s>`` are never emitted: their logits are set to -inf before any normalisation, so all
  probabilities are those of the renormalised remaining tokens. ``ban_unk=True`` does the same for ``<unk>``.
* The model runs in eval mode (dropout off) under ``torch.no_grad``; its training flag is restored after.
* ``z=None`` decodes from a language model (``latent_dim = 0``); ``batch_size`` then says how many sentences.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Sequence
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from textvae.errors import TextVAEError

NEG_INF = float("-inf")


class Detokenizer(Protocol):
    """What :func:`decode_sentences` needs from a tokenizer."""

    def decode(self, ids: list[int]) -> str: ...


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the caller's training flag comes back even on error."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _rows_and_device(
    model: nn.Module, z: torch.Tensor | None, max_len: int, batch_size: int | None, where: str
) -> tuple[int, torch.device]:
    """Number of sentences to decode and the device to put token tensors on, after checking the arguments."""
    if max_len < 1:
        raise TextVAEError(f"{where}: max_len must be >= 1, got {max_len}")
    latent = getattr(model, "latent_dim", None)
    if z is None and getattr(model, "is_lm", True) is False:  # a VAE's decoder reads z at every step
        raise TextVAEError(f"{where}: this model decodes from z [B, {latent}]; give z (model.sample_prior(n) draws "
                           f"n from the prior)")
    if z is None:
        n = 1 if batch_size is None else batch_size
        if n < 1:
            raise TextVAEError(f"{where}: batch_size must be >= 1, got {n}")
        param = next(model.parameters(), None)
        return n, torch.device("cpu") if param is None else param.device
    if z.dim() != 2 or (latent is not None and z.shape[1] != latent):
        raise TextVAEError(f"{where}: z must have shape [B, {latent if latent is not None else 'D'}], got "
                           f"{tuple(z.shape)}" + (" (a language model takes z=None)" if latent == 0 else ""))
    if batch_size is not None and batch_size != z.shape[0]:
        raise TextVAEError(f"{where}: batch_size={batch_size} disagrees with z of shape {tuple(z.shape)}")
    return z.shape[0], z.device


def _mask_specials(logits: torch.Tensor, bos: int, ban_unk: bool) -> torch.Tensor:
    """Logits [B, V] with ``<pad>``, ``<s>`` (and ``<unk>`` when banned) at -inf, in at least float32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    banned = [PAD_ID, bos] + ([UNK_ID] if ban_unk else [])
    return logits.index_fill(-1, torch.tensor(banned, device=logits.device), NEG_INF)


def _cut_at_eos(ids: torch.Tensor, eos: int) -> list[list[int]]:
    """Rows of ids [B, T] as lists ending just before their first ``</s>`` (whole row when there is none)."""
    rows = ids.tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def _generate(
    model: nn.Module,
    z: torch.Tensor | None,
    max_len: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    bos: int,
    eos: int,
    ban_unk: bool,
    batch_size: int | None,
    where: str,
) -> list[list[int]]:
    """Left-to-right decoding where ``pick`` maps masked logits [B, V] to the next tokens [B]."""
    n, device = _rows_and_device(model, z, max_len, batch_size, where)
    tokens = torch.full((n, 1), bos, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []  # one [B] tensor of chosen ids per step
    state = None
    with _inference(model):
        for _ in range(max_len):
            logits, state = model.decode_step(tokens, z, state)
            # Finished rows keep running with the rest of the batch; what follows their </s> is cut off below.
            nxt = pick(_mask_specials(logits, bos, ban_unk))
            steps.append(nxt)
            finished |= nxt == eos
            if bool(finished.all()):
                break
            tokens = nxt[:, None]
    return _cut_at_eos(torch.stack(steps, dim=1), eos)


def greedy(
    model: nn.Module,
    z: torch.Tensor | None,
    max_len: int,
    bos: int = BOS_ID,
    eos: int = EOS_ID,
    ban_unk: bool = False,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Greedy decoding: x_t = argmax_v p(v | x_<t, z) for every sentence (row of z [B, D])."""
    return _generate(
        model, z, max_len, lambda logits: logits.argmax(-1), bos, eos, ban_unk, batch_size, "greedy"
    )


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit [..., V] outside the top-k set, then outside the nucleus (top-p) set.

    * top-k (Fan et al. 2018): keep the ``top_k`` largest logits; 0 keeps all.
    * top-p (nucleus, Holtzman et al. 2020): sort p = softmax(logits) in decreasing order and keep the
      smallest prefix whose mass is >= ``top_p`` -- a token is kept while the mass before it is still
      < ``top_p``, so the most probable token always survives. 1.0 keeps all.

    The nucleus is computed on the distribution left after top-k (the order of Hugging Face ``generate``).
    """
    if 0 < top_k < logits.shape[-1]:
        kept = logits.topk(top_k, dim=-1).indices
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, kept, True)
        logits = logits.masked_fill(~keep, NEG_INF)
    if top_p < 1.0:
        probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
        # Exclusive cumulative sum: the mass of the tokens sorted before each one.
        mass_before = F.pad(probs.cumsum(-1)[..., :-1], (1, 0))
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, mass_before < top_p)
        logits = logits.masked_fill(~keep, NEG_INF)
    return logits


def sample(
    model: nn.Module,
    z: torch.Tensor | None,
    max_len: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    bos: int = BOS_ID,
    eos: int = EOS_ID,
    ban_unk: bool = False,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Ancestral sampling x_t ~ softmax(logits / temperature), restricted by :func:`filter_logits`.

    Pass a seeded ``torch.Generator`` (on z's device) to make the draw reproducible, or one per row, so that
    each sentence's words come from its own stream whatever the other rows are; ``top_k=1`` is greedy.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise TextVAEError(f"sample: temperature must be a positive number, got {temperature}")
    if top_k < 0:
        raise TextVAEError(f"sample: top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise TextVAEError(f"sample: top_p must be in (0, 1], got {top_p}")

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        if isinstance(generator, Sequence):  # a stream per row [B]: one draw of each at every step
            return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generator)])
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _generate(model, z, max_len, pick, bos, eos, ban_unk, batch_size, "sample")


def beam_search(
    model: nn.Module,
    z: torch.Tensor | None,
    max_len: int,
    beam_size: int = 5,
    length_penalty: float = 0.0,
    bos: int = BOS_ID,
    eos: int = EOS_ID,
    ban_unk: bool = False,
    batch_size: int | None = None,
) -> list[list[int]]:
    """Beam search, one beam of ``beam_size`` hypotheses per sentence, all run as B * beam_size rows.

    At each step every live hypothesis y (log-prob s(y)) is extended by every token v, and the
    ``beam_size`` best candidates s(y) + log p(v | y, z) of the sentence are kept. Candidates ending in
    ``</s>`` leave the beam as finished hypotheses, scored

        score(y) = s(y) / len(y) ** length_penalty,

    where len(y) counts the generated tokens, ``</s>`` included. ``length_penalty = 0`` is the plain
    log-prob sum; > 0 divides by a power of the length as in GNMT (Wu et al. 2016, who use
    ((5 + len) / 6) ** alpha), which counters the bias towards short sentences.

    A sentence stops as soon as no live hypothesis can beat its best finished one: extending y only lowers
    s(y) <= 0 and its final length is at most ``max_len``, so s(y) / max_len ** length_penalty bounds every
    score it can still reach. With ``beam_size=1`` this is exactly greedy decoding. The best finished
    hypothesis is returned; only a sentence with none after ``max_len`` steps gets its best live hypothesis,
    truncated.
    """
    if beam_size < 1:
        raise TextVAEError(f"beam_search: beam_size must be >= 1, got {beam_size}")
    if length_penalty < 0:
        raise TextVAEError(f"beam_search: length_penalty must be >= 0, got {length_penalty}")
    n, device = _rows_and_device(model, z, max_len, batch_size, "beam_search")
    k = beam_size
    # Row b * k + j of every [B * k, ...] tensor is hypothesis j of sentence b.
    z_rows = None if z is None else z.repeat_interleave(k, dim=0)
    tokens = torch.full((n * k, 1), bos, dtype=torch.long, device=device)
    # All k hypotheses start as the same "<s>"; only one is live, or the beam would fill with k copies of it.
    scores = torch.full((n, k), NEG_INF, device=device)
    scores[:, 0] = 0.0
    history = torch.empty((n, k, 0), dtype=torch.long, device=device)  # ids of each hypothesis so far
    best_score = torch.full((n,), NEG_INF, device=device)
    best: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    first_row = torch.arange(n, device=device)[:, None] * k  # [B, 1]
    state = None
    with _inference(model):
        for t in range(1, max_len + 1):
            logits, state = model.decode_step(tokens, z_rows, state)
            log_p = _mask_specials(logits, bos, ban_unk).log_softmax(-1)  # [B * k, V]
            vocab = log_p.shape[-1]
            candidates = (scores[:, :, None] + log_p.view(n, k, vocab)).view(n, k * vocab)
            top, flat = candidates.topk(k, dim=-1)  # [B, k], best first
            origin, token = flat // vocab, flat % vocab
            history = torch.cat(
                [history.gather(1, origin[:, :, None].expand(-1, -1, t - 1)), token[:, :, None]], dim=2
            )
            ended = (token == eos) & top.isfinite()
            finished = torch.where(ended, top / t**length_penalty, NEG_INF)
            new_best, at = finished.max(-1)
            # A sentence that is done stays frozen, so its result does not depend on its batch mates.
            improved = (new_best > best_score) & ~done
            for b in improved.nonzero().flatten().tolist():
                best[b] = history[b, at[b], :-1].tolist()
            best_score = torch.where(improved, new_best, best_score)
            scores = top.masked_fill(ended, NEG_INF)  # ended rows stay in the beam as dead -inf slots
            done |= best_score >= scores.max(-1).values / max_len**length_penalty
            if bool(done.all()):
                break
            state = model.reorder_state(state, (first_row + origin).view(-1))
            tokens = token.view(-1, 1)
    for b in (best_score == NEG_INF).nonzero().flatten().tolist():
        best[b] = history[b, scores[b].argmax()].tolist()
    return best


_DECODERS: dict[str, Callable[..., list[list[int]]]] = {"greedy": greedy, "sample": sample, "beam": beam_search}


def decode_sentences(
    model: nn.Module, tokenizer: Detokenizer, z: torch.Tensor | None, method: str = "greedy", max_len: int = 100, **kw
) -> list[str]:
    """Decode one sentence per row of z [B, D] with ``method`` ("greedy", "sample" or "beam") into text.

    ``kw`` goes to the decoder (e.g. ``temperature``, ``top_p``, ``generator``, ``beam_size``, ``ban_unk``);
    the tokenizer's ``decode(ids) -> str`` turns ids into text.
    """
    if method not in _DECODERS:
        raise TextVAEError(f"decode_sentences: unknown method {method!r}; choose one of {sorted(_DECODERS)}")
    options = [name for name in inspect.signature(_DECODERS[method]).parameters if name not in ("model", "z", "max_len")]
    if set(kw) - set(options):  # another method's option (greedy's temperature) would be silently meaningless
        raise TextVAEError(f"decode_sentences: method {method!r} takes no {sorted(set(kw) - set(options))}; its "
                           f"options: {', '.join(options)}")
    return [tokenizer.decode(ids) for ids in _DECODERS[method](model, z, max_len, **kw)]


def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Points z_i = (1 - w_i) z_a + w_i z_b, w_i = i / (steps - 1), as [steps, D]; both ends included exactly."""
    if z_a.dim() != 1 or z_a.shape != z_b.shape:
        raise TextVAEError(
            f"interpolate: z_a and z_b must be vectors [D] of one shape, got {tuple(z_a.shape)}, {tuple(z_b.shape)}"
        )
    if steps < 2:
        raise TextVAEError(f"interpolate: steps must be >= 2 (both ends are included), got {steps}")
    w = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]  # [steps, 1]
    return (1 - w) * z_a + w * z_b
