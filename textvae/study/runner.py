"""Training a study's runs: in this process or as subprocesses, each once the runs it starts from
are finished; and ``--status``, where each run stands."""
from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import yaml

from textvae.errors import TextVAEError
from textvae.files import FolderBusy, lock_holder, run_folder_lock
from textvae.metrics import format_figure
from textvae.metrics.likelihood import IWProgress
from textvae.study.folders import (check_run_folder, check_start, clear_unstarted, finished_report, folder_changes,
                                   run_state, shown_changes)
from textvae.study.report import run_figures, write_outputs
from textvae.study.spec import Run, Study
from textvae.training.logger import read_jsonl
from textvae.training.signals import PARENT_ENV
from textvae.training.checkpoint import read_checkpoint_meta
from textvae.training.train import CHECKPOINT, IW_PROGRESS_FILE, check_precision, check_task, resolve_device

PACKAGE_PARENT = Path(__file__).resolve().parents[2]

log = logging.getLogger("textvae.study")


def _train_in_process(run: Run, n: int, total: int) -> Optional[bool]:
    """Whether the run trained to its end here; None when another process holds its folder (left to it)."""
    from textvae.tasks import run_training

    try:
        with run_folder_lock(run.dir):  # held from the folder's tidying to the test report
            resume, how = _prepare(run)
            log.info("[%d/%d] %s: %s", n, total, run.label, how)
            run_training(run.config, resume=resume)
        return True
    except FolderBusy as e:
        _left(run, e, n, total)
        return None
    except TextVAEError as e:  # the user's to fix (another process on the folder, a bad setting): one line
        log.error("%s not trained: %s", run.label, e)
        return False
    except Exception:  # a failed run must not stop the study; its traceback goes to the log
        log.error("%s failed:\n%s", run.label, traceback.format_exc())
        return False


def _left(run: Run, busy: FolderBusy, n: int, total: int) -> None:
    """Another study (or ``textvae train``) is training the run: it is theirs to finish, not a failure here."""
    log.info("[%d/%d] %s left to the process training it (%s)", n, total, run.label, busy)


def _command(run: Run, resume: bool) -> list[str]:
    return [sys.executable, "-m", "textvae.cli", "train", str(run.recipe)] + (["--resume"] if resume else [])


def _start_subprocess(run: Run, resume: bool) -> subprocess.Popen:
    env = dict(os.environ)
    threads = str(run.config.train.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **{PARENT_ENV: str(os.getpid())})
    # the subprocess imports this very textvae, wherever it was imported from (a checkout not installed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    with open(run.log_file, "a") as f:
        return subprocess.Popen(_command(run, resume), stdout=f, stderr=subprocess.STDOUT, env=env)


def _prepare(run: Run) -> tuple[bool, str]:
    """Write the run's recipe and tidy its folder; returns whether to resume, and how the log says it."""
    state = run_state(run)
    if state == "new":
        clear_unstarted(run)
    else:  # the run it starts from may have been trained again since the study started
        check_start(run)
    run.recipe.parent.mkdir(parents=True, exist_ok=True)
    run.recipe.write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
    if state == "resume" and finished_report(run.dir) is not None:
        return True, f"training on with the study's larger budget ({_budget_change(run)})"
    return state == "resume", "resuming" if state == "resume" else "training"


def _budget_change(run: Run) -> str:
    """``train.epochs: 2 -> 3``: how the study's budget differs from that of the run in its folder."""
    return shown_changes(folder_changes(run)[0])


def _finished(run: Run, ok: bool, seconds: float, n: int, total: int) -> None:
    report = finished_report(run.dir) if ok else None
    if report is None:
        log.info("[%d/%d] %s FAILED after %.0f s (see %s)", n, total, run.label, seconds,
                 run.log_file if run.log_file.is_file() else "the log above")
        return
    figs = run_figures(report)
    shown = "  ".join(f"{label} {format_figure(figs[key], fmt)}" for key, label, fmt in
                      (("nll", "NLL", "{:.2f}"), ("kl", "KL", "{:.2f}"), ("mi", "MI", "{:.2f}"), ("au", "AU", "{:.0f}")))
    log.info("[%d/%d] %s done in %.0f s: %s", n, total, run.label, seconds, shown)


def select(runs: list[Run], only: Optional[list[str]] = None) -> list[Run]:
    """The runs that ``only`` names, in its order: each entry a variant (its runs seed by seed) or one run
    (``variant/seedK``), a run named twice where first named. Default (None): every run, in the plan's
    order (seed by seed)."""
    if not only:
        return list(runs)
    chosen: dict[str, Run] = {}
    for entry in only:
        chosen.update((r.label, r) for r in runs if entry in (r.variant, r.label) and r.label not in chosen)
    return list(chosen.values())


def training_order(runs: list[Run], selected: list[Run]) -> list[Run]:
    """The runs to train for ``selected``, in the order to start them: the selected runs that are neither
    finished nor archived, in the selection's order, each preceded by the runs it starts from that have
    to be trained too (an archive holds no weights: a run that a run to be trained starts from is
    trained again)."""
    by_label = {r.label: r for r in runs}
    todo = [r for r in selected if run_state(r) != "done" and r.archived is None]
    to_train = {r.label for r in todo}
    order: dict[str, Run] = {}

    def add(run: Run) -> None:  # its needs first, and theirs (an archived run retrained may need another)
        if run.label in order:
            return
        for label in run.needs:
            if label in to_train or by_label[label].archived is not None:
                add(by_label[label])
        order[run.label] = run

    for run in todo:
        add(run)
    return list(order.values())


def _plan_line(selected: list[Run], todo: list[Run], jobs: int) -> str:
    """``2 runs, 0 finished, 3 to train (1 of them needed by the selection; 2 subprocesses at a time)``:
    runs outside the selection that a selected run starts from are counted apart, not as finished ones."""
    chosen = {r.label for r in selected}
    extra = sum(1 for r in todo if r.label not in chosen)
    finished = len(selected) - (len(todo) - extra)
    how = "in this process" if jobs == 1 else f"{jobs} subprocesses at a time"
    needed = f"{extra} of them needed by the selection; " if extra else ""
    return f"{len(selected)} run{'s' * (len(selected) != 1)}, {finished} finished, {len(todo)} to train ({needed}{how})"


def execute(study: Study, runs: list[Run], jobs: int = 1, only: Optional[list[str]] = None) -> list[Run]:
    """Train the runs that ``only`` names (:func:`select`; default all) and that are not finished, in
    :func:`training_order`; returns those that failed. ``jobs == 1`` trains in this process, more run as
    subprocesses. A run starts once the runs it needs are finished. After each run the tables of the
    whole study are rewritten."""
    selected = select(runs, only)
    todo = training_order(runs, selected)
    by_label = {r.label: r for r in runs}
    for run in todo:  # one error before anything starts rather than one failed run after another, hours later
        check_before_training(run)
    log.info("study %s: %s", study.name, _plan_line(selected, todo, jobs))
    pending, running, failed, n = list(todo), {}, [], 0
    try:
        while pending or running:
            while len(running) < jobs and (run := _take_ready(pending, by_label)) is not None:
                n += 1
                if jobs == 1:
                    t0 = time.perf_counter()
                    ok = _train_in_process(run, n, len(todo))
                    if ok is not None:
                        _done(study, runs, run, ok, time.perf_counter() - t0, n, len(todo), failed)
                    continue
                try:  # the child takes the folder's lock itself once started; a busy folder is left alone
                    with run_folder_lock(run.dir):
                        resume, how = _prepare(run)
                except FolderBusy as e:
                    _left(run, e, n, len(todo))
                    continue
                except TextVAEError as e:
                    log.error("%s not trained: %s", run.label, e)
                    _done(study, runs, run, False, 0.0, n, len(todo), failed)
                    continue
                log.info("[%d/%d] %s: %s (log: %s)", n, len(todo), run.label, how, run.log_file)
                running[run.label] = (run, _start_subprocess(run, resume), time.perf_counter(), n)
            if not running:  # nothing can start: what is left waits on runs that will not finish here
                for run in pending:
                    log.error("%s not trained: it needs %s, which is not finished (failed, trained by another "
                              "process, or not selected: add it or its variant to --only)", run.label,
                              ", ".join(_waiting_on(run, by_label)))
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


def check_before_training(run: Run, here: bool = True) -> None:
    """The checks a run makes before it reads its data (settings in range, its remedies' parameters, its
    model's parts, its task's packages; with ``here``, its device and precision on this machine, which a study
    watched from another machine need not have), as a one-line error naming it."""
    from textvae.tasks import create_task

    try:
        check_task(create_task(run.config))
    except TextVAEError as e:
        raise TextVAEError(f"{run.label}: {e}") from None
    if not here:
        return
    try:
        device = resolve_device(run.config.train.device)
    except TextVAEError as e:
        raise TextVAEError(f"{run.label}: {e} (--set train.device=cpu)") from None
    try:
        check_precision(device, run.config.train.precision)
    except TextVAEError as e:
        raise TextVAEError(f"{run.label}: {e} (--set train.precision=fp32)") from None


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
    """(state, detail) of one run for ``--status``, from its folder alone (or the study's archive,
    for a run whose folder was never made here)."""
    try:
        check_run_folder(run, by_label)
    except TextVAEError as e:
        return "conflict", str(e)
    state, holder = run_state(run), lock_holder(run.dir)
    # the archive's figures stand for a run whose folder holds none of the study's (attach): not started,
    # or finished under a smaller budget (the archive's run is then the study's run: of its budget, or one its
    # plateau schedule ended before either budget)
    archived = holder is None and run.archived is not None and (state == "new" or finished_report(run.dir) is not None)
    if state == "done" or archived:
        figs = run_figures(run.archived["report"] if archived else finished_report(run.dir) or {})
        return ("archived" if archived else "done"), (
                        f"NLL {format_figure(figs['nll'], '{:.2f}')}  KL {format_figure(figs['kl'], '{:.2f}')}  "
                        f"MI {format_figure(figs['mi'], '{:.2f}')}  AU {format_figure(figs['au'], '{:.0f}')}  "
                        f"{format_figure(figs['train_minutes'], '{:.0f}')} min")
    records = read_jsonl(run.dir / "metrics.jsonl")
    valid = [r for r in records if r.get("split") == "valid"]
    where = (f"epoch {valid[-1]['epoch']} (step {valid[-1]['step']}), lr {valid[-1].get('lr', math.nan):g}, "
             f"valid -ELBO {valid[-1].get('neg_elbo', math.nan):.2f}") if valid else \
        f"no validation yet (step {max((r.get('step', 0) for r in records), default=0)})"
    testing = bool(records) and records[-1].get("split") == "test_start"
    iw_done = IWProgress.batches_in(run.dir / IW_PROGRESS_FILE) if testing else 0
    if holder is not None and testing:
        since = time.strftime("%H:%M UTC", time.gmtime(records[-1]["time"]))
        return "testing", f"pid {holder}: the test report since {since} ({iw_done} IW batches done), after {where}"
    if holder is not None:
        return "training", f"pid {holder}: {where}"
    if state == "resume" and finished_report(run.dir) is not None:
        return "stopped", f"finished at its budget, {where}; the study's larger one trains it on ({_budget_change(run)})"
    if state == "resume":
        kept = f", in its test report ({iw_done} IW batches kept)" if testing else ""
        # an archived run's folder holds a retrain for a run that starts from it (training_order)
        when = " only for a run that starts from it (it is archived)" if run.archived is not None else ""
        return "stopped", f"{_checkpoint_position(run)}; last validation {where}{kept}; the study resumes it{when}"
    waiting = _waiting_on(run, by_label)
    return ("waiting", f"starts after {', '.join(waiting)}") if waiting else ("new", "")


def _checkpoint_position(run: Run) -> str:
    """``after step 314 (epoch 2, batch 2 next)``: where its checkpoint resumes it (a run stopped mid-epoch
    is past its last validation), as ``train --resume`` says it."""
    try:
        loop = read_checkpoint_meta(run.dir / CHECKPOINT)["loop"]
    except TextVAEError as e:
        return f"its checkpoint unreadable ({e})"
    return f"after step {loop['step']} (epoch {loop['epoch'] + 1}, batch {loop['batch_in_epoch'] + 1} next)"


def status_lines(runs: list[Run], only: Optional[list[str]] = None) -> list[str]:
    """``--status``: a line per run that ``only`` names (:func:`select`; default all), in its order, then
    the count per state."""
    by_label = {r.label: r for r in runs}
    chosen = select(runs, only)
    rows = [(r.label, *run_status(r, by_label)) for r in chosen]
    width = max((len(label) for label, _, _ in rows), default=0)
    lines = [f"{label:<{width}}  {state:<8}  {detail}".rstrip() for label, state, detail in rows]
    counts = {}
    for _, state, _ in rows:
        counts[state] = counts.get(state, 0) + 1
    return lines + [", ".join(f"{n} {state}" for state, n in counts.items())]


