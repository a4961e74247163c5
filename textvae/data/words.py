"""What counts as a word before the tokenizer sees a line: a corpus's own unknown-word token read
as ``<unk>`` (``data.unk_token``), text split at punctuation by a Hugging Face ``tokenizers``
pre-tokenizer (``data.pretokenize``), and the warnings that say when either is probably wanted.

Both tokenizers split on whitespace first, so "dog." and "dog" are two words of the vocabulary,
and a corpus's "_UNK" would be a frequent word and hide from the unk rate.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Callable, Optional, Sequence

from textvae.data.special import SPECIAL_TOKENS, UNK
from textvae.errors import TextVAEError

log = logging.getLogger("textvae.data")

PRETOKENIZERS = ("bert", "whitespace")  # every punctuation mark apart / runs of punctuation kept together
# A letter with , ; : ! ? glued after it, a line ending in a word with . ! ? glued, or an opening
# quote or bracket glued to a word. Abbreviations mid-line ("mr. smith", PTB's "corp.") do not count.
GLUED = re.compile(r"[^\W\d_][,;:!?]+(?=\s|$)|[^\W\d_]{2,}[.!?]+[\"')]*\s*$|(?:^|\s)[\"(]+[^\W\d_]")
GLUED_WARNING = 0.05  # fraction of lines above which the text looks untokenised
UNK_LOOKALIKES = ("_UNK", "UNK", "<UNK>", "[UNK]", "_unk", "<oov>", "OOV")
SAMPLE = 20000  # lines inspected for the warnings


def word_rewriter(unk_token: Optional[str], pretokenize: Optional[str]) -> Optional[Callable[[str], str]]:
    """The function a line goes through before filtering and tokenization; None when neither
    setting is given."""
    if pretokenize is not None and pretokenize not in PRETOKENIZERS:
        raise TextVAEError(f"unknown data.pretokenize {pretokenize!r}; valid: {', '.join(PRETOKENIZERS)}")
    if unk_token is None and pretokenize is None:
        return None
    split = _pre_tokenizer(pretokenize) if pretokenize else None

    def rewrite(line: str) -> str:
        words = [UNK if w == unk_token else w for w in line.split()]
        if split is None:
            return " ".join(words)
        if not any(w in SPECIAL_TOKENS for w in words):  # the usual case: one call for the line
            return " ".join(split(" ".join(words)))
        # <unk> and the other special tokens stay whole
        return " ".join(p for w in words for p in ([w] if w in SPECIAL_TOKENS else split(w)))
    return rewrite


def _pre_tokenizer(name: str) -> Callable[[str], list[str]]:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.BertPreTokenizer() if name == "bert" else pre_tokenizers.Whitespace()
    return lambda word: [piece for piece, _ in pre.pre_tokenize_str(word)]


def warn_about_words(lines: Sequence[str], source: str, unk_token: Optional[str], pretokenize: Optional[str]) -> None:
    """Warn when (a sample of) the training lines look untokenised, or hold a token that looks
    like the corpus's own unknown-word token, and the setting that handles it is not given."""
    sample = lines[:SAMPLE]
    if not sample:
        return
    if pretokenize is None:
        glued = sum(bool(GLUED.search(line)) for line in sample)
        if glued > GLUED_WARNING * len(sample):
            example = next(w for line in sample for w in line.split() if GLUED.search(w))
            log.warning("%s: %d of %d lines have punctuation glued to words (%r): the text looks untokenised, "
                        "so 'dog.' and 'dog' are different words; set data.pretokenize: bert to split them",
                        source, glued, len(sample), example)
    if unk_token is None:
        counts = Counter(w for line in sample for w in line.split() if w in UNK_LOOKALIKES)
        if counts:
            token, n = counts.most_common(1)[0]
            total = sum(len(line.split()) for line in sample)
            log.warning("%s: %r looks like the corpus's own unknown-word token (%.2f%% of the words) and is "
                        "counted as a word; set data.unk_token: %s to read it as <unk>", source, token,
                        100 * n / total, token)
