"""Tokenizers: a thin wrapper around Hugging Face ``tokenizers`` with textvae's fixed special ids.

Two kinds, both splitting on whitespace first:

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
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from textvae.data.special import BOS, BOS_ID, EOS, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK, UNK_ID
from textvae.errors import TextVAEError

KINDS = ("word", "bpe")
_BPE_SUFFIX = "</w>"


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
        self.kind = "bpe" if isinstance(hf.model, models.BPE) else "word"
        vocab = hf.get_vocab(with_added_tokens=True)
        self._word_ids = vocab if self.kind == "word" else None
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
        if self._word_ids is None:  # BPE: the library's parallel batch path, without offsets
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
        if self.kind == "word":
            return " ".join(pieces)
        # BPE: a piece ending in </w> ends a word. <unk> carries no suffix (it may stand for a
        # whole word, like PTB's literal <unk>, or for an unseen character), so it is written
        # as a word of its own rather than glued to its neighbour.
        out = []
        for p in pieces:
            if p == UNK:
                out.append(f" {UNK} ")
            elif p.endswith(_BPE_SUFFIX):
                out.append(p[: -len(_BPE_SUFFIX)] + " ")
            else:
                out.append(p)
        return " ".join("".join(out).split())

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


def build_tokenizer(
    lines: Sequence[str],
    kind: str = "word",
    min_freq: int = 1,
    max_vocab: Optional[int] = None,
    bpe_vocab_size: int = 8000,
) -> Tokenizer:
    """Train a tokenizer on ``lines`` (the training split only, so valid/test words can be UNK).

    word: keeps words seen at least ``min_freq`` times; ``max_vocab`` caps the total size,
        special tokens included (the most frequent words are kept).
    bpe: ``bpe_vocab_size`` is the total size; ``min_freq`` is the trainer's minimum pair count.
    """
    if kind not in KINDS:
        raise TextVAEError(f"unknown tokenizer {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "word":
        hf = _word_level(lines, min_freq, max_vocab)
    else:
        if max_vocab is not None:
            raise TextVAEError(
                "data.max_vocab applies to word tokenizers; use data.bpe_vocab_size for bpe"
            )
        hf = _bpe(lines, min_freq, bpe_vocab_size)
    # Every encoding becomes <s> ... </s>; the ids are fixed, so the template names them.
    hf.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    return Tokenizer(hf)


def _word_level(lines: Sequence[str], min_freq: int, max_vocab: Optional[int]) -> HFTokenizer:
    counts = Counter(itertools.chain.from_iterable(map(str.split, lines)))
    for token in SPECIAL_TOKENS:
        counts.pop(token, None)
    # Most frequent first, ties alphabetical: the same lines give the same ids on every machine.
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        if max_vocab <= len(SPECIAL_TOKENS):
            raise TextVAEError(
                f"max_vocab must exceed the {len(SPECIAL_TOKENS)} special tokens, got {max_vocab}"
            )
        words = words[: max_vocab - len(SPECIAL_TOKENS)]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return hf


def _bpe(lines: Sequence[str], min_freq: int, vocab_size: int) -> HFTokenizer:
    hf = HFTokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=_BPE_SUFFIX))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.decoder = decoders.BPEDecoder(suffix=_BPE_SUFFIX)  # for users of the saved JSON alone
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_freq,
        special_tokens=SPECIAL_TOKENS,  # listed first, so they take ids 0-3
        end_of_word_suffix=_BPE_SUFFIX,
        show_progress=False,
    )
    hf.train_from_iterator(lines, trainer)
    return hf
