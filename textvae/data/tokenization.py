"""Tokenizers: a thin wrapper around Hugging Face ``tokenizers`` with textvae's fixed special ids.

Tokenizer kinds are registered (``register_tokenizer`` / ``list_tokenizers`` / ``create_tokenizer``;
``data.tokenizer`` names one). Two are, both splitting on whitespace first:

* ``word``: a WordLevel model whose vocabulary is fixed by the training lines (most frequent
  first, ties alphabetical, ``min_freq`` / ``max_vocab`` cut-offs); every other word is ``<unk>``.
* ``bpe``: byte-pair encoding (Sennrich et al. 2016) trained on the training lines, with an
  end-of-word suffix ``</w>`` on the last piece of each word so decoding restores word boundaries.

``<pad>``, ``<s>``, ``</s>``, ``<unk>`` always get ids 0-3 (:mod:`textvae.data.special`), so the
literal ``<unk>`` in PTB text is the UNK id and never a new word (the same holds, harmlessly, for
a literal ``<s>`` etc.). In the word model they are plain vocabulary entries; in BPE they are
added special tokens, so ``<unk>`` is matched whole instead of being split into characters.

Word-level encoding is a dictionary lookup per whitespace-separated word, exactly what the
WordLevel model does; it runs in Python because that is several times faster than building the
library's Encoding objects. The saved JSON is
the library's, so the library alone reproduces the same ids.
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from textvae.data.special import BOS, BOS_ID, EOS, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK, UNK_ID
from textvae.errors import TextVAEError
from textvae.registry import Registry

_BPE_SUFFIX = "</w>"

TOKENIZERS: Registry = Registry("tokenizer", recipe="data.tokenizer: NAME (its settings are the data section's)",
                                supplied=("min_freq", "max_vocab", "bpe_vocab_size"))


def register_tokenizer(name: str):
    """Decorator for a tokenizer kind: a class whose constructor takes the data settings it uses
    (any of ``min_freq``, ``max_vocab``, ``bpe_vocab_size``) and that provides ``train(lines) ->
    tokenizers.Tokenizer`` (whitespace pre-tokenizer, the special tokens at their fixed ids),
    ``model``, the ``tokenizers`` model class it trains (by which a saved tokenizer's kind is known),
    and ``join(pieces) -> str``, the text of decoded pieces."""
    return TOKENIZERS.register(name)


def list_tokenizers() -> list[str]:
    return TOKENIZERS.names()


def kind_of(hf: HFTokenizer) -> str:
    """The registered kind that trains ``hf``'s model."""
    for name in TOKENIZERS.names():
        if isinstance(hf.model, TOKENIZERS.get(name).model):
            return name
    raise TextVAEError(f"a {type(hf.model).__name__} tokenizer is of no registered kind; "
                       f"valid: {', '.join(TOKENIZERS.names())}")


class Tokenizer:
    """Maps a line of text to ``[<s>, ids..., </s>]`` and back.

    ``decode`` stops at the first ``</s>``, drops ``<pad>`` / ``<s>``, and writes ``<unk>``
    literally (a dropped unknown word would make samples look better than they are).
    """

    def __init__(self, hf: HFTokenizer):
        for expected, token in enumerate(SPECIAL_TOKENS):
            if hf.token_to_id(token) != expected:
                raise TextVAEError(
                    f"tokenizer maps {token} to id {hf.token_to_id(token)}, expected {expected}; "
                    f"it was not built by textvae"
                )
        self.hf = hf
        self.kind = kind_of(hf)
        vocab = hf.get_vocab(with_added_tokens=True)
        # A word-level model's encoding is a dictionary lookup per word (module docstring).
        self._word_ids = vocab if isinstance(hf.model, models.WordLevel) else None
        self._tokens = [""] * (max(vocab.values()) + 1)  # id -> token string, for decode
        for token, i in vocab.items():
            self._tokens[i] = token

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, line: str) -> list[int]:
        return self.encode_batch([line])[0]

    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        """``[<s>, ids..., </s>]`` for each line."""
        if self._word_ids is None:  # the library's parallel batch path, without offsets
            return [e.ids for e in self.hf.encode_batch_fast(list(lines))]
        get = self._word_ids.get
        return [[BOS_ID, *[get(w, UNK_ID) for w in line.split()], EOS_ID] for line in lines]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first ``</s>``, without ``<pad>`` / ``<s>``."""
        pieces = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                pieces.append(self._tokens[i])
        return TOKENIZERS.get(self.kind).join(pieces)

    def save(self, path: str | Path) -> None:
        """Write the ``tokenizers`` JSON (loadable by ``tokenizers.Tokenizer.from_file`` too)."""
        self.hf.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise TextVAEError(f"no such file: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exceptions on bad JSON
            raise TextVAEError(f"{path}: not a tokenizers JSON file ({e})") from None
        return cls(hf)


def unk_rate(id_lists: Iterable[Sequence[int]]) -> float:
    """Fraction of word tokens that are ``<unk>``: #UNK / #(tokens other than pad, <s>, </s>)."""
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in id_lists] or [np.zeros(0)])
    words = ~np.isin(ids, (PAD_ID, BOS_ID, EOS_ID))
    n = int(words.sum())
    return float((ids == UNK_ID).sum()) / n if n else 0.0


_UNKNOWN_SHOWN = 10


def warn_unknown_words(tokenizer: Tokenizer, sentences: Sequence[str]) -> None:
    """Name the words of ``sentences`` (a user's input) that a model with ``tokenizer`` reads as ``<unk>``:
    what it then reconstructs, or responds to, is another text."""
    # the unknown-word token itself (PTB's text has <unk>) is the vocabulary's own, not a word it lacks
    unknown = sorted({w for s in sentences for w in s.split() if w != UNK and UNK_ID in tokenizer.encode(w)})
    if unknown:
        shown = ", ".join(unknown[:_UNKNOWN_SHOWN]) + (", ..." if len(unknown) > _UNKNOWN_SHOWN else "")
        logging.getLogger("textvae").warning("%d word(s) are not in the model's vocabulary and are read as <unk>: %s",
                                             len(unknown), shown)


def create_tokenizer(kind: str, lines: Sequence[str], **settings: Any) -> Tokenizer:
    """Train a tokenizer of the registered ``kind`` on ``lines`` (the training split only, so
    valid/test words can be UNK); ``settings`` are data settings (``min_freq``, ``max_vocab``,
    ``bpe_vocab_size``), each passed to the kinds that take it."""
    hf = TOKENIZERS.build(kind, {}, **settings).train(lines)
    # Every encoding becomes <s> ... </s>; the ids are fixed, so the template names them.
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return Tokenizer(hf)


@register_tokenizer("word")
class WordKind:
    """Whole words, split at whitespace.

    Keeps words seen at least ``min_freq`` times; ``max_vocab`` caps the total size, special
    tokens included (the most frequent words are kept)."""

    model = models.WordLevel

    def __init__(self, min_freq: int = 1, max_vocab: Optional[int] = None):
        if max_vocab is not None and max_vocab <= len(SPECIAL_TOKENS):
            raise TextVAEError(
                f"max_vocab must exceed the {len(SPECIAL_TOKENS)} special tokens, got {max_vocab}"
            )
        self.min_freq, self.max_vocab = min_freq, max_vocab

    def train(self, lines: Sequence[str]) -> HFTokenizer:
        counts = Counter(itertools.chain.from_iterable(map(str.split, lines)))
        for token in SPECIAL_TOKENS:
            counts.pop(token, None)
        # Most frequent first, ties alphabetical: the same lines give the same ids on every machine.
        words = sorted((w for w, c in counts.items() if c >= self.min_freq), key=lambda w: (-counts[w], w))
        if self.max_vocab is not None:
            words = words[: self.max_vocab - len(SPECIAL_TOKENS)]
        vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return hf

    @staticmethod
    def join(pieces: list[str]) -> str:
        return " ".join(pieces)


@register_tokenizer("bpe")
class BPEKind:
    """Byte-pair encoding (Sennrich et al. 2016) within whitespace-split words.

    ``bpe_vocab_size`` is the total size; ``min_freq`` is the trainer's minimum pair count."""

    model = models.BPE

    def __init__(self, min_freq: int = 1, bpe_vocab_size: int = 8000, max_vocab: Optional[int] = None):
        if max_vocab is not None:  # named only to refuse it: a cap the user set would be ignored
            raise TextVAEError(
                "data.max_vocab applies to word tokenizers; use data.bpe_vocab_size for bpe"
            )
        self.min_freq, self.vocab_size = min_freq, bpe_vocab_size

    def train(self, lines: Sequence[str]) -> HFTokenizer:
        hf = HFTokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=_BPE_SUFFIX))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf.decoder = decoders.BPEDecoder(suffix=_BPE_SUFFIX)  # for users of the saved JSON alone
        trainer = trainers.BpeTrainer(
            vocab_size=self.vocab_size,
            min_frequency=self.min_freq,
            special_tokens=SPECIAL_TOKENS,  # listed first, so they take ids 0-3
            end_of_word_suffix=_BPE_SUFFIX,
            show_progress=False,
        )
        hf.train_from_iterator(lines, trainer)
        return hf

    @staticmethod
    def join(pieces: list[str]) -> str:
        """A piece ending in </w> ends a word. <unk> carries no suffix (it may stand for a whole
        word, like PTB's literal <unk>, or for an unseen character), so it is written as a word of
        its own rather than glued to its neighbour."""
        out = []
        for p in pieces:
            if p == UNK:
                out.append(f" {UNK} ")
            elif p.endswith(_BPE_SUFFIX):
                out.append(p[: -len(_BPE_SUFFIX)] + " ")
            else:
                out.append(p)
        return " ".join("".join(out).split())
