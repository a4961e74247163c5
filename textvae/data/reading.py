"""Reading text corpora: strict UTF-8, whitespace-separated words, nothing dropped silently.

A corpus file holds one sentence per line. Reading it is two steps:

* :func:`read_lines` decodes the file as strict UTF-8; a bad byte is an error naming the file, the
  1-based line and the byte offset (a silently replaced byte would become a new "word").
* :func:`filter_lines` normalises each line to single-space-separated words (PTB lines start with
  a space; tabs and runs of spaces collapse) and sorts out the lines a model cannot use: blank
  lines are skipped, lines with more than ``max_length`` words are skipped or truncated. Every
  such line is counted in :class:`ReadStats`, whose :meth:`ReadStats.summary` is logged.

:func:`read_corpus` does both for one plain file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from textvae.errors import TextVAEError

LONG_LINE_POLICIES = ("skip", "truncate")


@dataclass
class ReadStats:
    """What happened to the lines of one source (a file, a part of a file, or several files).

    total = blank + long_skipped + malformed + kept, where ``long`` counts every over-long line
    (skipped or, with ``long_lines="truncate"``, truncated and kept).
    """

    source: str
    max_length: int
    long_lines: str = "skip"
    total: int = 0
    blank: int = 0
    long: int = 0
    malformed: int = 0
    kept: int = 0

    def summary(self) -> str:
        """One line for the log, e.g. ``ptb.train.txt: 42068 of 42068 lines kept; 0 blank ...``."""
        action = "truncated" if self.long_lines == "truncate" else "skipped"
        text = (
            f"{self.source}: {self.kept} of {self.total} lines kept; {self.blank} blank skipped; "
            f"{self.long} longer than {self.max_length} words {action}"
        )
        if self.malformed:
            text += f"; {self.malformed} malformed skipped"
        return text

    @staticmethod
    def merge(parts: Sequence["ReadStats"]) -> "ReadStats":
        """Sum of the counts of several sources read with the same settings."""
        first = parts[0]
        merged = ReadStats(" + ".join(p.source for p in parts), first.max_length, first.long_lines)
        for p in parts:
            merged.total += p.total
            merged.blank += p.blank
            merged.long += p.long
            merged.malformed += p.malformed
            merged.kept += p.kept
        return merged


class Corpus(NamedTuple):
    """The usable lines of a corpus file and what was done to the others."""

    lines: list[str]
    stats: ReadStats


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file, without line terminators (``\\n`` or ``\\r\\n``).

    A final newline does not start an extra line; a leading byte-order mark is dropped.
    """
    path = Path(path)
    if not path.exists():
        raise TextVAEError(f"no such file: {path}")
    if not path.is_file():
        raise TextVAEError(f"not a regular file: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise TextVAEError(
            f"{path}: line {line}: invalid UTF-8 byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} (column {column}); re-encode the file as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")
    # str.splitlines() would also split on \x0b, \x1c, \u2028, ... and shift the line numbers
    # that error messages and stats refer to, so only \n ends a line.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def filter_lines(
    texts: Sequence[Optional[str]],
    max_length: int,
    long_lines: str = "skip",
    lowercase: bool = False,
    source: str = "<lines>",
) -> tuple[list[int], list[str], ReadStats]:
    """Normalise and filter candidate sentences.

    ``texts[i] is None`` marks a unit that a format parser rejected (counted as malformed).
    Returns ``(kept, lines, stats)``: ``kept[j]`` is the position in ``texts`` of ``lines[j]``,
    so labels read alongside the text can be kept aligned. Raises :class:`TextVAEError` when no
    line is usable.
    """
    if long_lines not in LONG_LINE_POLICIES:
        raise TextVAEError(f"long_lines must be one of {LONG_LINE_POLICIES}, got {long_lines!r}")
    if max_length < 1:
        raise TextVAEError(f"max_length must be at least 1, got {max_length}")
    stats = ReadStats(source, max_length, long_lines, total=len(texts))
    kept: list[int] = []
    lines: list[str] = []
    for i, text in enumerate(texts):
        if text is None:
            stats.malformed += 1
            continue
        words = text.split()
        if not words:
            stats.blank += 1
            continue
        if len(words) > max_length:
            stats.long += 1
            if long_lines == "skip":
                continue
            words = words[:max_length]
        line = " ".join(words)
        kept.append(i)
        lines.append(line.lower() if lowercase else line)
    stats.kept = len(lines)
    _check_usable(stats)
    return kept, lines, stats


def _check_usable(stats: ReadStats) -> None:
    if stats.kept:
        return
    if stats.total == 0:
        raise TextVAEError(f"{stats.source}: the file is empty")
    if stats.blank == stats.total:
        raise TextVAEError(f"{stats.source}: the file has only blank lines ({stats.total})")
    hint = "; raise data.max_length or set data.long_lines: truncate" if stats.long else ""
    raise TextVAEError(
        f"{stats.source}: no usable lines ({stats.blank} blank, {stats.long} longer than "
        f"max_length={stats.max_length} words, {stats.malformed} malformed){hint}"
    )


def read_corpus(
    path: str | Path, max_length: int, long_lines: str = "skip", lowercase: bool = False
) -> Corpus:
    """Read a one-sentence-per-line file: ``lines, stats = read_corpus(path, max_length)``."""
    _, lines, stats = filter_lines(read_lines(path), max_length, long_lines, lowercase, str(path))
    return Corpus(lines, stats)
