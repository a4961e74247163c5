"""KL-weight schedules: pure functions ``step -> beta`` counted in optimiser steps.

Each factory takes the schedule's parameters and returns a function of the step. Build one from a
recipe with ``create_schedule({"name": "linear", "start": 0.1, "warmup_steps": 10000})``.
"""
from __future__ import annotations

from typing import Any, Callable

from textvae.errors import TextVAEError
from textvae.registry import Registry

Schedule = Callable[[int], float]
SCHEDULES: Registry = Registry("KL schedule")


@SCHEDULES.register("constant")
def constant(value: float = 1.0) -> Schedule:
    """beta(t) = value. ``value: 1`` is the plain VAE; other values are beta-VAE (Higgins et al. 2017)."""
    return lambda step: float(value)


@SCHEDULES.register("linear")
def linear(start: float = 0.0, end: float = 1.0, warmup_steps: int = 10000) -> Schedule:
    """beta(t) = min(end, start + (end - start) * t / warmup_steps) (Bowman et al. 2016; He et al. 2019
    anneal from kl_start = 0.1 to 1 over 10 epochs of iterations)."""
    if warmup_steps <= 0:
        raise TextVAEError("linear KL schedule: warmup_steps must be > 0")

    def beta(step: int) -> float:
        return min(end, start + (end - start) * step / warmup_steps)

    return beta


def create_schedule(spec: dict[str, Any]) -> Schedule:
    """Build a schedule from ``{"name": ..., **params}``; unknown names or parameters are errors."""
    params = dict(spec)
    name = params.pop("name", None)
    if name is None:
        raise TextVAEError(f"KL schedule needs a 'name'; valid: {', '.join(SCHEDULES.names())}")
    return SCHEDULES.build(name, params)
