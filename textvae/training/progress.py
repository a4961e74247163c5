"""What the progress bars show: training's smoothed loss, and how far an evaluation pass is."""
from __future__ import annotations

from typing import Any, Callable, Iterator

from tqdm import tqdm


class SmoothedLoss:
    """The training loss per token, as an exponential moving average over the logged steps
    weighted by their tokens.

    Per sentence, the loss jumps with the length buckets (a batch of long sentences sums more
    words: 8 -> 67 -> 31 on PTB); per token, one batch is still noisy; the average is what a reader
    of the bar wants to see go down. ``decay`` is the weight the past keeps at each logged step.
    """

    def __init__(self, decay: float = 0.9):
        self.decay = decay
        self.loss = 0.0  # decayed sum of loss * sentences
        self.tokens = 0.0  # decayed sum of tokens

    def add(self, loss_per_sentence: float, n_sentences: int, n_tokens: int) -> float:
        """Take a step's mean loss per sentence over ``n_sentences`` sentences of ``n_tokens``
        tokens; returns the smoothed loss per token."""
        self.loss = self.decay * self.loss + loss_per_sentence * n_sentences
        self.tokens = self.decay * self.tokens + n_tokens
        return self.loss / max(self.tokens, 1.0)


def counted_progress(batches: Callable[[], Iterator[Any]], total: int, what: str, count: Callable[[Any], int],
                     unit: str = "it", enabled: bool = True) -> Callable[[], Iterator[Any]]:
    """``batches`` (a callable returning an iterator) showing a progress bar with the time left, which
    advances by ``count(batch)`` of ``total`` (tokens, say: evaluation order puts the shortest sentences
    first, so a count of batches would promise the end too early), in ``unit``; without one when not
    ``enabled``."""
    def run() -> Iterator[Any]:
        with tqdm(total=total, desc=what, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
                  disable=not enabled) as bar:
            for batch in batches():
                yield batch
                bar.update(count(batch))
    return run


def token_count(batch: Any) -> int:
    """The tokens of a batch of sentences, ``</s>`` included, as :func:`counted_progress` counts them."""
    return int(batch.n_tokens.sum())
