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
    """``done`` (test record written, and the study's budget trains it no further), ``resume`` (a
    checkpoint: stopped, or finished under a budget that the study's larger one trains on), or ``new``."""
    from textvae.training.train import CHECKPOINT

    if finished_report(run.dir) is not None:
        return "resume" if folder_changes(run)[1] == "trains" else "done"
    return "resume" if (run.dir / CHECKPOINT).is_file() else "new"


def study_report(run: Run) -> Optional[dict[str, Any]]:
    """The final test record of the run in the folder when it is the study's finished run (:func:`run_state`
    ``done``), else None: one finished under a smaller budget that the study's trains on is not yet, and one of
    another configuration is not the study's (``run.conflict``)."""
    if run.conflict is not None:
        return None
    report = finished_report(run.dir)
    return None if report is None or folder_changes(run)[1] == "trains" else report


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


def folder_changes(run: Run) -> tuple[dict[str, tuple[Any, Any]], Optional[str]]:
    """The settings of the run in the folder that differ from the study's (``{key: (saved, study's)}``;
    none when the folder holds no settings) and, when they are only the study's budget, what that budget
    makes of the run: ``past``, ``stops``, ``trains`` or ``mid_epoch``
    (:func:`~textvae.training.train.budget_verdict`), ``unknown`` when it holds a finished run without
    its checkpoint; else None."""
    from textvae.training.checkpoint import read_checkpoint_meta
    from textvae.training.train import CHECKPOINT, LoopState, budget_verdict, effective_changes, validated_here

    saved = saved_config(run.dir, type(run.config))
    if saved is None:
        return {}, None
    _, old = saved
    # a study folder moved since: its runs' paths into it ("{run:v}") moved with it
    made_in, now_in = str(Path(old.get("out_dir") or run.dir.parent).parent), str(run.dir.parent.parent)
    old = map_strings(old, lambda text: now_in + text[len(made_in):] if text.startswith(made_in + os.sep) else text)
    changes = effective_changes(old, run.config)
    if not changes or not set(changes) <= {f"train.{key}" for key in BUDGET_KEYS.values()}:
        return changes, None
    checkpoint = run.dir / CHECKPOINT
    if not checkpoint.is_file():  # never checkpointed: trained from its start ("new"), unless it finished
        return changes, "unknown" if finished_report(run.dir) is not None else "trains"
    state = LoopState.from_meta(read_checkpoint_meta(checkpoint)["loop"])
    # where it decides (a position within an epoch)
    validated = state.batch_in_epoch > 0 and validated_here(state, run.dir / "metrics.jsonl")
    return changes, budget_verdict(state, old.get("train", {}), run.config.train, validated)


def trains_on(run: Run) -> bool:
    """Whether the run in the folder finished under a smaller budget that the study's trains on."""
    return finished_report(run.dir) is not None and folder_changes(run)[1] == "trains"


_md5s: dict[tuple[str, int, int], str] = {}  # the md5 of a weights file by path, size and mtime: read once


def _weights_md5(path: Path) -> str:
    """The md5 of a weights file, read once per process while it is unchanged (the runs that start from one
    run's weights all check them)."""
    from textvae.files import file_md5

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _md5s:
        _md5s[key] = file_md5(path)
    return _md5s[key]


def start_record(run: Run) -> Optional[dict[str, Any]]:
    """The record a run's start logs (``data``: its data, and the md5 of the weights it started from), or None
    for a run never started (a finished run whose checkpoint was deleted still has it)."""
    return next((r for r in read_jsonl(run.dir / "metrics.jsonl") if r.get("split") == "data"), None)


def check_start(run: Run) -> None:
    """A run started from another run's weights (``model.encoder_from``) goes on only from the weights it
    started from (the md5 its start logged): trained on, or trained again not bit for bit, they would make
    it another run. Weights not there (a run to be trained again first) are checked when it resumes."""
    from textvae.models.textvae import WEIGHTS_FILE

    source = getattr(getattr(run.config, "model", None), "encoder_from", None)
    start = start_record(run) or {}
    if source is None or "encoder_from_md5" not in start or not (Path(source) / WEIGHTS_FILE).is_file():
        return
    then, now = start["encoder_from_md5"], _weights_md5(Path(source) / WEIGHTS_FILE)
    if now != then:
        raise TextVAEError(f"{run.dir} started from the weights in {source}, which have changed since (md5 {then[:8]} "
                           f"then, {now[:8]} now: trained on, or trained again not bit for bit); delete it to train "
                           f"it again from them")


def check_run_folder(run: Run, by_label: dict[str, Run]) -> None:
    """A run folder holding a run of another configuration is an error (never overwritten). Another budget
    is the study's where it makes the same run: a larger one trains a run stopped by its budget at an
    epoch's end on, and one that a run stopped before (its plateau schedule ended) leaves it as it is; a
    run past a lowered budget, or stopped by a step or time budget within an epoch (``mid_epoch``), is an
    error. So is a run started from weights that have changed since (:func:`check_start`) or that will
    (a run, of ``by_label``'s, that the larger budget trains on), finished or not, its checkpoint kept or
    not. (A run started from weights no longer there, to be trained again first, is checked when it resumes:
    trained again on the same machine, they are the same to the bit.)"""
    changes, verdict = folder_changes(run)
    if changes and verdict is None:  # another configuration: the first thing to say of it
        raise TextVAEError(f"{run.dir} was trained with another configuration ({shown_changes(changes)}); give the "
                           f"study file and --set the settings it was trained with, delete it or choose another --out")
    moved = [label for label in run.needs if trains_on(by_label[label])]
    if moved and start_record(run) is not None:
        raise TextVAEError(f"{run.dir} started from {moved[0]}, which the study's larger budget trains on, so that "
                           f"it would start from other weights now; delete it to train it again from {moved[0]}'s, "
                           f"or --set the budget it was trained with")
    check_start(run)
    if not changes or verdict in ("stops", "trains"):
        return
    shown = shown_changes(changes)
    if verdict == "past":
        raise TextVAEError(f"{run.dir} trained past the study's budget ({shown}): under it, it would have stopped "
                           f"earlier; --set the budget it was trained with, delete it or choose another --out")
    if verdict == "mid_epoch":
        raise TextVAEError(f"{run.dir} stopped at its budget within an epoch ({shown}) and was validated there; a "
                           f"run of the study's budget is validated only at epochs' ends, so training it on would not "
                           f"make that run; delete it to train it again, or --set the budget it was trained with")
    raise TextVAEError(f"{run.dir} was trained with another budget ({shown}) and its checkpoint is gone, so "
                       f"whether the study's budget trains it on is unknown; --set the budget it was trained "
                       f"with, delete it or choose another --out")


def shown_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """The first three changes, ``train.max_steps: 3 -> 6; ...``."""
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:3]) + ("; ..." if len(changes) > 3
                                                                                         else "")


def clear_unstarted(run: Run) -> None:
    """A run killed before its first checkpoint (written at step 0) cannot be resumed: start it
    again from scratch (its metrics.jsonl would otherwise keep the dead attempt's records)."""
    if run.dir.exists():
        shutil.rmtree(run.dir)

