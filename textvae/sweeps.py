"""Sweeps: studies that train one run per setting of a parameter and collect a figure of each.

:func:`rate_sweep` (Prokhorov et al. 2019): one run per capacity C of the ``kl_constraint`` remedy
(:mod:`textvae.remedies.kl_constraint`), giving the rate-distortion points of a model family.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from textvae.errors import TextVAEError
from textvae.study.report import run_figures
from textvae.tasks import run_training


@dataclass
class RatePoint:
    """One trained model of a rate sweep: test-set figures (nats per sentence)."""

    capacity: float
    kl: float  # rate
    rec: float  # distortion
    nll: float  # IW-NLL; NaN when not evaluated (train.iw_samples_final 0): the bound is neg_elbo
    neg_elbo: float
    au: float
    mi: float  # the whole-set estimator; NaN when not evaluated


def rate_sweep(base_config: Any, capacities: Iterable[float],
               train_fn: Optional[Callable[[Any], dict[str, Any]]] = None) -> list[RatePoint]:
    """Train ``base_config`` (a :class:`~textvae.config.RunConfig`) once per capacity C with the
    ``kl_constraint`` remedy set to C (its other parameters are kept when the base recipe has the
    remedy) and return the rate-distortion points, read from the report of ``train_fn``
    (default :func:`textvae.tasks.run_training`). Runs are named ``<name>-C<C>``."""
    train_fn = train_fn or run_training
    points = []
    for c in capacities:
        cfg = copy.deepcopy(base_config)
        remedies = cfg.objective.remedies
        spec = next((r for r in remedies if r.get("name") == "kl_constraint"), {"name": "kl_constraint"})
        cfg.objective.remedies = [r for r in remedies if r.get("name") != "kl_constraint"]
        cfg.objective.remedies.append({**spec, "capacity": float(c)})
        cfg.name = f"{base_config.name}-C{c:g}"
        report = train_fn(cfg)
        missing = sorted({"kl", "rec", "au"} - set(report))
        if missing:
            raise TextVAEError(f"rate_sweep: the report of run {cfg.name!r} lacks {missing}")
        figures = run_figures(report)  # what each name means, as in a study's table
        points.append(RatePoint(capacity=float(c), kl=figures["kl"], rec=figures["rec"], nll=figures["nll"],
                                neg_elbo=figures["neg_elbo"], au=figures["au"], mi=figures["mi"]))
    return points
