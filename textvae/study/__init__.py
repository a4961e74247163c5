"""One-command studies: variants x seeds of a recipe, trained, resumed, aggregated and plotted.

    textvae study ptb_main [--jobs N] [--out DIR] [--only VARIANT[/seedK] ...] [--seeds K ...]
                           [--set KEY=VALUE ...] [--status | --report] [--archive FILE]

The study is a YAML file, or the name of one packaged in ``textvae/studies`` (``ptb_main``, also
``studies/ptb_main.yaml``; ``textvae list study``).

A study file (YAML):

    name: ptb_main                           # default: the file's stem
    description: one paragraph for report.md # optional
    base: ../recipes/ptb/vae.yaml            # relative to the study file or the current directory, else
                                             # a packaged recipe's name (ptb/vae); default: synthetic
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
that run is neither finished nor selected (``--only``), or another process holds it (a run another
study or ``textvae train`` is training is left to it, not counted as failed).

A run folder made with other settings is never reused, with one exception, the budget, where it makes
the same run: a study given a larger budget trains its finished runs that their budget stopped at an
epoch's end on from their checkpoints (the figures of runs trained with that budget from their start),
and leaves those whose plateau schedule ended first as they are. A run that trained past a budget
lowered since is an error, and so is one that a step or time budget stopped within an epoch (it was
validated there, as a longer run is not), and one started from another run's weights
(``"{run:ae}/model"``) that differ from the md5 its start logged, or that the larger budget trains on.

Run ``seed k`` of variant ``v`` is an ordinary run folder ``<out>/v/seed<k>/`` next to its recipe
``<out>/v/seed<k>.yaml`` (``textvae train`` that file to redo the run by hand). Runs go seed by seed,
all variants of a seed before the next, so a partial study already has a full table. Re-running
the study skips finished runs (the test record is in their metrics.jsonl), resumes interrupted
ones from their checkpoint, restarts those that died before their first checkpoint, and refuses a
run folder trained with another configuration. ``--only`` names variants or single runs (``lm/seed3``) and
sets the order: ``--only lm/seed3 composite`` trains ``lm/seed3`` first, then ``composite``'s runs seed by
seed, each after the runs it starts from. With ``--jobs N`` runs are subprocesses
(``python -m textvae.cli train``), N at a time, each with ``OMP_NUM_THREADS`` torch threads where it
is set, else cores / N, unless the configuration sets ``train.threads``; their output goes to ``<out>/v/seed<k>.log``.

``--status`` trains nothing and writes nothing: one line per run (``--only`` and ``--seeds`` apply)
saying whether it is done (its test figures), being trained (by which process), stopped (where, and
that the study resumes it), waiting for a run it starts from, or not started; then the error that would
stop the study before it trains, if any (a setting out of range, an unknown remedy parameter, ...; not the
device or precision, which the machine that trains the study has and the one watching it may lack). ``--report`` trains
nothing either, but writes the outputs (and the archive) from the runs finished so far: the tables of
``--seeds 1 2 3`` while some of those runs are still to come, or while another command trains them. A folder
that the study would refuse to train (another configuration, ...) is an error only where the study is to
train that run; a report, or a run outside ``--only``, leaves it out of the outputs, said in a warning and as
its state ``conflict`` in report.md's runs (its archive entry counts instead where one matches).

``--archive FILE`` keeps the finished runs as figures in one JSON file (configuration, test report,
validation curves, commits; no weights) that can be committed beside the results: a run whose folder
is gone but whose entry matches its configuration counts as finished (``archived`` in ``--status``)
and is not trained again, unless a run to be trained starts from it (:mod:`textvae.study.archive`). Its
budget may differ where it makes the same run: an entry whose plateau schedule ended first stands for the
run of any budget it did not pass; one that its budget stopped (or that cannot say why it stopped:
:func:`~textvae.study.archive.stopped_at`) is trained again, as an archive keeps no weights.

``textvae compare RUN ...`` prints the same table for run folders made by hand (:func:`compare_runs`).

Outputs in ``<out>/``: ``results.csv`` (one row per variant: mean and std of each figure of the table and of
every registered metric that some run reports),
``results.json`` (the same plus every run's test report), ``report.md`` (the table and the plots
of :mod:`textvae.plots`).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

from textvae.errors import CommandParser, TextVAEError
from textvae.files import check_writable
from textvae.packaged import packaged_file
from textvae.study.archive import attach, load_archive
from textvae.study.folders import check_run_folder, finished_report, run_state
from textvae.study.report import (aggregate, columns, compare_runs, markdown_table, mean_std, report_markdown,
                                  run_figures, variants_markdown, write_outputs)
from textvae.study.runner import check_before_training, execute, select, status_lines, training_order
from textvae.config import INCIDENTAL_KEYS
from textvae.study.spec import Run, Study, apply_overrides, load_study, plan
from textvae.training.signals import sigterm_interrupts

log = logging.getLogger("textvae.study")

__all__ = ["INCIDENTAL_KEYS", "Run", "Study", "aggregate", "apply_overrides", "check_run_folder",
           "columns", "compare_runs", "execute", "finished_report", "load_study", "main", "markdown_table",
           "mean_std", "plan", "report_markdown", "run_figures", "run_state", "run_study", "status_lines",
           "variants_markdown", "write_outputs"]


def run_study(path: str | Path, jobs: int = 1, out: Optional[str] = None, only: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None, sets: Optional[list[str]] = None,
              status: bool = False, archive: Optional[str | Path] = None, report: bool = False) -> dict[str, Any]:
    """Load, plan, train what is missing, and write the outputs; returns results.json's content.
    Raises :class:`TextVAEError` (after writing the outputs) when runs failed. ``status``: print
    each run's state instead (:func:`status_lines`), touching nothing; returns {}. ``archive``: a
    JSON file of finished runs (:mod:`textvae.study.archive`), read first and written with the outputs.
    ``report``: train nothing, only write the outputs of what is finished."""
    if jobs < 1:
        raise TextVAEError(f"--jobs must be >= 1, got {jobs}")
    study = load_study(path, out, seeds, sets)
    runs = plan(study, jobs)
    unknown = [entry for entry in only or [] if entry not in study.variants and entry not in {r.label for r in runs}]
    if unknown:
        raise TextVAEError(f"--only: unknown variant(s) or run(s) {unknown}; valid: {', '.join(study.variants)}, "
                           f"or one run as VARIANT/seedK with K of the seeds ({', '.join(map(str, study.seeds))})")
    if archive is not None:
        study.archive = Path(archive)
        attach(study, runs, load_archive(study.archive))
    if status:
        print("\n".join([f"study {study.name} in {study.out}:", *status_lines(runs, only)]))
        for run in training_order(runs, select(runs, only)):  # what would stop the study before it trains
            check_before_training(run, here=False)  # --status may watch from a machine without the runs' device
        return {}
    check_outputs(study)
    check_folders(study, runs, set() if report else wanted(runs, only))
    failed = []
    if not report:
        with sigterm_interrupts():  # stopped by SIGTERM, the study stops its runs too rather than orphan them
            failed = execute(study, runs, jobs, only)
    results = write_outputs(study, runs)
    if report and not any(v["runs"] for v in results["variants"]):  # a mistyped --out, most likely
        log.warning("no run of study %s is finished in %s%s: its tables are empty", study.name, study.out,
                    " or in its archive" if study.archive is not None else " (runs kept only as figures: --archive FILE)")
    log.info("study %s: results in %s", study.name, study.out)
    print(markdown_table(results))  # the command's result, on stdout where a pipe or a redirect finds it
    if failed:
        raise TextVAEError(f"{len(failed)} run{'s' * (len(failed) > 1)} failed: "
                           f"{', '.join(r.label for r in failed)} (see the logs); re-run the study to retry them")
    return results


def check_outputs(study: Study) -> None:
    """One-line errors, before any run, for a study folder or an archive that cannot be written (the folders made
    to find out are removed: the runs' own checks may yet refuse to start)."""
    check_writable(study.out, "study folder", "--out", keep=False)
    if study.archive is not None:
        if study.archive.is_dir():
            raise TextVAEError(f"--archive {study.archive}: a folder; name a file (e.g. {study.archive}/archive.json)")
        check_writable(study.archive.parent, "archive's folder", "--archive", keep=False)


def wanted(runs: list[Run], only: Optional[list[str]]) -> set[str]:
    """The labels of the runs that ``only`` selects (:func:`select`; all by default) and of those they start
    from, theirs included: the runs a study may train."""
    by_label, found = {r.label: r for r in runs}, set()
    stack = [r.label for r in select(runs, only)]
    while stack:
        label = stack.pop()
        if label not in found:
            found.add(label)
            stack += by_label[label].needs
    return found


def check_folders(study: Study, runs: list[Run], trains: set[str]) -> None:
    """Each run's folder checked (:func:`check_run_folder`): one the study would refuse to train is an error
    where the study may train it (its label in ``trains``); elsewhere (a report, a run outside ``--only``) it is
    left out of the outputs, with a warning, and the run's archive entry counts where one matches."""
    by_label, conflicts = {r.label: r for r in runs}, []
    for run in runs:
        try:
            check_run_folder(run, by_label)
        except TextVAEError as e:
            if run.label in trains:  # never trained over
                raise
            run.conflict = str(e)
            conflicts.append(run)
            log.warning("%s left out of the study's outputs: %s", run.label, e)
    if conflicts and study.archive is not None:  # now that their folders are not the study's runs
        attach(study, conflicts, load_archive(study.archive))


def main(argv: list[str]) -> None:
    """``textvae study STUDY [--jobs N] [--out DIR] [--only VARIANT[/seedK] ...] [--seeds K ...]
    [--set K=V ...] [--status | --report] [--archive FILE]``."""
    ap = CommandParser(prog="textvae study", description="Train variants x seeds of a recipe and aggregate them.")
    ap.add_argument("study", help="study YAML file, or a packaged study's name (textvae list study)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (subprocesses when > 1)")
    ap.add_argument("--out", help="output folder (default: the study's `out`, else out/<name>)")
    ap.add_argument("--only", nargs="+", metavar="VARIANT",
                    help="train only these variants or runs (VARIANT/seedK), in this order")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="K", help="these seeds instead of the file's")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="sets",
                    help="overrides for every run (dotted keys, YAML values), after the file's")
    only_look = ap.add_mutually_exclusive_group()
    only_look.add_argument("--status", action="store_true",
                           help="train nothing: say of each run whether it is done, training, testing (its final "
                                "evaluation), stopped, waiting, new, archived (--archive) or conflict (its folder "
                                "holds another run)")
    only_look.add_argument("--report", action="store_true",
                           help="train nothing: write the outputs (tables, plots, the archive) of the runs finished "
                                "so far")
    ap.add_argument("--archive", metavar="FILE",
                    help="a JSON file of the study's finished runs (figures, no weights), to commit: its runs are "
                         "not trained again when their folders are gone; written with the outputs")
    try:
        args = ap.parse_args(argv)
    except TextVAEError as e:  # --only, --seeds and --set take several values: a study named after them is one
        taken = re.search(r"invalid int value: '([^']*)'", str(e))
        if "required: study" in str(e) or (taken and (Path(taken[1]).is_file() or packaged_file("study", taken[1]))):
            raise TextVAEError(f"{e}; the study goes first: textvae study STUDY [options]") from None
        raise
    run_study(args.study, jobs=args.jobs, out=args.out, only=args.only, seeds=args.seeds, sets=args.sets,
              status=args.status, archive=args.archive, report=args.report)
