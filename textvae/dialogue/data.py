"""Dialogue data: (context, response) pairs, a light word tokenizer step, and padded batches.

Pairs. A dialogue u_1 .. u_M gives the pairs (context = u_{max(1, i-N)} .. u_{i-1}, response = u_i)
for i = 2 .. M, N = ``context_turns``: the context is the last N turns *before* the response, so
no turn is ever part of its own context. Turns are stored once per dialogue; a pair holds the
index span of its context turns and the index of its response turn.

Sources:

* a registered corpus in the ``dialogues`` format (DailyDialog: one dialogue per line, each turn
  followed by ``__eou__``, with an aligned file of per-turn dialogue acts 1-4, stored as 0-3);
  a dialogue whose act count differs from its turn count is counted and skipped;
* a folder with ``train.jsonl`` / ``valid.jsonl`` / ``test.jsonl``, one JSON object per line:
  ``{"context": ["oldest turn", ..., "last turn"], "response": "...", "act": 2}`` (``act``
  optional, but on every line or none). An empty context stands for the first turn of a
  dialogue and is read as one empty turn.

Text is raw: :func:`normalize_utterance` lowercases it and splits punctuation before the
WordLevel vocabulary of :func:`textvae.data.tokenization.create_tokenizer` sees it.
"""
from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from textvae.data.batch import Batch, collate
from textvae.data.batching import BucketBatchSampler, even_subset
from textvae.data.corpora import CORPORA, resolve_corpus
from textvae.data.reading import read_lines
from textvae.data.special import PAD_ID
from textvae.data.tokenization import Tokenizer, create_tokenizer, unk_rate
from textvae.dialogue.config import DialogueDataConfig
from textvae.errors import TextVAEError

log = logging.getLogger("textvae.dialogue")

SPLITS = ("train", "valid", "test")
EOU = "__eou__"  # DailyDialog's end-of-utterance marker
DAILYDIALOG_ACTS = ("inform", "question", "directive", "commissive")

# Characters NFKC leaves alone that would otherwise become words of their own.
_CHAR_MAP = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "`": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u3002": ".", "\u3001": ",", "\u2013": "-", "\u2014": "-",
})
# A split contraction as DailyDialog sometimes writes it: "let ' s" -> "let's".
_SPLIT_CONTRACTION = re.compile(r"(\w) ' (s|t|m|d|re|ve|ll)\b")
# Numbers with separators (3.5, 10:30, 1,000), words with inner apostrophes or hyphens (don't,
# push-ups), an ellipsis, or any other single non-space character (punctuation).
_TOKEN = re.compile(r"\d+(?:[.,:]\d+)+|\w+(?:['\-]\w+)*|\.{2,}|[^\w\s]")


def normalize_utterance(text: str) -> str:
    """Lowercased, single-space-separated tokens with punctuation split off.

    Deterministic and idempotent: NFKC (full-width forms, ``…`` -> ``...``), curly quotes and
    dashes mapped to ASCII, ``"right.But"`` -> ``right . but``, ``"I’m"`` -> ``i'm``.
    """
    text = unicodedata.normalize("NFKC", text).translate(_CHAR_MAP).lower()
    text = _SPLIT_CONTRACTION.sub(r"\1'\2", text)
    return " ".join(_TOKEN.findall(text))


def prepare_context(turns: list[str], context_turns: int, max_turn_words: int) -> list[str]:
    """A context given by hand, prepared as training prepared its contexts: ``__eou__``-joined strings split into
    turns, each normalised and cut to ``max_turn_words`` words, the last ``context_turns`` kept."""
    split = [t.strip() for turn in turns for t in turn.split(EOU)]
    split = [t for t in split if t]
    if not split:
        raise TextVAEError("the context needs at least one non-empty turn")
    return [" ".join(normalize_utterance(t).split()[:max_turn_words]) for t in split[-context_turns:]]


# ---- pairs -------------------------------------------------------------------------------------
@dataclass
class PairStats:
    """What happened while reading one source."""

    source: str
    dialogues: int = 0
    malformed: int = 0  # dialogues skipped (act count != turn count)
    pairs: int = 0
    truncated_turns: int = 0  # turns longer than max_turn_words, cut
    empty_responses: int = 0  # pairs skipped because the response has no token

    def summary(self) -> str:
        return (f"{self.source}: {self.pairs} pairs from {self.dialogues} dialogues; {self.malformed} malformed "
                f"dialogues skipped; {self.truncated_turns} turns truncated; "
                f"{self.empty_responses} empty responses skipped")


@dataclass
class DialogueText:
    """Pairs of one split before encoding: ``turns`` hold every normalised utterance once; pair p
    has context ``turns[spans[p, 0]:spans[p, 1]]`` and response ``turns[responses[p]]``."""

    turns: list[str]
    spans: np.ndarray  # [P, 2] int64
    responses: np.ndarray  # [P] int64
    acts: Optional[np.ndarray]  # [P] int64 or None
    stats: PairStats

    def subset(self, index: np.ndarray) -> "DialogueText":
        """The pairs ``index`` (all turns are kept)."""
        return replace(self, spans=self.spans[index], responses=self.responses[index],
                       acts=None if self.acts is None else self.acts[index])

    def head(self, n: int) -> "DialogueText":
        """The first n pairs and the turns up to the last of their responses (turns are stored in
        reading order, so no later pair's turn is kept)."""
        return replace(self, turns=self.turns[: int(self.responses[n - 1]) + 1], spans=self.spans[:n],
                       responses=self.responses[:n], acts=None if self.acts is None else self.acts[:n])


class _PairBuilder:
    """Accumulates turns and pairs, applying the truncation and counting rules."""

    def __init__(self, source: str, context_turns: int, max_turn_words: int):
        if context_turns < 1:
            raise TextVAEError(f"context_turns must be >= 1, got {context_turns}")
        if max_turn_words < 1:
            raise TextVAEError(f"max_turn_words must be >= 1, got {max_turn_words}")
        self.n, self.max_words = context_turns, max_turn_words
        self.stats = PairStats(source)
        self.turns: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.responses: list[int] = []
        self.acts: list[int] = []

    def _add_turn(self, text: str) -> int:
        words = normalize_utterance(text).split()
        if len(words) > self.max_words:
            self.stats.truncated_turns += 1
            words = words[: self.max_words]
        self.turns.append(" ".join(words))
        return len(self.turns) - 1

    def _add_pair(self, first: int, last: int, response: int, act: Optional[int]) -> None:
        if not self.turns[response]:
            self.stats.empty_responses += 1
            return
        self.spans.append((max(first, last - self.n), last))
        self.responses.append(response)
        if act is not None:
            self.acts.append(act)

    def dialogue(self, turns: Sequence[str], acts: Optional[Sequence[int]]) -> None:
        """Turns u_1..u_M -> pairs (u_{i-N}..u_{i-1}, u_i) for i >= 2."""
        self.stats.dialogues += 1
        ids = [self._add_turn(t) for t in turns]
        for i in range(1, len(ids)):
            self._add_pair(ids[0], ids[i], ids[i], None if acts is None else acts[i])

    def pair(self, context: Sequence[str], response: str, act: Optional[int]) -> None:
        """One explicit pair; an empty context is one empty turn. Turns before the last N are dropped."""
        self.stats.dialogues += 1
        ids = [self._add_turn(t) for t in (list(context[-self.n:]) or [""])]
        self._add_pair(ids[0], ids[-1] + 1, self._add_turn(response), act)

    def result(self, with_acts: bool) -> DialogueText:
        self.stats.pairs = len(self.responses)
        if not self.responses:
            raise TextVAEError(f"{self.stats.source}: no (context, response) pairs")
        return DialogueText(self.turns, np.asarray(self.spans, dtype=np.int64).reshape(-1, 2),
                            np.asarray(self.responses, dtype=np.int64),
                            np.asarray(self.acts, dtype=np.int64) if with_acts else None, self.stats)


def read_dialogue_lines(dialogues: Sequence[str], acts: Sequence[str], source: str, context_turns: int,
                        max_turn_words: int) -> DialogueText:
    """Pairs from DailyDialog-format lines: ``turn __eou__ turn __eou__ ...`` and ``act act ...``."""
    if len(dialogues) != len(acts):
        raise TextVAEError(f"{source}: {len(dialogues)} dialogues but {len(acts)} act lines")
    builder = _PairBuilder(source, context_turns, max_turn_words)
    for line, act_line in zip(dialogues, acts):
        turns = [t.strip() for t in line.split(EOU)]
        if turns and turns[-1] == "":  # every turn, the last included, is followed by __eou__
            turns.pop()
        if not turns:
            continue
        try:
            labels = [int(a) - 1 for a in act_line.split()]
        except ValueError:
            labels = []
        if len(labels) != len(turns) or not all(0 <= y < len(DAILYDIALOG_ACTS) for y in labels):
            builder.stats.malformed += 1
            continue
        builder.dialogue(turns, labels)
    return builder.result(with_acts=True)


def read_jsonl_pairs(path: str | Path, context_turns: int, max_turn_words: int) -> DialogueText:
    """Pairs from a JSONL file (see the module docstring); errors name the file and line."""
    builder = _PairBuilder(str(path), context_turns, max_turn_words)
    with_acts: Optional[bool] = None
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TextVAEError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise TextVAEError(f"{where}: expected an object with 'context' and 'response'")
        context, response, act = obj.get("context"), obj.get("response"), obj.get("act")
        if not (isinstance(context, list) and all(isinstance(t, str) for t in context)):
            raise TextVAEError(f"{where}: 'context' must be a list of strings")
        if not isinstance(response, str):
            raise TextVAEError(f"{where}: 'response' must be a string")
        if with_acts is None:
            with_acts = act is not None
        if with_acts != (act is not None):
            raise TextVAEError(f"{where}: 'act' must be given on every line or on none")
        if act is not None and not (isinstance(act, int) and act >= 0):
            raise TextVAEError(f"{where}: 'act' must be a non-negative integer, got {act!r}")
        builder.pair(context, response, act)
    return builder.result(with_acts=bool(with_acts))


def dialogue_corpora() -> list[str]:
    """The registered corpora in the ``dialogues`` format, which a dialogue run's ``data.name`` may name."""
    return [c for c in CORPORA.names() if CORPORA.get(c).text_format == "dialogues"]


def check_dialogue_data_dir(cfg: DialogueDataConfig) -> None:
    """A one-line error for a ``data.data_dir`` given with a folder of pairs as ``data.name``: the folder is read
    from its own path, and ``data_dir`` only where the dialogue corpora are looked for (as
    :func:`textvae.data.datasets.check_data_dir` refuses it for sentences). A name that is neither is left to
    the reader, whose error lists the valid ones."""
    if cfg.data_dir is None or cfg.name in CORPORA or not Path(cfg.name).expanduser().is_dir():
        return
    raise TextVAEError(f"data.data_dir {cfg.data_dir}: not read for data.name {cfg.name!r}, a folder of pairs read from "
                       f"its own path; it is where the dialogue corpora ({', '.join(dialogue_corpora())}) are looked "
                       f"for (none: --data.data_dir null)", "data.data_dir")


def read_dialogue_splits(cfg: DialogueDataConfig) -> tuple[dict[str, DialogueText], list[str]]:
    """The train/valid/test pairs named by ``cfg.name`` and the act names (empty without acts)."""
    n, words = cfg.context_turns, cfg.max_turn_words
    if cfg.name in CORPORA:
        spec = CORPORA.get(cfg.name)
        if spec.text_format != "dialogues":
            raise TextVAEError(f"corpus {cfg.name} is not a dialogue corpus (format {spec.text_format})")
        root = resolve_corpus(spec, cfg.data_dir)
        texts = {}
        for split in SPLITS:
            dialogues, acts = (root / f for f in spec.splits[split])
            texts[split] = read_dialogue_lines(read_lines(dialogues), read_lines(acts), str(dialogues), n, words)
        return texts, list(DAILYDIALOG_ACTS)
    folder = Path(cfg.name).expanduser()
    if not folder.is_dir():
        raise TextVAEError(f"dialogue data {cfg.name!r} is neither a dialogue corpus ({', '.join(dialogue_corpora())}) "
                           f"nor a folder with train/valid/test.jsonl")
    missing = [s for s in SPLITS if not (folder / f"{s}.jsonl").is_file()]
    if missing:
        raise TextVAEError(f"{folder}: missing {', '.join(f'{s}.jsonl' for s in missing)}")
    texts = {s: read_jsonl_pairs(folder / f"{s}.jsonl", n, words) for s in SPLITS}
    labelled = {s: t.acts is not None for s, t in texts.items()}
    if len(set(labelled.values())) > 1:
        raise TextVAEError(f"{folder}: 'act' labels in some splits but not others ({labelled})")
    n_acts = max((int(t.acts.max()) + 1 for t in texts.values() if t.acts is not None), default=0)
    return texts, [f"act{i}" for i in range(n_acts)]


# ---- batches -----------------------------------------------------------------------------------
@dataclass
class DialogueBatch:
    """B (context, response) pairs.

    context:      LongTensor [B, N, T]: turn k of pair b is ``<s> w1 .. wn </s>`` then ``<pad>``;
                  turns oldest first, pairs with fewer than N turns padded with empty (all-pad) turns.
    turn_lengths: LongTensor [B, N], n + 2 for a real turn, 0 for padding.
    n_turns:      LongTensor [B], number of context turns (>= 1).
    response:     the responses as a textvae :class:`Batch` (token counts, reduction as for
                  sentences); its ``index`` is the pair index in its split and, when labelled,
                  ``response.extras["labels"]`` the response's dialogue act [B].
    """

    context: torch.Tensor
    turn_lengths: torch.Tensor
    n_turns: torch.Tensor
    response: Batch

    @property
    def acts(self) -> Optional[torch.Tensor]:
        return self.response.extras.get("labels")

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.response.n_tokens

    def __len__(self) -> int:
        return len(self.response)

    def to(self, device: torch.device | str) -> "DialogueBatch":
        return DialogueBatch(self.context.to(device), self.turn_lengths.to(device), self.n_turns.to(device),
                             self.response.to(device))

    def select(self, idx: torch.Tensor) -> "DialogueBatch":
        """Rows ``idx`` (a sub-batch or a reordering), context trimmed to its own sizes."""
        n_turns, turn_lengths = self.n_turns[idx], self.turn_lengths[idx]
        n, t = int(n_turns.max()), int(turn_lengths.max())
        return DialogueBatch(self.context[idx, :n, :t], turn_lengths[:, :n], n_turns, self.response.select(idx))


def collate_dialogues(contexts: Sequence[Sequence[Sequence[int]]], responses: Sequence[Sequence[int]],
                      acts: Optional[Sequence[int]] = None, index: Optional[Sequence[int]] = None
                      ) -> DialogueBatch:
    """Pad id lists (each already ``<s> ... </s>``) into a :class:`DialogueBatch`."""
    if any(len(turns) == 0 for turns in contexts):
        raise TextVAEError("collate_dialogues: every context needs at least one turn")
    n_turns = torch.tensor([len(turns) for turns in contexts], dtype=torch.long)
    longest = max(len(turn) for turns in contexts for turn in turns)
    context = torch.full((len(contexts), int(n_turns.max()), longest), PAD_ID, dtype=torch.long)
    turn_lengths = torch.zeros(context.shape[:2], dtype=torch.long)
    for b, turns in enumerate(contexts):
        for k, ids in enumerate(turns):
            context[b, k, : len(ids)] = torch.as_tensor(np.asarray(ids), dtype=torch.long)
            turn_lengths[b, k] = len(ids)
    response = collate([list(r) for r in responses], None if index is None else list(index))
    if acts is not None:
        response.extras["labels"] = torch.as_tensor(np.asarray(acts), dtype=torch.long)
    return DialogueBatch(context, turn_lengths, n_turns, response)


@dataclass
class DialogueSplit:
    """One encoded split: ``ids[u]`` of turn u (int32 ``<s> .. </s>``), ``texts[u]`` its normalised
    text, and the pairs as in :class:`DialogueText`."""

    name: str
    ids: list[np.ndarray]
    texts: list[str]
    spans: np.ndarray
    responses: np.ndarray
    acts: Optional[np.ndarray]
    stats: PairStats
    lengths: np.ndarray = field(init=False)  # response lengths [P], for bucketing

    def __post_init__(self) -> None:
        self.lengths = np.asarray([len(self.ids[r]) for r in self.responses], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.responses)

    def context_texts(self, pair: int) -> list[str]:
        first, last = self.spans[pair]
        return self.texts[first:last]

    def response_text(self, pair: int) -> str:
        return self.texts[self.responses[pair]]

    def batch(self, index: Sequence[int]) -> DialogueBatch:
        index = [int(i) for i in index]
        contexts = [[self.ids[u] for u in range(*self.spans[i])] for i in index]
        responses = [self.ids[self.responses[i]] for i in index]
        acts = None if self.acts is None else self.acts[index]
        return collate_dialogues(contexts, responses, acts, index)

    def unigram(self, vocab_size: int) -> torch.Tensor:
        """Token counts [V] over the responses (what the model reconstructs), each pair counted."""
        responses = np.concatenate([self.ids[r] for r in self.responses])
        return torch.bincount(torch.from_numpy(responses).long(), minlength=vocab_size)

    def subset(self, limit: Optional[int] = None) -> np.ndarray:
        """Positions of ``limit`` pairs spread evenly over the split (:func:`even_subset`; all when None),
        as the sentence task's ``Split.subset``."""
        return even_subset(len(self.lengths), limit)

    def sampler(self, batch_size: int, shuffle: bool = False, seed: int = 0, pool_batches: int = 100,
                limit: Optional[int] = None) -> BucketBatchSampler:
        """The batch plan over :meth:`subset` (``limit`` pairs; all when None), bucketed by response
        length (``textvae.data.batching``); its indices are positions in that subset; ``shuffle=False``
        is evaluation order."""
        return BucketBatchSampler(self.lengths[self.subset(limit)], batch_size, pool_batches, shuffle, seed)

    def batches(self, batch_size: int, shuffle: bool = False, limit: Optional[int] = None) -> Iterator[DialogueBatch]:
        """The batches of :meth:`sampler`'s plan (epoch 0; the training loop draws its own epochs)."""
        chosen = self.subset(limit)
        for index in self.sampler(batch_size, shuffle, limit=limit):
            yield self.batch(chosen[index])


@dataclass
class DialogueData:
    tokenizer: Tokenizer
    splits: dict[str, DialogueSplit]
    act_names: list[str]  # empty when the data has no act labels


def encode_split(name: str, text: DialogueText, tokenizer: Tokenizer) -> DialogueSplit:
    ids = [np.asarray(x, dtype=np.int32) for x in tokenizer.encode_batch(text.turns)]
    return DialogueSplit(name, ids, text.turns, text.spans, text.responses, text.acts, text.stats)


def load_dialogue_data(cfg: DialogueDataConfig) -> DialogueData:
    """Read, pair, tokenise and encode the train/valid/test splits named by ``cfg``.

    The vocabulary is built on the training turns. In
    the dialogue format (DailyDialog's) each utterance is one turn, counted once however many contexts
    it appears in; in the pairs format (JSONL) each pair's context turns are its own, so an utterance
    is counted once per pair that repeats it (and so is a truncated turn).
    """
    texts, act_names = read_dialogue_splits(cfg)
    for split, text in texts.items():
        log.info("%s: %s", split, text.stats.summary())
        if cfg.max_pairs is not None and len(text.responses) > cfg.max_pairs:
            log.info("%s: capped to the first %d of %d pairs (data.max_pairs)", split, cfg.max_pairs,
                     len(text.responses))
            texts[split] = text.head(cfg.max_pairs)
    tokenizer = create_tokenizer("word", texts["train"].turns, min_freq=cfg.min_freq, max_vocab=cfg.max_vocab)
    splits = {split: encode_split(split, text, tokenizer) for split, text in texts.items()}
    log.info("%s: vocabulary %d; unk rate %s", cfg.name, tokenizer.vocab_size,
             ", ".join(f"{s} {unk_rate(sp.ids):.2%}" for s, sp in splits.items()))
    return DialogueData(tokenizer, splits, act_names)
