"""Schedules: pure functions of the optimiser step, ``step -> beta`` (KL weight) and ``step -> lr``.

Each factory takes the schedule's parameters and returns a function of the step. Build a KL schedule
from a recipe with ``create_schedule({"name": "linear", "start": 0.1, "warmup_steps": 10000})``.

beta-VAE (Higgins et al. 2017) is the ``constant`` schedule with ``value: beta``; it needs no remedy.

Learning-rate schedules (``optim.cycle_lr``) are composed with the KL schedule the same way:
``create_lr_schedule("cosine", lr, kl_schedule)`` is ``step -> lr`` for the plateau schedule's
current ``lr``; the training loop rebuilds it when the plateau schedule changes ``lr``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

from textvae.errors import TextVAEError
from textvae.registry import Registry

Schedule = Callable[[int], float]
SCHEDULES: Registry = Registry("KL schedule", recipe="objective.kl_schedule: {name: NAME, PARAMETER: VALUE}")


def register_schedule(name: str) -> Callable[[Any], Any]:
    """Decorator: a KL schedule, ``factory(**parameters) -> (step -> beta)``, under ``name``, which
    ``objective.kl_schedule: {name: NAME, ...}`` chooses."""
    return SCHEDULES.register(name)


def list_schedules() -> list[str]:
    """Every registered KL schedule, by name."""
    return SCHEDULES.names()


@SCHEDULES.register("constant")
def constant(value: float = 1.0) -> Schedule:
    """beta(t) = value. ``value: 1`` is the plain VAE; other values are beta-VAE (Higgins et al. 2017)."""
    if value < 0:  # a negative weight rewards KL: the objective is then no bound on anything
        raise TextVAEError(f"constant KL schedule: value must be >= 0, got {value}")
    return lambda step: float(value)


@SCHEDULES.register("linear")
def linear(start: float = 0.0, end: float = 1.0, warmup_steps: int = 10000) -> Schedule:
    """beta(t) = start + (end - start) * min(1, t / warmup_steps) (Bowman et al. 2016; He et al. 2019
    anneal from kl_start = 0.1 to 1 over 10 epochs of iterations); ``end < start`` anneals down."""
    if warmup_steps <= 0:
        raise TextVAEError("linear KL schedule: warmup_steps must be > 0")
    if min(start, end) < 0:
        raise TextVAEError(f"linear KL schedule: start and end must be >= 0, got {start} and {end}")

    def beta(step: int) -> float:
        return float(end) if step >= warmup_steps else start + (end - start) * step / warmup_steps

    return beta


@SCHEDULES.register("sigmoid")
def sigmoid(k: float = 0.0025, x0: int = 2500) -> Schedule:
    """Logistic annealing (Bowman et al. 2016): beta(t) = 1 / (1 + exp(-k (t - x0))).

    beta is 1/2 at step ``x0``; ``k`` sets the steepness (the slope there is k/4).
    """
    if k <= 0:
        raise TextVAEError("sigmoid KL schedule: k must be > 0")

    def beta(step: int) -> float:
        x = -k * (step - x0)
        return 0.0 if x > 700 else 1.0 / (1.0 + math.exp(x))  # exp overflows past ~709

    return beta


# Shapes of the rising part of a cycle: f(0) ~ 0, f(1) ~ 1 (Fu et al.'s frange_cycle_* variants).
_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(6.0 - 12.0 * x)),  # logistic on [-6, 6]
    "cosine": lambda x: 0.5 - 0.5 * math.cos(math.pi * x),
}


class Cyclical:
    """Cyclical annealing (Fu et al. 2019, "Cyclical Annealing Schedule: A Simple Approach to
    Mitigating KL Vanishing").

    The first ``total_steps`` steps are split into ``n_cycles`` cycles of length
    P = total_steps / n_cycles; cycle c covers steps s_c = floor(c P) .. s_{c+1} - 1 (as the array
    of Fu et al.'s code). With u = (t - s_c) / P the position of step t inside its cycle:

        beta(t) = start + (end - start) * f(u / ratio)   for u <= ratio,   end after it

    f is the ``shape`` (linear x, sigmoid 1/(1+exp(6-12x)), cosine (1-cos πx)/2): beta rises during
    the first ``ratio`` of each cycle and then stays at ``end`` exactly. beta returns to ``start`` at
    the first step of each cycle and never within a cycle (one published fork reset it on every
    batch of a cycle's first epoch). The sigmoid, as in Fu et al.'s code, is the logistic on [-6, 6]
    unscaled: its rise runs from start + 0.0025 (end - start) to end - 0.0025 (end - start), and the
    plateau after it is ``end``. After ``total_steps`` beta stays at ``end``.

    Integer arithmetic places cycle boundaries exactly even when P is not an integer.
    """

    def __init__(self, total_steps: int, n_cycles: int = 4, ratio: float = 0.5, shape: str = "linear",
                 start: float = 0.0, end: float = 1.0):
        if total_steps <= 0 or n_cycles <= 0 or n_cycles > total_steps:
            raise TextVAEError(f"cyclical KL schedule: need 0 < n_cycles <= total_steps "
                               f"(got n_cycles={n_cycles}, total_steps={total_steps})")
        if not 0 < ratio <= 1:
            raise TextVAEError(f"cyclical KL schedule: ratio must be in (0, 1], got {ratio}")
        if shape not in _SHAPES:
            raise TextVAEError(f"cyclical KL schedule: unknown shape {shape!r}; valid: {', '.join(_SHAPES)}")
        self.total_steps, self.n_cycles, self.ratio = total_steps, n_cycles, ratio
        self.shape, self.start, self.end = _SHAPES[shape], start, end

    def position(self, step: int) -> Optional[tuple[int, float]]:
        """(cycle index, fraction u of the cycle elapsed) of ``step``; ``None`` past the last cycle."""
        if step < 0:
            raise TextVAEError(f"cyclical KL schedule: negative step {step}")
        if step >= self.total_steps:
            return None
        # the last c with floor(c P) <= step, i.e. c P < step + 1
        cycle = ((step + 1) * self.n_cycles - 1) // self.total_steps
        return cycle, (step - self.first_step(cycle)) * self.n_cycles / self.total_steps

    def first_step(self, cycle: int) -> int:
        """floor(c P): the step at which cycle c starts (P = total_steps / n_cycles)."""
        return cycle * self.total_steps // self.n_cycles

    def __call__(self, step: int) -> float:
        pos = self.position(step)
        if pos is None or pos[1] > self.ratio:
            return float(self.end)
        return self.start + (self.end - self.start) * self.shape(pos[1] / self.ratio)


SCHEDULES.register("cyclical")(Cyclical)


LR_SCHEDULES: Registry = Registry("optim.cycle_lr", recipe="optim.cycle_lr: NAME, optim.cycle_lr_options: {PARAM: "
                                                           "VALUE} (optim.cycle_lr_stairs for stairs)",
                                  supplied=("lr", "kl_schedule", "stairs"))


@LR_SCHEDULES.register("none")
def constant_lr(lr: float, kl_schedule: Schedule) -> Schedule:
    """lr(t) = lr: the plateau schedule's lr, untouched. (No schedule restarts the lr at each cycle start as
    Fu et al. do: between cycle starts the lr already is the plateau schedule's, whose decay starts a new
    optimiser at the decayed lr, which a restart would keep.)"""
    return lambda step: lr


@LR_SCHEDULES.register("cosine")
def cosine_per_cycle(lr: float, kl_schedule: Schedule, stairs: int = 0) -> Schedule:
    """A cosine over each cycle of the cyclical KL schedule: lr(t) = lr (1 + cos(pi v_t)) / 2.

    With u_t the fraction of its cycle elapsed at step t (0 at each cycle start),

        v_t = u_t                  (stairs = 0: a continuous cosine)
        v_t = floor(S u_t) / S     (stairs = S > 0: the lr held on each of S equal parts of a cycle)

    Past the last cycle lr(t) keeps the value of the last cycle's last step. With a KL schedule
    without cycles, lr(t) = lr.

    Fu et al.'s PTB script sets the lr once per epoch, from the epoch's place in its 10-epoch
    cycle: S = 10. The continuous form is not the same run: over a cycle it gives a mean factor of
    0.50 instead of 0.55, and in a cycle's last epoch about 0.008 instead of 0.024.
    """
    position = getattr(kl_schedule, "position", None)  # only cyclical schedules have cycles
    if position is None:
        return constant_lr(lr, kl_schedule)
    if stairs < 0:
        raise TextVAEError(f"cosine lr schedule: stairs must be >= 0, got {stairs}")
    total, n_cycles = kl_schedule.total_steps, kl_schedule.n_cycles  # type: ignore[attr-defined]

    def fraction(step: int) -> float:
        cycle, u = position(step)
        if not stairs:
            return u
        # floor(S u) in integers: S * u in floats can land just below a stair's first step
        into = step - kl_schedule.first_step(cycle)  # type: ignore[attr-defined]
        return (into * n_cycles * stairs // total) / stairs

    def cosine(step: int) -> float:
        return lr * (1 + math.cos(math.pi * fraction(min(step, total - 1)))) / 2

    return cosine


def create_lr_schedule(name: str, lr: float, kl_schedule: Schedule, stairs: int = 0,
                       options: Optional[dict[str, Any]] = None) -> Schedule:
    """``step -> lr`` of the registered ``name`` around the base ``lr``, cycles taken from
    ``kl_schedule``; ``stairs`` goes to the schedules that take it (``cosine``), ``options`` (a recipe's
    ``optim.cycle_lr_options``) are the schedule's own parameters."""
    schedule = LR_SCHEDULES.build(name, dict(options or {}), lr, kl_schedule, stairs=stairs)
    return built_schedule(schedule, f"lr schedule {name!r}")


def create_schedule(spec: dict[str, Any]) -> Schedule:
    """Build a schedule from ``{"name": ..., **params}``; unknown names or parameters are errors."""
    params = dict(spec)
    name = params.pop("name", None)
    if name is None:
        raise TextVAEError(f"KL schedule needs a 'name'; valid: {', '.join(SCHEDULES.names())}")
    return built_schedule(SCHEDULES.build(name, params), f"KL schedule {name!r}")


def built_schedule(schedule: Any, what: str) -> Schedule:
    """What a registered factory built, refused unless it is the ``step -> value`` function (a factory of one's
    own that returned a value instead)."""
    if not callable(schedule):
        raise TextVAEError(f"{what} built {type(schedule).__name__}, not a function of the step")
    return schedule
