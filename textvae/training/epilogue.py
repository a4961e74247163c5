"""The lines printed after a run's test report: where the run was saved and, when its latent
space collapsed, the command that trains the same run again with a remedy."""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from textvae.remedies import combines

# Tried in order; the first one the run does not use already is suggested. BN-VAE (Zhu et al. 2020)
# first: one parameter, no schedule to tune, and a KL floor by construction.
SUGGESTED_REMEDIES = ({"name": "bn_vae"}, {"name": "delta_vae"}, {"name": "free_bits_li2019"})


def run_epilogue(run_dir: Path, report: dict[str, Any], cfg: Any) -> str:
    """``run saved in ...`` and, for a trained VAE with no active unit, the command that trains the run
    ``cfg`` again with a remedy it does not use yet, added to those it does."""
    lines = [f"run saved in {run_dir}: best model {run_dir / 'model'}, checkpoint, metrics.jsonl, config.yaml"]
    collapsed = report.get("au") == 0 and report.get("latent_dim", 0) > 0 and report.get("train_steps") != 0
    remedies = list(cfg.objective.remedies)
    # the first one that combines with the run's remedies and model (the objective would refuse the rest)
    remedy = next((r for r in SUGGESTED_REMEDIES if combines([*remedies, r], **cfg.model.latent_family())), None)
    if collapsed and remedy is not None:
        command = ["textvae", "train", str(run_dir / "config.yaml"), "--name", f"{run_dir.name}-{remedy['name']}",
                   "--objective.remedies", json.dumps([*remedies, remedy])]
        # He et al.'s U(-0.01, 0.01) encoder starts with posterior means too alike for a remedy to act on
        # for thousands of steps (BN-VAE's floor needs their batch variance above its eps)
        model = getattr(cfg, "model", None)
        if (getattr(model, "encoder_init", None) or getattr(model, "init", None)) == "he2019":
            command += ["--model.encoder_init", "torch"]
        lines.append(f"the latent space collapsed (0 active units{_capped(report, cfg)}); to try a remedy: "
                     f"{shlex.join(command)}")
    return "\n".join(lines)


def _capped(report: dict[str, Any], cfg: Any) -> str:
    """The caveat ``after N steps, before its first epoch ended, where train.max_steps stopped it: ...`` where a
    budget cut the run short that early (a smoke test, a study's time cap): an encoder may not have started
    encoding yet; "" otherwise."""
    steps, tc = report.get("train_steps"), cfg.train
    if report.get("train_epochs", 1) > 0:
        return ""
    by = ("train.max_steps" if tc.max_steps is not None and steps is not None and steps >= tc.max_steps else
          "train.max_seconds" if tc.max_seconds is not None and report.get("train_seconds", 0) >= tc.max_seconds
          else None)
    return (f" after {steps} steps, before its first epoch ended, where {by} stopped it: it may not have started "
            f"encoding yet" if by else "")
