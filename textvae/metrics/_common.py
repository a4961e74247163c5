"""Plumbing shared by the metrics: evaluation mode, seeded sampling, re-iterable batches, table rows."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch

# A one-pass iterable of batches, or a callable returning a fresh iterator (for several passes).
Batches = Union[Iterable[Any], Callable[[], Iterable[Any]]]


def iterate(batches: Batches) -> Iterator[Any]:
    """A fresh iterator over ``batches`` (calls it when it is a callable)."""
    return iter(batches() if callable(batches) else batches)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off and gradients off for the duration; every submodule's own ``training`` flag is
    restored afterwards (not just the root's, which ``model.train(was_training)`` would spread)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def seeded(generator: Optional[torch.Generator]) -> Iterator[None]:
    """Make the protocol's ``posterior.rsample(n)`` (which draws from torch's global RNG)
    reproducible from ``generator`` without disturbing the caller's global RNG state.

    ``None`` leaves the global RNG in use. Otherwise one seed is drawn from ``generator``, the
    global CPU and CUDA states are forked, seeded with it, and restored on exit.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def format_figure(value: float, fmt: str) -> str:
    """``value`` in ``fmt`` ('{:.2f}'), '–' where it is not finite; a negative figure that rounds to zero
    reads as zero (an estimate of -0.001 nats, or the -0.0 of a sum of zeros, is '0.00', not '-0.00')."""
    if not math.isfinite(value):
        return "–"
    text = fmt.format(value)
    return fmt.format(0.0) if text == fmt.format(-0.0) else text


@dataclass(frozen=True)
class Row:
    """One figure's row in ``textvae evaluate``'s table (:func:`textvae.metrics.table.format_table`).

    ``label``: text whose ``{K}`` (IW samples), ``{N}`` (sentences or pairs), ``{B}`` (MI batch),
    ``{thr}`` (AU threshold) and ``{G}`` (the generated texts scored) are filled from the results, or a
    function of the results giving such text; None: the figure is shown within another row, not as one
    of its own. ``fmt``: a format string, or ``fmt(value, results) -> text`` (None: no row)."""

    figure: str
    label: Optional[str | Callable[[dict[str, Any]], str]]
    fmt: str | Callable[[Any, dict[str, Any]], Optional[str]] = "{:.2f}"

    @classmethod
    def within(cls, *figures: str) -> tuple[Row, ...]:
        """Rows for figures shown within other rows (K beside the IW-NLL)."""
        return tuple(cls(f, None) for f in figures)
