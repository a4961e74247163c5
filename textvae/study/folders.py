"""A study's run folders: finished, resumable or new, and never one made with another configuration."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from textvae.config import read_run_config, settings_now
from textvae.errors import TextVAEError
from textvae.study.spec import BUDGET_KEYS, Run, map_strings
from textvae.training.logger import final_report, read_jsonl


def finished_report(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's final test record (its presence marks a finished run), else None."""
    return final_report(read_jsonl(run_dir / "metrics.jsonl"))


def run_state(run: Run) -> str:
    """``done`` (test record written), ``resume`` (a checkpoint), or ``new``."""
    from textvae.training.train import CHECKPOINT

    if finished_report(run.dir) is not None:
        return "done"
    return "resume" if (run.dir / CHECKPOINT).is_file() else "new"


def saved_config(run_dir: Path, cls: Optional[type] = None) -> Optional[tuple[type, dict[str, Any]]]:
    """A run folder's config.yaml as plain JSON values with every setting textvae has now, and its
    configuration class (``cls``, else its task's); None when there is no config.yaml."""
    from textvae.tasks.base import TASKS
    from textvae.tasks.runconfig import DEFAULT_TASK

    values = read_run_config(run_dir)
    if values is None:
        return None
    cls = cls or TASKS.get(values.get("task", DEFAULT_TASK)).config_class
    return cls, settings_now(cls, values)


def check_run_folder(run: Run) -> None:
    """A run folder holding a run of another configuration is an error (never overwritten)."""
    from textvae.training.train import effective_changes

    saved = saved_config(run.dir, type(run.config))
    if saved is None:
        return
    _, old = saved
    # a study folder moved since: its runs' paths into it ("{run:v}") moved with it
    made_in, now_in = str(Path(old.get("out_dir") or run.dir.parent).parent), str(run.dir.parent.parent)
    old = map_strings(old, lambda text: now_in + text[len(made_in):] if text.startswith(made_in + os.sep) else text)
    changes = effective_changes(old, run.config)
    budgets = {f"train.{key}" for key in BUDGET_KEYS.values()}  # the settings a study's budget sets
    if changes and set(changes) <= budgets:  # a larger budget is a resume of train's, which a study does not do
        given = " ".join(f"--{k} {b if b is not None else 'null'}" for k, (_, b) in changes.items())
        raise TextVAEError(f"{run.dir} was trained with another budget ({_shown(changes)}); a study does not train "
                           f"its runs on: `textvae train {run.dir / 'config.yaml'} --resume {given}` does (where the "
                           f"larger budget trains it on), or choose another --out")
    if changes:
        shown = _shown(changes)
        raise TextVAEError(f"{run.dir} was trained with another configuration ({shown}); give the study file and "
                           f"--set the settings it was trained with, delete it or choose another --out")


def _shown(changes: dict[str, tuple[Any, Any]]) -> str:
    """The first three changes, ``train.max_steps: 3 -> 6; ...``."""
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:3]) + ("; ..." if len(changes) > 3
                                                                                         else "")


def clear_unstarted(run: Run) -> None:
    """A run killed before its first checkpoint (written at step 0) cannot be resumed: start it
    again from scratch (its metrics.jsonl would otherwise keep the dead attempt's records)."""
    if run.dir.exists():
        shutil.rmtree(run.dir)

