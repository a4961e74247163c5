"""KL schedules: values at key steps against closed forms, and cyclical resets only at cycle starts."""
import math

import pytest

from textvae.errors import TextVAEError
from textvae.schedules import SCHEDULES, create_lr_schedule, create_schedule


def test_constant_and_linear():
    assert create_schedule({"name": "constant", "value": 0.3})(12345) == 0.3
    lin = create_schedule({"name": "linear", "start": 0.1, "end": 1.0, "warmup_steps": 10})
    assert [lin(t) for t in (0, 5, 10, 50)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    down = create_schedule({"name": "linear", "start": 4.0, "end": 1.0, "warmup_steps": 10})  # annealing down
    assert [down(t) for t in (0, 5, 10, 50)] == [4.0, 2.5, 1.0, 1.0]


def test_sigmoid_closed_form():
    k, x0 = 0.01, 300
    beta = create_schedule({"name": "sigmoid", "k": k, "x0": x0})
    assert beta(x0) == pytest.approx(0.5)
    # 1/(1+e^{-k d}) = 3/4  <=>  d = ln 3 / k
    assert beta(x0 + math.log(3) / k) == pytest.approx(0.75)
    assert beta(x0 - math.log(3) / k) == pytest.approx(0.25)
    assert beta(0) == pytest.approx(1 / (1 + math.exp(k * x0)))
    assert beta(10**7) == pytest.approx(1.0) and 0.0 <= beta(-10**7) < 1e-300  # no overflow
    values = [beta(t) for t in range(0, 1000, 10)]
    assert values == sorted(values)


def test_cyclical_linear_key_steps():
    beta = create_schedule({"name": "cyclical", "total_steps": 100, "n_cycles": 4, "ratio": 0.5})
    # period 25, rising over the first 12.5 steps of each cycle
    expected = {0: 0.0, 5: 0.4, 12: 0.96, 13: 1.0, 24: 1.0, 25: 0.0, 30: 0.4, 75: 0.0, 99: 1.0,
                100: 1.0, 10**6: 1.0}
    for step, value in expected.items():
        assert beta(step) == pytest.approx(value), step


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("sigmoid", 0.5), ("cosine", 0.5)])
def test_cyclical_shapes_start_end(shape, mid):
    beta = create_schedule({"name": "cyclical", "total_steps": 80, "n_cycles": 2, "ratio": 0.5,
                            "shape": shape, "start": 0.2, "end": 0.8})
    # period 40, rising over 20 steps: step 10 is the middle of the rise
    assert beta(10) == pytest.approx(0.2 + 0.6 * mid)
    assert beta(20) == pytest.approx(0.8, abs=0.6 * 0.0025)  # sigmoid reaches 1 - 0.0025 of the rise
    assert beta(21) == beta(39) == 0.8  # the plateau is ``end`` exactly, for the sigmoid too (Fu et al.'s code)
    assert beta(40) == pytest.approx(0.2, abs=0.6 * 0.0025)
    assert beta(5) < beta(10) < beta(15)
    if shape == "cosine":
        assert beta(5) == pytest.approx(0.2 + 0.6 * (0.5 - 0.5 * math.cos(math.pi * 0.25)))


def test_cyclical_fractional_period_boundaries():
    """total 10, 3 cycles: P = 10/3, cycles start at floor(c P) = 0, 3, 6 and nowhere else."""
    beta = create_schedule({"name": "cyclical", "total_steps": 10, "n_cycles": 3, "ratio": 1.0})
    assert [t for t in range(10) if beta.position(t)[1] == 0] == [0, 3, 6]
    assert [t for t in range(10) if beta(t) == 0.0] == [0, 3, 6]
    assert beta(5) == pytest.approx(2 / (10 / 3))
    assert beta.position(9)[1] == pytest.approx(3 / (10 / 3))
    assert beta.position(10) is None
    reference = fu_linear_reference(10, 0.0, 1.0, 3, 1.0)
    assert [beta(t) for t in range(10)] == pytest.approx(reference)


def test_lr_schedules():
    """cosine: lr (1 + cos(pi u)) / 2 within each cycle of the KL schedule, the last step's value held
    after the cycles; none (and cosine without cycles): the plateau lr itself."""
    cycles = create_schedule({"name": "cyclical", "total_steps": 10, "n_cycles": 3})
    cosine = create_lr_schedule("cosine", 0.5, cycles)
    u = [cycles.position(t)[1] for t in range(10)]
    assert [cosine(t) for t in range(10)] == [0.5 * (1 + math.cos(math.pi * x)) / 2 for x in u]
    assert cosine(0) == cosine(3) == cosine(6) == 0.5 and cosine(10) == cosine(25) == cosine(9) < 0.5
    linear = create_schedule({"name": "linear"})
    for name, kl in (("none", cycles), ("cosine", linear)):
        assert {create_lr_schedule(name, 0.5, kl)(t) for t in range(12)} == {0.5}, name
    with pytest.raises(TextVAEError, match=r"cycle_lr .step.; valid: cosine, none \(a part of your own: "):
        create_lr_schedule("step", 0.5, cycles)


def test_cosine_lr_stairs_hold_the_lr_on_equal_parts_of_each_cycle():
    """stairs S: lr (1 + cos(pi k / S)) / 2 on the k-th S-th of each cycle, changing exactly at the
    first step of each part (13150 / 10 = 1315 steps: Fu et al.'s epochs), held after the cycles."""
    cycles = create_schedule({"name": "cyclical", "total_steps": 52600, "n_cycles": 4})
    stairs = create_lr_schedule("cosine", 1e-3, cycles, stairs=10)
    for t in range(0, 52600, 7):
        k = (t % 13150) // 1315
        assert stairs(t) == pytest.approx(1e-3 * (1 + math.cos(math.pi * k / 10)) / 2, rel=1e-12, abs=0), t
    changes = [t for t in range(1, 52600) if stairs(t) != stairs(t - 1)]
    assert changes == [t for t in range(1315, 52600, 1315)]
    assert stairs(52599) == stairs(10**6) == pytest.approx(1e-3 * (1 + math.cos(0.9 * math.pi)) / 2)
    smooth = create_lr_schedule("cosine", 1e-3, cycles)
    assert smooth(1314) < stairs(1314) == stairs(0) == 1e-3  # the continuous form is another schedule
    with pytest.raises(TextVAEError, match="stairs must be >= 0"):
        create_lr_schedule("cosine", 1e-3, cycles, stairs=-1)


def test_cycle_lr_stairs_without_the_cosine_is_a_config_error():
    from textvae.config import RunConfig
    from textvae.training.train import check_config

    cfg = RunConfig()
    cfg.optim.cycle_lr_stairs = 10
    with pytest.raises(TextVAEError, match="cycle_lr_stairs shapes the cosine lr only"):
        check_config(cfg)
    cfg.optim.cycle_lr = "cosine"
    check_config(cfg)


def test_an_lr_schedule_s_own_parameters_come_from_cycle_lr_options(monkeypatch):
    """A registered lr schedule with parameters of its own (a plugin's) takes them from the recipe; they are
    checked with the settings, before any data."""
    from textvae.config import RunConfig
    from textvae.schedules import LR_SCHEDULES
    from textvae.training.train import check_config

    def halve_at(lr, kl_schedule, at: int):
        """lr(t) = lr before step ``at``, lr / 2 from it."""
        return lambda step: lr if step < at else lr / 2

    monkeypatch.setitem(LR_SCHEDULES._entries, "halve_at", halve_at)
    constant = create_schedule({"name": "constant", "value": 1.0})
    assert [create_lr_schedule("halve_at", 0.4, constant, options={"at": 2})(t) for t in range(4)] == [
        0.4, 0.4, 0.2, 0.2]
    cfg = RunConfig()
    cfg.optim.cycle_lr, cfg.optim.cycle_lr_options = "halve_at", {"at": 5}
    check_config(cfg)
    for options, message in (({}, r"'halve_at': missing parameter\(s\) \['at'\]"),
                             ({"at": "soon"}, r"'halve_at': at must be an integer, got 'soon'"),
                             ({"at": 5, "lr": 1.0}, r"'halve_at': \['lr'\] come\(s\) from the model")):
        cfg.optim.cycle_lr_options = options
        with pytest.raises(TextVAEError, match=message):
            check_config(cfg)
    # the caller's two arguments by position, whatever the schedule calls them
    monkeypatch.setitem(LR_SCHEDULES._entries, "halve_at", lambda base, sched, at: halve_at(base, sched, at))
    cfg.optim.cycle_lr, cfg.optim.cycle_lr_options = "halve_at", {"at": 5}
    check_config(cfg)
    cfg.optim.cycle_lr, cfg.optim.cycle_lr_options = "cosine", {"at": 5}
    with pytest.raises(TextVAEError, match=r"optim.cycle_lr 'cosine': unknown parameter\(s\) \['at'\]"):
        check_config(cfg)


def fu_linear_reference(n_iter, start, stop, n_cycle, ratio):
    """Step-level cyclical schedule as Fu et al. define it: an array filled cycle by cycle, rising
    by a constant increment from ``start`` until ``stop`` and staying at ``stop``."""
    values = [stop] * n_iter
    period = n_iter / n_cycle
    increment = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            values[int(i + c * period)] = v
            v += increment
            i += 1
    return values


def test_cyclical_differs_from_epoch_reset_bug_exactly_where_the_bug_is():
    steps_per_epoch, epochs_per_cycle, n_cycles, ratio = 10, 4, 3, 0.5
    total = steps_per_epoch * epochs_per_cycle * n_cycles
    reference = fu_linear_reference(total, 0.0, 1.0, n_cycles, ratio)

    def buggy(step):
        """The published fork: beta is reset on every batch of a cycle's first epoch."""
        epoch = step // steps_per_epoch
        return 0.0 if epoch % epochs_per_cycle == 0 else reference[step]

    ours = create_schedule({"name": "cyclical", "total_steps": total, "n_cycles": n_cycles, "ratio": ratio})
    for t in range(total):
        assert ours(t) == pytest.approx(reference[t], abs=1e-9), t
    differ = {t for t in range(total) if abs(ours(t) - buggy(t)) > 1e-12}
    cycle_len = steps_per_epoch * epochs_per_cycle
    bug_zone = {c * cycle_len + i for c in range(n_cycles) for i in range(1, steps_per_epoch)}
    assert differ == bug_zone  # the first epoch of each cycle, except the cycle's own first step
    assert [t for t in range(total) if ours.position(t)[1] == 0] == [0, 40, 80]


@pytest.mark.parametrize("spec", [
    {"name": "cyclical", "total_steps": 10, "n_cycles": 20},
    {"name": "cyclical", "total_steps": 10, "ratio": 0.0},
    {"name": "cyclical", "total_steps": 10, "shape": "square"},
    {"name": "cyclical", "total_steps": 10, "cycles": 2},
    {"name": "sigmoid", "k": -1.0},
    {"name": "linear", "warmup_steps": 0},
    {"name": "nope"},
    {"value": 1.0},
])
def test_bad_schedules_are_user_errors(spec):
    with pytest.raises(TextVAEError):
        create_schedule(spec)


def test_registry_lists_schedules():
    assert {"constant", "linear", "sigmoid", "cyclical"} <= set(SCHEDULES.names())


def test_a_cosine_lr_without_cycles_to_follow_is_warned_of(caplog):
    import logging

    from textvae.config import RunConfig
    from textvae.training.train import warn_about_settings

    cfg = RunConfig()
    cfg.optim.cycle_lr = "cosine"
    with caplog.at_level(logging.WARNING, logger="textvae"):
        warn_about_settings(cfg, 1000)
        assert "objective.kl_schedule constant has none: the lr stays the plateau schedule's" in caplog.text
        caplog.clear()
        cfg.objective.kl_schedule = {"name": "cyclical", "total_steps": 100, "n_cycles": 4}
        warn_about_settings(cfg, 1000)
    assert "cycle_lr" not in caplog.text
