"""A study's archive: its finished runs kept as figures in one JSON file that can be committed, so that
losing the run folders (a new machine, a wiped scratch disk) loses no finished row.

    textvae study STUDY.yaml --archive docs/results/NAME/archive.json

The file holds, per finished run, what the study's outputs need of it: its configuration, its test
report, its validation curves (as report.md's plot draws them), its epoch-end validation records
(trimmed to :data:`VALID_KEYS`, for per-epoch tables), the wall time of its test report, the
commits it ran at and the machines it ran on. No weights: a run that another run starts from (``"{run:v}/model"``) is trained
again when that other run has to be trained.

A planned run whose folder holds no finished run, and whose variant, seed and configuration match an
entry, counts as finished from the archive: it is not trained, ``--status`` says ``archived``, and its
figures enter results.csv / results.json / report.md as a run's would. The budget is the one setting
that may differ, where it makes the same run, as for a run folder: an entry whose plateau schedule ended
before its epoch budget stands for the run of any budget it did not pass (:func:`stopped_at`). An entry
that another configuration made, that its budget stopped and a larger one would train on (from weights an
archive does not keep), or that a lower budget would have stopped earlier, is left out with a warning, and
the run is trained. Every time
the study writes its outputs it writes the archive again: the entries it had, with each run finished
in a folder added or replaced by its folder's figures.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from textvae.errors import TextVAEError
from textvae.files import write_text_whole
from textvae.plots import run_curves
from textvae.config import INCIDENTAL_KEYS, TrainConfig, settings_now
from textvae.study.folders import study_report
from textvae.study.spec import BUDGET_KEYS, Run, Study, map_strings
from textvae.training.logger import read_jsonl

if TYPE_CHECKING:
    from textvae.training.train import LoopState

log = logging.getLogger("textvae.study")

FORMAT = 1
# the figures of an epoch-end validation record an archive keeps (for per-epoch tables)
VALID_KEYS = ("split", "epoch", "step", "time", "lr", "improved", "rec", "kl", "neg_elbo", "nll", "mi_dataset",
              "mi_batch", "mi_batch_size", "mi_batch_he2019", "au")
OUT = "{out}"  # stands for the study's output folder in an archived configuration


def portable_config(run: Run, out: Path) -> dict[str, Any]:
    """The run's settings as JSON values, without the incidental ones (threads, progress bars, its
    name and folder), with paths into the study's folder written relative to ``{out}``."""
    return _portable(json.loads(json.dumps(run.config.to_dict())), out)


def _portable(values: dict[str, Any], out: Path) -> dict[str, Any]:
    for key in INCIDENTAL_KEYS:
        section, _, leaf = key.rpartition(".")
        node = values.get(section, {}) if section else values
        node.pop(leaf, None)
    root = str(out)
    return map_strings(values, lambda s: OUT + s[len(root):] if s == root or s.startswith(root + "/") else s)


def test_seconds(records: list[dict[str, Any]]) -> float:
    """The test report's wall time: from its ``test_start`` record (or, in runs made before it was
    logged, the last record before it) to the test record, plus the time earlier, stopped attempts
    spent on the IW batches it took over (``earlier_seconds``, :func:`textvae.training.train.finish_run`)."""
    idx = next((i for i, r in enumerate(records) if r.get("split") == "test"), None)
    if not idx:
        return math.nan
    start = next((r for r in reversed(records[:idx]) if r.get("split") == "test_start"), records[idx - 1])
    return records[idx].get("time", math.nan) - start.get("time", math.nan) + start.get("earlier_seconds", 0.0)


def folder_entry(run: Run, out: Path) -> Optional[dict[str, Any]]:
    """The archive entry of the study's run finished in its folder (None if it is not: not finished, or
    finished under a smaller budget that the study's trains on)."""
    report = study_report(run)
    if report is None:
        return None
    records = read_jsonl(run.dir / "metrics.jsonl")
    valid = [{k: r[k] for k in VALID_KEYS if k in r} for r in records if r.get("split") == "valid"]
    commits, machines = provenance(records)
    return {"variant": run.variant, "seed": run.seed, "config": portable_config(run, out), "report": report,
            "curves": run_curves(records), "valid": valid, "test_seconds": test_seconds(records),
            "commits": commits, "machines": machines, "source": "run folder"}


def provenance(records: list[dict[str, Any]]) -> tuple[list[Optional[str]], list[str]]:
    """From a run's ``source`` records (one per start), each once: the code it ran, by its commit (from a
    checkout with uncommitted changes 'COMMIT + changes, source DIGEST'; from an installed copy outside git
    'source DIGEST': :func:`textvae.training.train.source_digest`), and where it ran, as 'CPU model, n
    threads' (and its GPU; runs logged before textvae recorded the machine give none)."""
    sources = [r for r in records if r.get("split") == "source"]
    commits = list(dict.fromkeys(code_name(r) for r in sources))
    machines = list(dict.fromkeys(f"{r['cpu']}, {r['threads']} threads" + (f", {r['gpu']}" if r.get("gpu") else "")
                                  for r in sources if "cpu" in r))
    return commits, machines


def code_name(source: dict[str, Any]) -> Optional[str]:
    """The code of one start (a ``source`` record), as :func:`provenance` names it; None where it was not
    recorded."""
    commit, digest = source.get("commit"), source.get("source_sha256")
    if digest is None:
        return commit
    if commit is None:
        return f"source {digest}"
    return f"{commit} + changes, source {digest}" if source.get("dirty") else commit


def load_archive(path: Path) -> list[dict[str, Any]]:
    """The entries of an archive file ([] when there is none yet)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TextVAEError(f"--archive {path}: not a study archive ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("runs"), list):
        raise TextVAEError(f"--archive {path}: not a study archive (expected format {FORMAT} with a list of runs)")
    return data["runs"]


def attach(study: Study, runs: list[Run], entries: list[dict[str, Any]]) -> None:
    """Set ``run.archived`` to its entry for each run not finished in its folder whose variant, seed
    and configuration an entry matches (a setting added to textvae since reads as its default, as for
    a run folder: :func:`~textvae.config.settings_now`; a budget where it makes the same run,
    :func:`stopped_at`); an entry of the same run with other settings is reported."""
    by_label = {f"{e['variant']}/seed{e['seed']}": e for e in entries}
    for run in runs:
        entry = by_label.get(run.label)
        if entry is None or study_report(run) is not None:  # the folder's finished run is the study's
            continue
        archived, planned = _portable(settings_now(type(run.config), entry["config"]), study.out), \
            portable_config(run, study.out)
        verdict = _budget_verdict(entry, archived["train"], run) if archived != planned and \
            _without_budget(archived) == _without_budget(planned) else None
        if archived == planned or verdict == "stops":
            run.archived = entry
        elif verdict == "past":
            log.warning("%s: the archive's run trained past the study's budget: under it, it would have stopped "
                        "earlier; it is trained again", run.label)
        elif verdict is not None:
            log.warning("%s: the archive's run was made with another budget, and an archive keeps no weights to "
                        "train it on from; it is trained (from its folder's checkpoint where it has one)", run.label)
        else:
            log.warning("%s: the archive's run was made with other settings; it is trained again", run.label)


def stopped_at(entry: dict[str, Any]) -> Optional[LoopState]:
    """Where the archived run stopped training: a :class:`~textvae.training.train.LoopState` with its ``step``,
    ``epoch``, ``train_seconds`` and ``done`` (the fields a budget is judged by; the rest are defaults). ``done``
    is the report's ``train_plateau_ended``; in reports from before textvae recorded it, it is inferred: done
    where none of the run's epoch and step budgets was used up there, so that its plateau schedule ended it (it
    finished, and a stop on request writes no test report), and not where one was (its schedule may have ended
    there too). None where the entry cannot place it: a report from before textvae recorded the steps and
    seconds trained, or one without the flag from a run with a time budget (each rank's clock may have ended
    it). The whole epochs trained are the report's, or (in older reports) the last validation's, which a run
    validates at the step it stops at, unless a step budget stopped it elsewhere."""
    from textvae.training.train import LoopState, budgets_used_up

    report, train = entry.get("report") or {}, entry["config"].get("train", {})
    steps, seconds, ended = report.get("train_steps"), report.get("train_seconds"), report.get("train_plateau_ended")
    if steps is None or seconds is None or ended is None and train.get("max_seconds") is not None:
        return None
    epochs = report.get("train_epochs", next((r.get("epoch") for r in entry.get("valid", []) if r.get("step") == steps),
                                             None))
    if epochs is None:
        return None
    state = LoopState(step=int(steps), epoch=int(epochs), train_seconds=float(seconds))
    state.done = bool(ended) if ended is not None else \
        not budgets_used_up(state, TrainConfig(**{k: train[k] for k in BUDGET_KEYS.values() if k in train}))
    return state


def _budget_verdict(entry: dict[str, Any], train: dict[str, Any], run: Run) -> str:
    """What the study's budget makes of the archived run, made with the train settings ``train``, as
    :func:`~textvae.training.train.budget_verdict` says it of a run folder: ``stops`` where its plateau
    schedule ended it and that budget does not pass (the run of that budget), ``past`` where that budget
    would have stopped it earlier, ``trains`` where it would train it on; ``unknown`` where :func:`stopped_at`
    cannot place it."""
    from textvae.training.train import budget_verdict

    state = stopped_at(entry)
    return "unknown" if state is None else budget_verdict(state, train, run.config.train, False)


def _without_budget(values: dict[str, Any]) -> dict[str, Any]:
    """Portable settings less the train settings a study's budget sets."""
    return {**values, "train": {k: v for k, v in values.get("train", {}).items() if k not in BUDGET_KEYS.values()}}


def write_archive(path: Path, study: Study, runs: list[Run], entries: list[dict[str, Any]]) -> None:
    """The archive again: its entries, each run finished in a folder added or replacing its entry."""
    merged = {f"{e['variant']}/seed{e['seed']}": e for e in entries}
    for run in runs:
        entry = folder_entry(run, study.out)
        if entry is not None:
            merged[run.label] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "study": study.name, "runs": list(merged.values())}
    write_text_whole(path, json.dumps(finite_or_null(data), indent=1) + "\n")


def finite_or_null(value: Any) -> Any:
    """NaN / inf -> None, so the JSON a study writes is standard JSON (jq, browsers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value
