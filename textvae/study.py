"""One-command studies: variants x seeds of a recipe, trained, resumed, aggregated and plotted.

    textvae study studies/ptb_main.yaml [--jobs N] [--out DIR] [--only VARIANT ...] [--seeds K ...]
                                        [--set KEY=VALUE ...] [--status]

A study file (YAML):

    name: ptb_main                           # default: the file's stem
    description: one paragraph for report.md # optional
    base: ../recipes/ptb/vae.yaml            # relative to the study file, the current directory or
                                             # the repository; default: the embedded synthetic recipe
    out: out/ptb_main                        # default: out/<name>, relative to the current directory
    seeds: [1, 2, 3]                         # train.seed of each run (default: [1])
    budget: {epochs: 40, max_steps: 20000, seconds: 3600}   # per run (any subset)
    data: {name: ptb, max_sentences: 5000}   # dataset override for every run
    overrides: {train.metrics_every: 200}    # for every run
    variants:                                # name -> overrides, dotted or nested keys
      plain: {}
      free_bits: {objective.remedies: [{name: free_bits_li2019, target_kl: 8}]}
      adam: {optim: {name: adam, lr: 0.001}}
    notes:                                   # optional: what a variant changes and why, for report.md
      adam: Kingma & Ba's optimiser at the lr of its paper, not the table's SGD

A run's configuration is the base recipe, then ``data``, ``budget``, ``overrides``, the command
line's ``--set`` (dotted keys, YAML values: ``--set train.max_seconds=600 train.iw_samples_final=50``,
to fit a study to a smaller machine without copying it; printed in report.md) and the variant's
overrides, each on top of the previous; ``--seeds`` replaces the file's seeds. Sections of
:class:`~textvae.config.RunConfig` (``optim``, ``model.encoder``, ...) merge key by key; every other
value, free-form dicts (``kl_schedule``, ``options``) and lists (``remedies``) included, is replaced
whole.

A string setting may name another variant's run of the same seed: ``"{run:ae}/model"`` is
``<out>/ae/seed<k>/model`` (``model.encoder_from: "{run:ae}/model"`` starts a VAE from the ``ae``
variant's trained encoder). Such a run waits for that run to finish; it fails without training if
that run is neither finished nor selected (``--only``).

Run ``seed k`` of variant ``v`` is an ordinary run folder ``<out>/v/seed<k>/`` next to its recipe
``<out>/v/seed<k>.yaml`` (``textvae train`` that file to redo the run by hand). Runs go seed by seed,
all variants of a seed before the next, so a partial study already has a full table. Re-running
the study skips finished runs (the test record is in their metrics.jsonl), resumes interrupted
ones from their checkpoint, restarts those that died before their first checkpoint, and refuses a
run folder trained with another configuration. With ``--jobs N`` runs are subprocesses
(``python -m textvae.cli train``), N at a time, each with cores / N torch threads unless the
configuration sets ``train.threads``; their output goes to ``<out>/v/seed<k>.log``.

``--status`` trains nothing and writes nothing: one line per run (``--only`` and ``--seeds`` apply)
saying whether it is done (its test figures), being trained (by which process), stopped (where, and
that the study resumes it), waiting for a run it starts from, or not started.

``textvae compare RUN ...`` prints the same table for run folders made by hand (:func:`compare_runs`).

Outputs in ``<out>/``: ``results.csv`` (one row per variant: mean and std of each figure),
``results.json`` (the same plus every run's test report), ``report.md`` (the table and the plots
of :mod:`textvae.plots`).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from textvae.config import RunConfig, from_dict
from textvae.errors import TextVAEError
from textvae.files import lock_holder, run_folder_lock
from textvae.metrics import get_metric, he2019_noise_sd, list_metrics
from textvae.training.logger import read_jsonl
from textvae.training.signals import PARENT_ENV, sigterm_interrupts

log = logging.getLogger(__name__)

STUDY_KEYS = ("name", "description", "base", "out", "seeds", "budget", "data", "overrides", "variants", "notes")
BUDGET_KEYS = {"epochs": "epochs", "max_steps": "max_steps", "seconds": "max_seconds"}  # -> train.*
# Keys that may differ between a run folder's config.yaml and the study without making it another
# run: where the study lives, its run names, and how many threads / progress bars this machine uses.
INCIDENTAL_KEYS = {"name", "out_dir", "train.threads", "train.progress", "train.retain_memory"}  # no effect on results
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---- the study file ----------------------------------------------------------------------------
@dataclasses.dataclass
class Study:
    name: str
    path: Path  # the study file
    base: Path  # the base recipe
    out: Path
    seeds: list[int]
    variants: dict[str, dict[str, Any]]  # name -> nested overrides
    common: list[dict[str, Any]]  # nested overrides for every run: data, budget, overrides
    description: str = ""
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)
    cli_overrides: list[str] = dataclasses.field(default_factory=list)  # --set, as typed
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # variant -> what it changes, for report.md


@dataclasses.dataclass
class Run:
    variant: str
    seed: int
    dir: Path  # the run folder <out>/<variant>/seed<k>
    config: RunConfig
    needs: tuple[str, ...] = ()  # labels of the runs whose folders its settings name ("{run:v}")

    @property
    def recipe(self) -> Path:
        return self.dir.with_suffix(".yaml")

    @property
    def log_file(self) -> Path:
        return self.dir.with_suffix(".log")

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def expand_dotted(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """{"optim.lr": 0.5, "model": {"encoder.hidden_dim": 8}} -> {"optim": {"lr": 0.5}, "model": {"encoder": {...}}}.

    Nested dicts are expanded too; two spellings of the same key are an error."""
    if not isinstance(overrides, dict):
        raise TextVAEError(f"{where}: overrides must be a mapping, got {type(overrides).__name__}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if not all(parts):
            raise TextVAEError(f"{where}: malformed key {key!r}")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TextVAEError(f"{where}: key {key!r} conflicts with another override")
        value = expand_dotted(value, where) if isinstance(value, dict) else value
        leaf = parts[-1]
        if leaf in node:
            if not (isinstance(node[leaf], dict) and isinstance(value, dict)):
                raise TextVAEError(f"{where}: key {key!r} is given twice")
            value = _merge_plain(node[leaf], value, f"{where}: key {key!r}")
        node[leaf] = value
    return nested


def _merge_plain(a: dict[str, Any], b: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k in out and isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merge_plain(out[k], v, where)
        elif k in out:
            raise TextVAEError(f"{where}: {k!r} is given twice")
        else:
            out[k] = v
    return out


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any], cls: type = RunConfig,
                    where: str = "overrides", prefix: str = "") -> dict[str, Any]:
    """``values`` (a recipe dict for the dataclass ``cls``) with nested ``overrides`` applied.

    Keys are checked against ``cls``; dataclass-typed fields merge recursively, any other value is
    replaced. ``values`` is not modified."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in overrides.items():
        if key not in fields:
            raise TextVAEError(f"{where}: unknown key {prefix + key!r}; valid: {sorted(fields)}")
        sub = _section(fields[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise TextVAEError(f"{where}: {prefix + key!r} is a section; give a mapping, not {value!r}")
            out[key] = apply_overrides(out.get(key) or {}, value, sub, where, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def _section(f: dataclasses.Field) -> Optional[type]:
    """The dataclass type of a RunConfig field that is itself a section, else None."""
    factory = f.default_factory  # type: ignore[misc]
    return factory if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory) else None


def _find_file(name: str, study_dir: Path) -> Path:
    for root in (study_dir, Path.cwd(), REPO_ROOT):
        if (root / name).is_file():
            return (root / name).resolve()
    raise TextVAEError(f"base recipe {name!r} not found next to the study file, in the current directory "
                       f"or in {REPO_ROOT}")


def parse_sets(sets: list[str], where: str = "--set") -> dict[str, Any]:
    """["train.max_seconds=600", "objective.kl_schedule={name: constant}"] -> nested overrides
    (values read as YAML)."""
    flat: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TextVAEError(f"{where}: expected KEY=VALUE, got {item!r}")
        try:
            flat[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TextVAEError(f"{where}: {key}: not a YAML value ({' '.join(str(e).split())})") from None
    return expand_dotted(flat, where)


def load_study(path: str | Path, out: Optional[str] = None, seeds: Optional[list[int]] = None,
               sets: Optional[list[str]] = None) -> Study:
    """Read and check a study file; ``out`` overrides its output folder, ``seeds`` its seeds,
    ``sets`` (``KEY=VALUE`` strings) add overrides for every run after the file's."""
    path = Path(path)
    if not path.is_file():
        raise TextVAEError(f"no such study file: {path}")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TextVAEError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(spec, dict):
        raise TextVAEError(f"{path}: a study file is a mapping with keys {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(spec) - set(STUDY_KEYS))
    if unknown:
        raise TextVAEError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(STUDY_KEYS)}")
    name = str(spec.get("name") or path.stem)

    if spec.get("base") in (None, "default"):
        from textvae.tasks.runconfig import default_recipe
        base = Path(default_recipe())
    else:
        base = _find_file(str(spec["base"]), path.parent)

    seeds = spec.get("seeds", [1]) if seeds is None else seeds
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds) or len(set(seeds)) != len(seeds)):
        raise TextVAEError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")

    budget = spec.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS):
        raise TextVAEError(f"{path}: budget takes {', '.join(BUDGET_KEYS)}; got {budget!r}")
    budget_train = {BUDGET_KEYS[k]: v for k, v in budget.items() if v is not None}

    common = [{"data": expand_dotted(spec.get("data") or {}, f"{path}: data")},
              {"train": budget_train},
              expand_dotted(spec.get("overrides") or {}, f"{path}: overrides"), parse_sets(sets or [])]
    variants = spec.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise TextVAEError(f"{path}: variants must be a non-empty mapping of name -> overrides")
    checked = {}
    for vname, overrides in variants.items():
        if not VARIANT_NAME.match(str(vname)):
            raise TextVAEError(f"{path}: variant name {vname!r} is not a folder name (letters, digits, _.+=-)")
        checked[str(vname)] = expand_dotted(overrides or {}, f"{path}: variant {vname!r}")
    notes = spec.get("notes") or {}
    if not isinstance(notes, dict) or not all(isinstance(t, str) for t in notes.values()):
        raise TextVAEError(f"{path}: notes must be a mapping of variant -> text")
    if set(notes) - set(checked):
        raise TextVAEError(f"{path}: notes for unknown variant(s) {sorted(set(notes) - set(checked))}; "
                           f"valid: {', '.join(checked)}")
    out_dir = Path(out or spec.get("out") or Path("out") / name).resolve()
    return Study(name=name, path=path.resolve(), base=base, out=out_dir, seeds=seeds, variants=checked,
                 common=common, description=str(spec.get("description") or "").strip(), budget=budget,
                 cli_overrides=list(sets or []), notes={str(k): " ".join(v.split()) for k, v in notes.items()})


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan(study: Study, jobs: int = 1) -> list[Run]:
    """Every run of the study, seed-major, each with its checked configuration."""
    from textvae.tasks.runconfig import parse_run_config

    base = yaml.safe_load(study.base.read_text()) or {}
    if not isinstance(base, dict):
        raise TextVAEError(f"{study.base}: a recipe is a mapping")
    threads = max(1, _cores() // jobs)
    runs = []
    for seed in study.seeds:
        for vname, overrides in study.variants.items():
            where = f"{study.path.name}: variant {vname!r}"
            values = base
            for layer in (*study.common, overrides):
                values = apply_overrides(values, layer, where=where)
            run_dir = study.out / vname / f"seed{seed}"
            values = apply_overrides(values, {"name": run_dir.name, "out_dir": str(run_dir.parent),
                                              "train": {"seed": seed, "progress": False}}, where=where)
            needs: set[str] = set()
            values = resolve_run_references(values, study, seed, needs, where)
            if values["train"].get("threads") is None:
                values["train"]["threads"] = threads
            # Through the command line's parser, so types are checked exactly as `textvae train` does.
            with tempfile.TemporaryDirectory() as tmp:
                recipe = Path(tmp) / "recipe.yaml"
                recipe.write_text(yaml.safe_dump(values, sort_keys=False))
                try:
                    cfg, _ = parse_run_config([str(recipe)])
                except TextVAEError as e:
                    raise TextVAEError(f"{where}: {e}") from None
            runs.append(Run(vname, seed, run_dir, cfg, tuple(f"{v}/seed{seed}" for v in sorted(needs))))
    check_no_cycle(runs, study.path.name)
    return runs


def check_no_cycle(runs: list[Run], where: str) -> None:
    """Runs that need each other (``{run:v}`` both ways, or round a longer loop) could never start."""
    needs = {r.label: r.needs for r in runs}
    done: set[str] = set()

    def visit(label: str, path: list[str]) -> None:
        if label in path:
            loop = " -> ".join(path[path.index(label):] + [label])
            raise TextVAEError(f"{where}: runs that need each other ({{run:...}}) can never start: {loop}")
        if label not in done:
            for need in needs[label]:
                visit(need, path + [label])
            done.add(label)

    for label in needs:
        visit(label, [])


RUN_REFERENCE = re.compile(r"\{run:([^{}]*)\}")


def resolve_run_references(value: Any, study: Study, seed: int, needs: set[str], where: str) -> Any:
    """``value`` (a recipe dict, list or scalar) with each ``{run:VARIANT}`` in its strings replaced
    by that variant's run folder for ``seed``; the variants named are added to ``needs``."""
    def folder(match: re.Match) -> str:
        name = match.group(1)
        if name not in study.variants:
            raise TextVAEError(f"{where}: {{run:{name}}} names no variant of the study; valid: "
                               f"{', '.join(study.variants)}")
        needs.add(name)
        return str(study.out / name / f"seed{seed}")

    return map_strings(value, lambda text: RUN_REFERENCE.sub(folder, text))


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (a config dict, list or scalar) with ``fn`` applied to every string in it."""
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value


# ---- run folders -------------------------------------------------------------------------------
def finished_report(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's final test record (its presence marks a finished run), else None."""
    tests = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "test"]
    if not tests:
        return None
    # the report itself, without the log record's bookkeeping (as run_training returns it)
    return {k: v for k, v in tests[-1].items() if k not in ("split", "step", "epoch", "time")}


def run_state(run: Run) -> str:
    """``done`` (test record written), ``resume`` (a checkpoint), or ``new``."""
    from textvae.training.train import CHECKPOINT

    if finished_report(run.dir) is not None:
        return "done"
    return "resume" if (run.dir / CHECKPOINT).is_file() else "new"


def check_run_folder(run: Run) -> None:
    """A run folder holding a run of another configuration is an error (never overwritten)."""
    from textvae.training.train import config_changes

    saved = run.dir / "config.yaml"
    if not saved.is_file():
        return
    old = json.loads(json.dumps(yaml.safe_load(saved.read_text())))
    try:  # a setting added to textvae since the run was made reads as its default: the same run
        old = json.loads(json.dumps(dataclasses.asdict(from_dict(type(run.config), old))))
    except TextVAEError:
        pass  # a setting textvae no longer has: compared as saved, so it shows as a change
    # a study folder moved since: its runs' paths into it ("{run:v}") moved with it
    made_in, now_in = str(Path(old.get("out_dir") or run.dir.parent).parent), str(run.dir.parent.parent)
    old = map_strings(old, lambda text: now_in + text[len(made_in):] if text.startswith(made_in + os.sep) else text)
    changes = {k: v for k, v in config_changes(old, json.loads(json.dumps(run.config.to_dict()))).items()
               if k not in INCIDENTAL_KEYS}
    if changes:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:3])
        raise TextVAEError(f"{run.dir} was trained with another configuration ({shown}"
                           f"{'; ...' if len(changes) > 3 else ''}); delete it or choose another --out")


def _clear_unstarted(run: Run) -> None:
    """A run killed before its first checkpoint (written at step 0) cannot be resumed: start it
    again from scratch (its metrics.jsonl would otherwise keep the dead attempt's records)."""
    if run.dir.exists():
        shutil.rmtree(run.dir)


# ---- running -----------------------------------------------------------------------------------
def _train_in_process(run: Run, n: int, total: int) -> bool:
    from textvae.tasks import run_training

    try:
        with run_folder_lock(run.dir):  # held from the folder's tidying to the test report
            resume = _prepare(run)
            log.info("[%d/%d] %s: %s", n, total, run.label, "resuming" if resume else "training")
            run_training(run.config, resume=resume)
        return True
    except TextVAEError as e:  # the user's to fix (another process on the folder, a bad setting): one line
        log.error("%s not trained: %s", run.label, e)
        return False
    except Exception:  # a failed run must not stop the study; its traceback goes to the log
        log.error("%s failed:\n%s", run.label, traceback.format_exc())
        return False


def _command(run: Run, resume: bool) -> list[str]:
    return [sys.executable, "-m", "textvae.cli", "train", str(run.recipe)] + (["--resume"] if resume else [])


def _start_subprocess(run: Run, resume: bool) -> subprocess.Popen:
    env = dict(os.environ)
    threads = str(run.config.train.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **{PARENT_ENV: str(os.getpid())})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with open(run.log_file, "a") as f:
        return subprocess.Popen(_command(run, resume), stdout=f, stderr=subprocess.STDOUT, env=env)


def _prepare(run: Run) -> bool:
    """Write the run's recipe and tidy its folder; returns whether to resume."""
    state = run_state(run)
    if state == "new":
        _clear_unstarted(run)
    run.recipe.parent.mkdir(parents=True, exist_ok=True)
    run.recipe.write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
    return state == "resume"


def _finished(run: Run, ok: bool, seconds: float, n: int, total: int) -> None:
    report = finished_report(run.dir) if ok else None
    if report is None:
        log.info("[%d/%d] %s FAILED after %.0f s (see %s)", n, total, run.label, seconds,
                 run.log_file if run.log_file.is_file() else "the log above")
        return
    figs = run_figures(report)
    log.info("[%d/%d] %s done in %.0f s: NLL %.2f  KL %.2f  MI %.2f  AU %s", n, total, run.label, seconds,
             figs["nll"], figs["kl"], figs["mi"], _fmt(figs["au"], "{:.0f}"))


def execute(study: Study, runs: list[Run], jobs: int = 1, only: Optional[list[str]] = None) -> list[Run]:
    """Train the runs (of the variants ``only``, default all) that are not finished; returns those
    that failed. ``jobs == 1`` trains in this process, more run as subprocesses. A run starts once
    the runs it needs are finished. After each run the tables of the whole study are rewritten."""
    selected = [r for r in runs if not only or r.variant in only]
    todo = [r for r in selected if run_state(r) != "done"]
    log.info("study %s: %d runs, %d finished, %d to train (%s)", study.name, len(selected),
             len(selected) - len(todo), len(todo), "in this process" if jobs == 1 else f"{jobs} subprocesses at a time")
    by_label = {r.label: r for r in runs}
    pending, running, failed, n = list(todo), {}, [], 0
    try:
        while pending or running:
            while len(running) < jobs and (run := _take_ready(pending, by_label)) is not None:
                n += 1
                if jobs == 1:
                    t0 = time.perf_counter()
                    ok = _train_in_process(run, n, len(todo))
                    _done(study, runs, run, ok, time.perf_counter() - t0, n, len(todo), failed)
                    continue
                try:  # the child takes the folder's lock itself once started; a busy folder is left alone
                    with run_folder_lock(run.dir):
                        resume = _prepare(run)
                except TextVAEError as e:
                    log.error("%s not trained: %s", run.label, e)
                    _done(study, runs, run, False, 0.0, n, len(todo), failed)
                    continue
                log.info("[%d/%d] %s: %s (log: %s)", n, len(todo), run.label, "resuming" if resume else "training",
                         run.log_file)
                running[run.label] = (run, _start_subprocess(run, resume), time.perf_counter(), n)
            if not running:  # nothing can start: what is left waits on runs that will not finish here
                for run in pending:
                    log.error("%s not trained: it needs %s, which is not finished (failed, or not selected: "
                              "add its variant to --only)", run.label, ", ".join(_waiting_on(run, by_label)))
                failed += pending
                break
            time.sleep(0.2)
            for label, (run, proc, t0, k) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[label]
                _done(study, runs, run, proc.returncode == 0, time.perf_counter() - t0, k, len(todo), failed)
    except KeyboardInterrupt:
        # A child asked by SIGTERM stops after its current step with a checkpoint; wait, so that none is
        # killed mid-write. Not SIGINT: a child that got the terminal's Ctrl-C too would take a second
        # SIGINT as "stop at once" (textvae.training.signals).
        for _, proc, _, _ in running.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc, _, _ in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    return failed


def _waiting_on(run: Run, by_label: dict[str, Run]) -> list[str]:
    """The runs that ``run`` needs and that are not finished."""
    return [label for label in run.needs if run_state(by_label[label]) != "done"]


def _take_ready(pending: list[Run], by_label: dict[str, Run]) -> Optional[Run]:
    """Remove and return the first pending run whose needs are all finished (None: none is)."""
    for i, run in enumerate(pending):
        if not _waiting_on(run, by_label):
            return pending.pop(i)
    return None


def _done(study: Study, runs: list[Run], run: Run, ok: bool, seconds: float, n: int, total: int,
          failed: list[Run]) -> None:
    _finished(run, ok, seconds, n, total)
    if not ok:
        failed.append(run)
    write_outputs(study, runs, plots=False)


def run_status(run: Run, by_label: dict[str, Run]) -> tuple[str, str]:
    """(state, detail) of one run for ``--status``, from its folder alone."""
    try:
        check_run_folder(run)
    except TextVAEError as e:
        return "conflict", str(e)
    state, holder = run_state(run), lock_holder(run.dir)
    if state == "done":
        figs = run_figures(finished_report(run.dir) or {})
        return "done", (f"NLL {_fmt(figs['nll'], '{:.2f}')}  KL {_fmt(figs['kl'], '{:.2f}')}  "
                        f"MI {_fmt(figs['mi'], '{:.2f}')}  AU {_fmt(figs['au'], '{:.0f}')}  "
                        f"{_fmt(figs['train_minutes'], '{:.0f}')} min")
    valid = [r for r in read_jsonl(run.dir / "metrics.jsonl") if r.get("split") == "valid"]
    where = (f"epoch {valid[-1]['epoch']} (step {valid[-1]['step']}), lr {valid[-1].get('lr', math.nan):g}, "
             f"valid -ELBO {valid[-1].get('neg_elbo', math.nan):.2f}") if valid else "no validation yet"
    if holder is not None:
        return "training", f"pid {holder}: {where}"
    if state == "resume":
        return "stopped", f"{where}; the study resumes it"
    waiting = _waiting_on(run, by_label)
    return ("waiting", f"starts after {', '.join(waiting)}") if waiting else ("new", "")


def status_lines(runs: list[Run], only: Optional[list[str]] = None) -> list[str]:
    """``--status``: a line per run of the variants ``only`` (default all), then the count per state."""
    by_label = {r.label: r for r in runs}
    chosen = [r for r in runs if only is None or r.variant in only]
    rows = [(r.label, *run_status(r, by_label)) for r in chosen]
    width = max((len(label) for label, _, _ in rows), default=0)
    lines = [f"{label:<{width}}  {state:<8}  {detail}".rstrip() for label, state, detail in rows]
    counts = {}
    for _, state, _ in rows:
        counts[state] = counts.get(state, 0) + 1
    return lines + [", ".join(f"{n} {state}" for state, n in counts.items())]


# ---- aggregation -------------------------------------------------------------------------------
# (figure, column label, format): the table of report.md, in order.
COLUMNS = [("nll", "IW-NLL", "{:.2f}"), ("kl", "KL", "{:.2f}"), ("mi", "MI", "{:.2f}"), ("au", "AU", "{:.1f}"),
           ("ppl", "IW-PPL", "{:.2f}"), ("rec", "Rec.", "{:.2f}"), ("neg_elbo", "-ELBO", "{:.2f}"),
           ("train_minutes", "train (min)", "{:.1f}"), ("tokens_per_s", "tok/s", "{:.0f}")]
# Report keys carried into results.csv / results.json besides the table's figures.
EXTRA = ("iw_nll", "iw_ppl", "elbo_ppl", "mi_batch", "mi_dataset", "mi_batch_he2019", "mi_batch_he2019_noise_sd",
         "mi_batch_size", "true_nll", "true_mi")


def columns() -> list[tuple[str, str, str]]:
    """The table's columns: the figures above, then those of the registered metrics (their ``study_columns``)."""
    return COLUMNS + [column for name in list_metrics() for column in get_metric(name).study_columns]


def figure_keys() -> list[str]:
    """Every figure of results.csv / results.json."""
    return [key for key, _, _ in columns()] + list(EXTRA)


def run_figures(report: dict[str, Any]) -> dict[str, float]:
    """The figures of one test report. A language model has no IW-NLL: its -ELBO is its exact NLL
    (KL = 0), so NLL / PPL fall back to -ELBO / ELBO-PPL; a VAE evaluated without importance
    samples (``train.iw_samples_final 0``) has no NLL, only its bound (-ELBO). MI is the whole-set
    estimator."""
    nan = math.nan
    exact = "latent_dim" not in report  # the language model: no latent figures in its report
    figs = {"nll": report.get("iw_nll", report.get("neg_elbo", nan) if exact else nan),
            "ppl": report.get("iw_ppl", report.get("elbo_ppl", nan) if exact else nan),
            "kl": report.get("kl", nan), "mi": report.get("mi_dataset", nan), "au": report.get("au", nan),
            "rec": report.get("rec", nan), "neg_elbo": report.get("neg_elbo", nan),
            "train_minutes": report.get("train_seconds", nan) / 60.0,
            "tokens_per_s": report.get("train_tokens_per_s", nan)}
    figs.update({k: report.get(k, nan) for k in figure_keys() if k not in figs})
    return {k: float(v) for k, v in figs.items()}


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (n - 1) of the finite values; std is NaN for n < 2."""
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return mean, std, len(xs)


def aggregate(study: Study, runs: list[Run]) -> dict[str, Any]:
    """results.json's content: per variant mean / std / n of every figure, and every run's report."""
    per_run, variants = [], []
    for vname in study.variants:
        mine = [r for r in runs if r.variant == vname]
        reports = [(r, finished_report(r.dir)) for r in mine]
        done = [(r, rep) for r, rep in reports if rep is not None]
        figs = [run_figures(rep) for _, rep in done]
        stats = {}
        for key in figure_keys():
            mean, std, n = mean_std([f[key] for f in figs])
            stats[key] = {"mean": mean, "std": std, "n": n}
        variants.append({"variant": vname, "runs": len(done), "planned": len(mine), "figures": stats})
        per_run += [{"variant": r.variant, "seed": r.seed, "dir": str(r.dir),
                     "state": "done" if rep is not None else run_state(r), "report": rep} for r, rep in reports]
    reports = [r["report"] for r in per_run if r["report"]]
    setting = {k: next((rep[k] for rep in reports if k in rep), None)
               for k in ("iw_samples", "au_threshold", "latent_dim", "n_sentences")}
    return {"study": study.name, "study_file": str(study.path), "base": str(study.base), "seeds": study.seeds,
            "budget": study.budget, "mi_estimator": "mi_dataset", **setting,
            "variants": variants, "runs": per_run}


def _fmt(value: float, fmt: str) -> str:
    return fmt.format(value) if math.isfinite(value) else "–"


def cell(stats: dict[str, Any], fmt: str) -> str:
    """'mean ± std' (just the mean for a single run, '–' for none)."""
    if stats["n"] == 0:
        return "–"
    if stats["n"] == 1:
        return _fmt(stats["mean"], fmt)
    return f"{_fmt(stats['mean'], fmt)} ± {_fmt(stats['std'], fmt)}"


def markdown_table(results: dict[str, Any]) -> str:
    header = ["variant", "runs"] + [label for _, label, _ in columns()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in results["variants"]:
        cells = [v["variant"], f"{v['runs']}/{v['planned']}"] + [cell(v["figures"][k], fmt) for k, _, fmt in columns()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_runs(run_dirs: list[Path]) -> str:
    """``textvae compare``: the test figures of run folders made outside a study, as a study's table,
    one row per run, with the settings in which each differs from the first (``INCIDENTAL_KEYS``
    left out), so that a comparison says what it compares."""
    configs = [_saved_config(Path(d)) for d in run_dirs]
    header = ["run"] + [label for _, label, _ in columns()] + ["settings that differ from the first run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (run_dir, (cls, config)) in enumerate(zip(run_dirs, configs)):
        report = finished_report(Path(run_dir))
        figs = run_figures(report) if report is not None else None
        cells = ([_fmt(figs[k], fmt) for k, _, fmt in columns()] if figs is not None
                 else ["not finished"] + ["–"] * (len(columns()) - 1))
        changes = {k: v for k, v in _setting_changes(cls, configs[0][1], config).items() if k not in INCIDENTAL_KEYS}
        settings = "; ".join(f"{k} {json.dumps(v)}" for k, v in changes.items()) or ("–" if i == 0 else "none")
        lines.append("| " + " | ".join([str(run_dir), *cells, settings]) + " |")
    return "\n".join(lines)


def _saved_config(run_dir: Path) -> tuple[type, dict[str, Any]]:
    """A run's configuration class (its task's) and its config.yaml with every setting textvae has
    now (one added since the run was made reads as its default)."""
    from textvae.tasks.base import TASKS
    from textvae.tasks.runconfig import DEFAULT_TASK

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise TextVAEError(f"{run_dir}: no config.yaml here; compare takes run folders (runs/NAME)")
    values = yaml.safe_load(saved.read_text()) or {}
    cls = TASKS.get(values.get("task", DEFAULT_TASK)).config_class
    try:
        values = dataclasses.asdict(from_dict(cls, values))
    except TextVAEError:
        pass  # a setting textvae no longer has: compared as saved
    return cls, json.loads(json.dumps(values))


def _setting_changes(cls: type, a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": b's value, ...}`` where b differs from a, by section; a free-form value (a KL
    schedule, a remedy list, options) counts whole."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        x, y, sub = a.get(f.name), b.get(f.name), _section(f)
        if sub is not None and isinstance(y, dict) and isinstance(x, (dict, type(None))):
            changes.update(_setting_changes(sub, x or {}, y, f"{prefix}{f.name}."))
        elif x != y:
            changes[f"{prefix}{f.name}"] = y
    return changes


def write_csv(results: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "runs"] + [f"{k}_{s}" for k in figure_keys() for s in ("mean", "std")])
        for v in results["variants"]:
            row = [v["variant"], v["runs"]]
            for k in figure_keys():
                row += [repr(v["figures"][k]["mean"]), repr(v["figures"][k]["std"])]
            writer.writerow(row)


def _mi_noise(results: dict[str, Any]) -> str:
    """The published per-batch estimator's noise floor, √(D / 2N), when the reports have it."""
    d, n = results.get("latent_dim"), results.get("n_sentences")
    if not d or not n:
        return ""
    return (f" (its closed-form entropy beside one sampled log q(z) leaves noise of sd sqrt(D / 2N) = "
            f"{he2019_noise_sd(int(d), int(n)):.3f} nats here, D = {d:.0f}, N = {n:.0f})")


def variants_markdown(study: Study, config_class: type) -> list[str]:
    """report.md's table of what each variant sets on top of the base recipe and the study's common
    settings, with the study file's note on it: a row that differs from the others says how."""
    lines = ["## Variants", "", "Each on top of the base recipe and the settings common to the study (above).", "",
             "| variant | settings | note |", "|---|---|---|"]
    for name, overrides in study.variants.items():
        settings = "; ".join(f"`{k}: {json.dumps(v)}`" for k, v in _setting_changes(config_class, {}, overrides).items())
        cells = [name, settings or "–", study.notes.get(name, "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines + [""]


def report_markdown(study: Study, results: dict[str, Any], plot_files: dict[str, str], plot_note: str,
                    config_class: type = RunConfig) -> str:
    budget = ", ".join(f"{k} {v}" for k, v in study.budget.items() if v is not None) or "the recipe's"
    k = results.get("iw_samples")
    thr = results.get("au_threshold")
    notes = [
        f"Test-set figures of each run's best model (by validation -ELBO), mean ± sample std over seeds "
        f"({', '.join(map(str, study.seeds))}). NLL, KL, Rec. (reconstruction) and -ELBO in nats per sentence; "
        f"IW-NLL / IW-PPL with K = {k:.0f} importance samples" if k else "Test-set figures of each run's best model",
        "MI: the whole-set estimator (Li et al. 2019; log q(z) over all N test sentences) with log q(z_i|x_i) of "
        "the same sample as its first term, so that the sampling noise cancels: 0 for an x-independent posterior, "
        "never above log N; results.csv also has the per-batch estimator (mi_batch_*) and He et al.'s as "
        "published (mi_batch_he2019_*), both over groups of mi_batch_size test sentences (He et al.'s batch size; "
        "blank in reports made before it was fixed, whose groups were the evaluation batches)" + _mi_noise(results),
        f"AU: latent dimensions with Var_x E[z|x] >= {thr:g}" if thr else "AU: active units",
        "train (min): the training loop's time (resumed runs summed), without the final evaluation; "
        "tok/s: training tokens per second",
        "Language-model rows (no latent) show their exact NLL (-ELBO with KL = 0) under IW-NLL / IW-PPL",
    ]
    truth = [v for v in results["variants"] if v["figures"]["true_nll"]["n"]]
    if truth:
        f = truth[0]["figures"]
        notes.append(f"Ground truth of the synthetic test set: NLL {f['true_nll']['mean']:.2f}, "
                     f"MI {f['true_mi']['mean']:.3f} nats")
    lines = [f"# Study `{study.name}`", ""]
    if study.description:
        lines += [study.description, ""]
    sets = (f"; command-line overrides for every run: `{' '.join(study.cli_overrides)}`"
            if study.cli_overrides else "")
    lines += [f"Study file `{study.path}`; base recipe `{study.base}`; budget per run: {budget}{sets}. "
              f"Written {datetime.datetime.now().isoformat(timespec='seconds')}.", "",
              markdown_table(results), ""]
    lines += [f"- {n}." for n in notes] + [""] + variants_markdown(study, config_class)
    titles = {"curves": "Validation figures during training", "rate_distortion": "Rate-distortion (test set)",
              "nll_mi": "NLL against mutual information (test set)"}
    for key, title in titles.items():
        if key in plot_files:
            lines += [f"## {title}", "", f"![{title}]({plot_files[key]})", ""]
    if plot_note:
        lines += [plot_note, ""]
    lines += ["## Runs", "", "| variant | seed | state | folder |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['seed']} | {r['state']} | `{r['dir']}` |" for r in results["runs"]]
    return "\n".join(lines) + "\n"


def _finite_or_null(value: Any) -> Any:
    """NaN / inf -> None, so results.json is standard JSON (jq, browsers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def write_outputs(study: Study, runs: list[Run], plots: bool = True) -> dict[str, Any]:
    """results.csv, results.json and report.md in ``study.out`` (plots under ``plots/`` when asked
    and matplotlib is installed)."""
    study.out.mkdir(parents=True, exist_ok=True)
    results = aggregate(study, runs)
    (study.out / "results.json").write_text(json.dumps(_finite_or_null(results), indent=2))
    write_csv(results, study.out / "results.csv")
    plot_files, note = {}, ""
    if plots:
        try:
            from textvae import plots as plotting
            plot_files = plotting.study_plots(results, study.out / "plots")
            plot_files = {k: str(Path(p).relative_to(study.out)) for k, p in plot_files.items()}
        except TextVAEError as e:
            note = f"Plots skipped: {e}"
            log.warning(note)
    elif (study.out / "report.md").is_file():
        # Keep the figures of the last full report (they are redrawn when the study ends).
        plot_files = {p.stem: f"plots/{p.name}" for p in sorted((study.out / "plots").glob("*.png"))}
    (study.out / "report.md").write_text(report_markdown(study, results, plot_files, note, type(runs[0].config)))
    return results


# ---- command line ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit; the CLI prints TextVAEError itself
        raise TextVAEError(f"textvae study: {message}")


def run_study(path: str | Path, jobs: int = 1, out: Optional[str] = None, only: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None, sets: Optional[list[str]] = None,
              status: bool = False) -> dict[str, Any]:
    """Load, plan, train what is missing, and write the outputs; returns results.json's content.
    Raises :class:`TextVAEError` (after writing the outputs) when runs failed. ``status``: print
    each run's state instead (:func:`status_lines`), touching nothing; returns {}."""
    if jobs < 1:
        raise TextVAEError(f"--jobs must be >= 1, got {jobs}")
    study = load_study(path, out, seeds, sets)
    unknown = sorted(set(only or []) - set(study.variants))
    if unknown:
        raise TextVAEError(f"--only: unknown variant(s) {unknown}; valid: {', '.join(study.variants)}")
    runs = plan(study, jobs)
    if status:
        print("\n".join([f"study {study.name} in {study.out}:", *status_lines(runs, only)]))
        return {}
    for run in runs:
        check_run_folder(run)
    with sigterm_interrupts():  # stopped by SIGTERM, the study stops its runs too rather than orphan them
        failed = execute(study, runs, jobs, only)
    results = write_outputs(study, runs)
    log.info("study %s: results in %s", study.name, study.out)
    print(markdown_table(results))  # the command's result, on stdout where a pipe or a redirect finds it
    if failed:
        raise TextVAEError(f"{len(failed)} runs failed: "
                           f"{', '.join(r.label for r in failed)} (see the logs); re-run the study to retry them")
    return results


def main(argv: list[str]) -> None:
    """``textvae study STUDY.yaml [--jobs N] [--out DIR] [--only VARIANT ...] [--seeds K ...] [--set K=V ...]
    [--status]``."""
    ap = _Parser(prog="textvae study", description="Train variants x seeds of a recipe and aggregate them.")
    ap.add_argument("study", help="study YAML file")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (subprocesses when > 1)")
    ap.add_argument("--out", help="output folder (default: the study's `out`, else out/<name>)")
    ap.add_argument("--only", nargs="+", metavar="VARIANT", help="train only these variants")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="K", help="these seeds instead of the file's")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="sets",
                    help="overrides for every run (dotted keys, YAML values), after the file's")
    ap.add_argument("--status", action="store_true",
                    help="train nothing: say of each run whether it is done, training, stopped, waiting or new")
    args = ap.parse_args(argv)
    try:
        run_study(args.study, jobs=args.jobs, out=args.out, only=args.only, seeds=args.seeds, sets=args.sets,
                  status=args.status)
    except KeyboardInterrupt:
        log.warning("study interrupted: run the same command again to resume it")
        raise
