"""Studies: overrides, planning, skip / resume after an interruption, aggregation, outputs."""
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from textvae import study as st
from textvae.config import RunConfig, setting_changes
from textvae.errors import TextVAEError
from textvae.metrics import IWProgress
from textvae.study.archive import code_name, stopped_at
import textvae.study.runner as runner_module
from textvae.study.runner import select, training_order
from textvae.training.logger import read_jsonl
from textvae.training.train import IW_PROGRESS_FILE
from tests.test_train import REPO

# A tiny model on 100 synthetic sentences: 5 batches per epoch, 2 epochs.
TINY = {
    "seeds": [1, 2],
    "budget": {"epochs": 2},
    "data": {"max_sentences": 100, "batch_size": 20, "eval_batch_size": 50},
    "overrides": {
        "model": {"emb_dim": 8, "latent_dim": 2, "encoder": {"hidden_dim": 16}, "decoder.hidden_dim": 16},
        "train": {"metrics_every": 5, "metrics_sentences": 50, "iw_samples_final": 5, "log_every": 2,
                  "tensorboard": False, "threads": 1},
    },
    "variants": {
        "plain": {"optim.lr": 0.003},  # dotted form
        "fb": {"objective": {"remedies": [{"name": "free_bits_li2019", "target_kl": 1.0}]}},  # nested form
    },
}
TIMING = {"train_seconds", "train_tokens_per_s", "train_minutes", "tokens_per_s", "time"}


def current_commit():
    """The commit of the textvae that runs here, as a run's source record takes it (None outside git)."""
    import textvae

    where = Path(textvae.__file__).resolve().parent
    git = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else None


def write_study(tmp_path, spec=None, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec or TINY, sort_keys=False))
    return path


def comparable(results):
    """Per-run test reports and per-variant figures without wall-clock quantities."""
    runs = {(r["variant"], r["seed"]): {k: v for k, v in r["report"].items() if k not in TIMING}
            for r in results["runs"] if r["report"] is not None}
    figures = {(v["variant"], k): stats for v in results["variants"]
               for k, stats in v["figures"].items() if k not in TIMING}
    return runs, figures


def assert_same(a, b):
    """Equal reports and aggregates up to float noise (NaN equal to NaN); labels equal exactly."""
    for part_a, part_b in zip(comparable(a), comparable(b)):
        assert part_a.keys() == part_b.keys()
        for key in part_a:
            assert part_a[key].keys() == part_b[key].keys(), key
            for k in part_a[key]:
                va, vb = part_a[key][k], part_b[key][k]
                if isinstance(vb, str):
                    assert va == vb, (key, k)
                else:
                    assert va == pytest.approx(vb, rel=1e-6, abs=1e-6, nan_ok=True), (key, k)


def test_interrupted_study_resumes_to_the_same_table(tmp_path, monkeypatch):
    path = write_study(tmp_path)
    reference = st.run_study(path, out=str(tmp_path / "ref"))
    assert [v["runs"] for v in reference["variants"]] == [2, 2]
    for name in ("results.csv", "results.json", "report.md"):
        assert (tmp_path / "ref" / name).is_file()

    # Interrupt the first run right after its end-of-epoch-1 checkpoint (of 2 epochs).
    import textvae.tasks as tasks_module
    import textvae.training.train as train_module

    real_save, real_train = train_module.save_checkpoint, tasks_module.run_training

    def save_then_interrupt(path, model, optimizer, meta, **kwargs):
        real_save(path, model, optimizer, meta, **kwargs)
        if meta["loop"]["step"] > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        st.run_study(path, out=str(tmp_path / "b"))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    runs = {r.label: r for r in st.plan(st.load_study(path, str(tmp_path / "b")))}
    assert {label: st.run_state(r) for label, r in runs.items()} == {
        "plain/seed1": "resume", "fb/seed1": "new", "plain/seed2": "new", "fb/seed2": "new"}
    reported = st.run_study(path, out=str(tmp_path / "b"), report=True)  # report.md's runs in --status's words
    assert [r["state"] for r in reported["runs"] if r["variant"] == "plain"] == ["stopped", "new"]

    calls = []

    def spy(cfg, resume=False):
        calls.append((f"{cfg.out_dir.split('/')[-1]}/{cfg.name}", resume))
        return real_train(cfg, resume)

    monkeypatch.setattr(tasks_module, "run_training", spy)
    resumed = st.run_study(path, out=str(tmp_path / "b"))
    assert calls == [("plain/seed1", True), ("fb/seed1", False), ("plain/seed2", False), ("fb/seed2", False)]
    assert_same(resumed, reference)

    # A finished study trains nothing more ...
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(tasks_module, "run_training", no_training)
    assert_same(st.run_study(path, out=str(tmp_path / "b")), reference)
    monkeypatch.setattr(tasks_module, "run_training", real_train)

    # ... and a run whose finished marker (the test record) is lost is resumed and re-evaluated.
    metrics = runs["fb/seed2"].dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(line for line in lines if '"split": "test"' not in line))
    assert st.run_state(runs["fb/seed2"]) == "resume"
    assert_same(st.run_study(path, out=str(tmp_path / "b")), reference)

    # A run folder made with another configuration is never reused.
    changed = json.loads(json.dumps(TINY))
    changed["variants"]["plain"]["optim.lr"] = 0.01
    with pytest.raises(TextVAEError, match="plain/seed1 was trained with another configuration.*optim.lr.*"
                                           "give the study file and --set the settings it was trained with"):
        st.run_study(write_study(tmp_path, changed, "changed.yaml"), out=str(tmp_path / "b"))
    # ... nor one that trained past the study's budget (under it, it would have stopped earlier)
    shorter = dict(TINY, budget={"epochs": 1})
    with pytest.raises(TextVAEError, match=r"seed1 trained past the study's budget \(train.epochs: 2 -> 1\): under it, "
                                           r"it would have stopped earlier"):
        st.run_study(write_study(tmp_path, shorter, "shorter.yaml"), out=str(tmp_path / "b"))

    # A setting added to textvae after a run was made (absent from its config.yaml) is its default:
    # the finished run is still this study's, not "another configuration".
    saved = runs["plain/seed1"].dir / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    del config["optim"]["cycle_lr_stairs"]
    saved.write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setattr(tasks_module, "run_training", no_training)
    assert_same(st.run_study(path, out=str(tmp_path / "b")), reference)


def test_subprocess_jobs_give_the_same_table(tmp_path, capsys):
    """--jobs 2 trains through `python -m textvae.cli train` subprocesses; --only limits the runs."""
    path = write_study(tmp_path)
    inproc = st.run_study(path, out=str(tmp_path / "a"), only=["fb"])
    assert "| variant | runs |" in capsys.readouterr().out  # the results table is printed on stdout
    sub = st.run_study(path, out=str(tmp_path / "b"), jobs=2, only=["fb"])
    assert [(v["variant"], v["runs"]) for v in sub["variants"]] == [("plain", 0), ("fb", 2)]
    assert_same(sub, inproc)
    assert (tmp_path / "b" / "fb" / "seed1.log").is_file()
    assert "plain | 0/2 | –" in (tmp_path / "b" / "report.md").read_text()


# ---- configuration ------------------------------------------------------------------------------
def test_dotted_and_nested_overrides_agree_and_sections_merge(tmp_path):
    spec = dict(TINY, variants={
        "dotted": {"optim.lr": 0.5, "objective.kl_schedule": {"name": "constant", "value": 0.5},
                   "model.encoder.hidden_dim": 12},
        "nested": {"optim": {"lr": 0.5}, "objective": {"kl_schedule": {"name": "constant", "value": 0.5}},
                   "model": {"encoder": {"hidden_dim": 12}}},
    })
    runs = st.plan(st.load_study(write_study(tmp_path, spec), str(tmp_path / "o")), jobs=2)
    by = {r.label: r.config for r in runs}
    a, b = by["dotted/seed1"].to_dict(), by["nested/seed1"].to_dict()
    assert {k: v for k, v in a.items() if k != "out_dir"} == {k: v for k, v in b.items() if k != "out_dir"}
    cfg = by["dotted/seed2"]
    assert cfg.optim.lr == 0.5 and cfg.optim.name == "adam", "a section merges: the recipe's optimiser stays"
    assert cfg.objective.kl_schedule == {"name": "constant", "value": 0.5}, "a free-form dict is replaced whole"
    assert (cfg.model.encoder.hidden_dim, cfg.model.decoder.hidden_dim, cfg.model.emb_dim) == (12, 16, 8)
    assert (cfg.train.seed, cfg.train.epochs, cfg.train.threads, cfg.train.progress) == (2, 2, 1, False)
    assert (cfg.name, cfg.out_dir) == ("seed2", str(tmp_path / "o" / "dotted"))
    assert cfg.data.name == "synthetic" and cfg.data.max_sentences == 100


def test_setting_changes_walk_sections_and_count_free_form_values_whole():
    old = {"optim": {"lr": 1.0, "momentum": 0.0}, "model": {"decoder": {"options": {"dilations": [1, 2]}}},
           "objective": {"remedies": [{"name": "bn_vae", "gamma": 0.7}]}, "gone": 3, "train": {"seed": 1}}
    new = {"train": {"seed": 2}, "model": {"latent_dim": 16, "decoder": {"options": {"dilations": [1, 2, 4]}}},
           "optim": {"lr": 0.5, "momentum": 0.0}, "objective": {"remedies": [{"name": "bn_vae", "gamma": 0.5}]}}
    changes = setting_changes(RunConfig, old, new)
    # in the order of RunConfig's fields, then a key it lacks; options and remedies as whole values
    assert changes == {
        "model.latent_dim": (None, 16),
        "model.decoder.options": ({"dilations": [1, 2]}, {"dilations": [1, 2, 4]}),
        "objective.remedies": ([{"name": "bn_vae", "gamma": 0.7}], [{"name": "bn_vae", "gamma": 0.5}]),
        "optim.lr": (1.0, 0.5),
        "train.seed": (1, 2),
        "gone": (3, None)}
    assert list(changes) == ["model.latent_dim", "model.decoder.options", "objective.remedies", "optim.lr",
                             "train.seed", "gone"]
    assert setting_changes(RunConfig, new, new) == {}


def test_compare_refuses_runs_of_two_tasks(tmp_path):
    from textvae.dialogue.config import CVAERunConfig
    from textvae.study.report import compare_runs

    for name, cfg in (("vae", RunConfig()), ("cvae", CVAERunConfig())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    with pytest.raises(TextVAEError, match=f"^compare takes runs of one task: {tmp_path / 'vae'} is a sentences run, "
                                           f"{tmp_path / 'cvae'} a dialogue run$"):
        compare_runs([tmp_path / "vae", tmp_path / "cvae"])


def test_a_larger_budget_trains_the_study_s_finished_runs_on_to_the_figures_of_a_fresh_run(tmp_path, monkeypatch):
    import textvae.tasks as tasks_module

    one = dict(TINY, seeds=[1], variants={"plain": {"optim.lr": 0.003}})
    st.run_study(write_study(tmp_path, one), out=str(tmp_path / "a"))
    longer = write_study(tmp_path, dict(one, budget={"epochs": 3}), "longer.yaml")
    fresh = st.run_study(longer, out=str(tmp_path / "fresh"), archive=tmp_path / "archive.json")
    (run,) = st.plan(st.load_study(longer, str(tmp_path / "a")))
    assert st.run_state(run) == "resume"
    # an archive that holds the run of the larger budget stands for it: nothing to train, said so
    from textvae.study.archive import attach, load_archive

    study = st.load_study(longer, str(tmp_path / "a"))
    (archived,) = st.plan(study)
    attach(study, [archived], load_archive(tmp_path / "archive.json"))
    assert archived.archived is not None and training_order([archived], [archived]) == []
    assert st.status_lines([archived])[0].split()[:2] == ["plain/seed1", "archived"]
    (line, _) = st.status_lines([run])
    assert re.search(r"plain/seed1 +stopped +finished at its budget, epoch 2 .*; the study's larger one trains it on "
                     r"\(train.epochs: 2 -> 3\)", line), line

    calls, real_train = [], tasks_module.run_training

    def spy(cfg, resume=False):
        calls.append(resume)
        return real_train(cfg, resume)

    monkeypatch.setattr(tasks_module, "run_training", spy)
    trained_on = st.run_study(longer, out=str(tmp_path / "a"))
    assert calls == [True]
    assert_same(trained_on, fresh)  # resumed exactly: the run a 3-epoch budget makes from its start
    assert st.run_state(run) == "done"


def test_a_run_its_step_budget_stopped_within_an_epoch_is_a_conflict_when_killed_in_its_test_report_too(tmp_path):
    """Validated where its step budget stopped it, as a run of a larger budget is not: finished or not (killed
    in its test report, whose records the log then lacks), training it on would not make that run."""
    spec = dict(TINY, seeds=[1], budget={"epochs": 2, "max_steps": 3}, variants={"plain": {}})
    st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))
    longer = write_study(tmp_path, dict(spec, budget={"epochs": 2, "max_steps": 8}), "longer.yaml")
    (run,) = st.plan(st.load_study(longer, str(tmp_path / "out")))
    log = run.dir / "metrics.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["split"] == "test_start")
    for kept in (lines, lines[:cut]):
        log.write_text("".join(kept))
        assert st.run_state(run) == ("done" if kept is lines else "resume")
        with pytest.raises(TextVAEError, match=r"plain/seed1 stopped at its budget within an epoch \(train.max_steps: "
                                               r"3 -> 8\) and was validated there"):
            st.run_study(longer, out=str(tmp_path / "out"))


def test_a_finished_run_whose_source_the_larger_budget_trains_on_is_a_conflict_without_its_checkpoint_too(tmp_path):
    """Finished with its checkpoint deleted (to save disk), a run started from another's weights still started
    from them: said before anything trains, not never (a source trained on beside a run it did not start).
    A source whose folder is gone is trained again first, from its start: on one machine to the same weights,
    which the run's start checks (its md5) when it next resumes or is checked."""
    spec = dict(TINY, seeds=[1], variants={"ae": {}, "vae": {"model.encoder_from": "{run:ae}/model"}})
    st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))
    (tmp_path / "out" / "vae" / "seed1" / "checkpoint.safetensors").unlink()
    longer = write_study(tmp_path, dict(spec, budget={"epochs": 3}), "longer.yaml")
    with pytest.raises(TextVAEError, match=r"vae/seed1 started from ae/seed1, which the study's larger budget trains on"):
        st.run_study(longer, out=str(tmp_path / "out"))
    lines = st.status_lines(st.plan(st.load_study(longer, str(tmp_path / "out"))))
    assert [line.split()[:2] for line in lines[:-1]] == [["ae/seed1", "stopped"], ["vae/seed1", "conflict"]]
    shutil.rmtree(tmp_path / "out" / "ae" / "seed1")
    st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))  # ae trained again, vae kept
    lines = st.status_lines(st.plan(st.load_study(write_study(tmp_path, spec), str(tmp_path / "out"))))
    assert [line.split()[:2] for line in lines[:-1]] == [["ae/seed1", "done"], ["vae/seed1", "done"]]


def test_a_study_stopped_while_a_run_starts_says_the_study_resumes_it(tmp_path, monkeypatch, capsys):
    """Not the stopped run's own hint (train's: start it again, without --resume): a study has no --resume."""
    import textvae.training.train as loop
    from textvae.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "native_kernels_used", interrupted)
    with pytest.raises(SystemExit):
        main(["study", str(write_study(tmp_path, dict(TINY, seeds=[1], variants={"v": {}}))), "--out",
              str(tmp_path / "out")])
    assert capsys.readouterr().err.strip().endswith(
        "textvae: interrupted; the same command resumes it (finished runs are kept, stopped ones resume)")


def test_validated_here_reads_the_checkpoint_else_the_log(tmp_path):
    from textvae.training.train import LoopState, validated_here

    def log(*records):
        path = tmp_path / "metrics.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    assert validated_here(LoopState(step=3, validated_step=3), tmp_path / "absent.jsonl")  # the log is not read
    assert not validated_here(LoopState(step=3, validated_step=2), log({"split": "valid", "step": 3}))
    # a checkpoint written before textvae recorded it: the log's validation at its step
    assert validated_here(LoopState(step=3), log({"split": "train", "step": 3}, {"split": "valid", "step": 3}))
    assert not validated_here(LoopState(step=3), log({"split": "valid", "step": 2},
                                                     {"split": "valid_metrics", "step": 3}))


def test_a_run_started_from_a_run_the_larger_budget_trains_on_is_a_conflict(tmp_path):
    """Its start, the other run's weights, would be other weights now."""
    spec = dict(TINY, seeds=[1], variants={"ae": {}, "vae": {"model.encoder_from": "{run:ae}/model"}})
    st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))
    longer = write_study(tmp_path, dict(spec, budget={"epochs": 3}), "longer.yaml")
    with pytest.raises(TextVAEError, match=r"vae/seed1 started from ae/seed1, which the study's larger budget "
                                           r"trains on, so that it would start from other weights now"):
        st.run_study(longer, out=str(tmp_path / "out"))
    lines = st.status_lines(st.plan(st.load_study(longer, str(tmp_path / "out"))))
    assert [line.split()[:2] for line in lines[:-1]] == [["ae/seed1", "stopped"], ["vae/seed1", "conflict"]]
    # weights changed since the run started from them (trained on by hand, trained again): the md5 its start logged
    weights = tmp_path / "out" / "ae" / "seed1" / "model" / "model.safetensors"
    (start,) = [r for r in read_jsonl(tmp_path / "out" / "vae" / "seed1" / "metrics.jsonl") if r["split"] == "data"]
    assert start["encoder_from_md5"] == hashlib.md5(weights.read_bytes()).hexdigest()
    st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))  # unchanged: nothing to do
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(TextVAEError, match=r"vae/seed1 started from the weights in .*ae/seed1/model, which have changed "
                                           r"since \(md5 \w{8} then, \w{8} now"):
        st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))


@pytest.mark.parametrize("state, saved, budget, validated, verdict", [
    ({"epoch": 2}, {"epochs": 2}, {"epochs": 3}, True, "trains"),  # stopped by its epochs: more train it on
    ({"epoch": 2, "done": True}, {"epochs": 2}, {"epochs": 3}, True, "stops"),  # its plateau schedule ended
    ({"epoch": 5, "done": True}, {"epochs": 100}, {"epochs": 5}, True, "stops"),  # ended at the lower budget's end
    ({"epoch": 5, "done": True}, {"epochs": 100}, {"epochs": 4}, True, "past"),  # would have stopped an epoch earlier
    ({"epoch": 4, "batch_in_epoch": 1}, {"epochs": 100}, {"epochs": 4}, True, "past"),  # a step into the 5th epoch
    ({"epoch": 1, "step": 50}, {"max_steps": 50}, {"max_steps": None}, True, "trains"),  # unbounded now
    ({"epoch": 1, "step": 50}, {"max_steps": 50, "epochs": 2}, {"max_steps": 50, "epochs": 3}, True, "stops"),
    ({"epoch": 1, "step": 50}, {"max_steps": None}, {"max_steps": 40}, True, "past"),
    ({"train_seconds": 61.0}, {"max_seconds": 60.0}, {"max_seconds": 120.0}, True, "trains"),
    # a time budget is overrun by the step that crosses it: not past a budget that did not change
    ({"train_seconds": 61.0}, {"max_seconds": 60.0, "epochs": 2}, {"max_seconds": 60.0, "epochs": 3}, True,
     "stops"),
    ({"train_seconds": 61.0}, {"max_seconds": 120.0}, {"max_seconds": 60.0}, True, "past"),
    # stopped by its step or time budget within an epoch, and validated there as a longer run is not
    ({"step": 3, "batch_in_epoch": 3}, {"max_steps": 3}, {"max_steps": 8}, True, "mid_epoch"),
    ({"train_seconds": 61.0, "batch_in_epoch": 2}, {"max_seconds": 60.0}, {"max_seconds": 120.0}, True,
     "mid_epoch"),
    ({"step": 3, "batch_in_epoch": 3}, {"max_steps": 3}, {"max_steps": 8}, False, "trains"),  # stopped by a signal
])
def test_budget_verdict(state, saved, budget, validated, verdict):
    from textvae.config import TrainConfig
    from textvae.training.train import LoopState, budget_verdict

    tc = TrainConfig(**{"epochs": 100, **budget})
    assert budget_verdict(LoopState(**state), {"epochs": 100, **saved}, tc, validated) == verdict


def test_a_finished_run_s_line_shows_a_figure_it_lacks_as_a_dash(monkeypatch, caplog):
    run = SimpleNamespace(dir=Path("runs/v/seed1"), label="v/seed1")
    monkeypatch.setattr(runner_module, "finished_report", lambda folder: {})
    monkeypatch.setattr(runner_module, "run_figures",
                        lambda report: {"nll": math.nan, "kl": 1.234, "mi": math.nan, "au": 3.0})
    with caplog.at_level(logging.INFO, logger="textvae"):
        runner_module._finished(run, True, 16.2, 1, 2)
    assert "[1/2] v/seed1 done in 16 s: NLL –  KL 1.23  MI –  AU 3" in caplog.text


def test_threads_are_split_between_jobs(tmp_path, monkeypatch):
    spec = json.loads(json.dumps(TINY))
    del spec["overrides"]["train"]["threads"]
    import textvae.study.spec as spec_module

    monkeypatch.setattr(spec_module, "_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = write_study(tmp_path, spec)
    assert {r.config.train.threads for r in st.plan(st.load_study(path), jobs=4)} == {2}
    assert {r.config.train.threads for r in st.plan(st.load_study(path), jobs=16)} == {1}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice, as torch would take it
    assert {r.config.train.threads for r in st.plan(st.load_study(path), jobs=4)} == {3}


@pytest.mark.parametrize("change, message", [
    ({"variants": {"a": {"optim.lrr": 1}}}, r"variant 'a': unknown key optim.lrr \(did you mean optim.lr\?\); valid in optim: "),
    ({"variants": {"a": {"optim": 3}}}, r"'optim' is a section"),
    ({"variants": {"a": {"optim.lr": "fast"}}}, r"variant 'a'"),
    ({"variants": {"a/b": {}}}, r"not a folder name"),
    ({"variants": {}}, r"non-empty mapping"),
    ({"variants": {"a": {"optim.lr": 1, "optim": {"lr": 2}}}}, r"given twice"),
    ({"seeds": [1, 1]}, r"distinct integers"),
    ({"budget": {"hours": 1}}, r"budget takes"),
    ({"base": "no/such/recipe.yaml"}, r"base recipe 'no/such/recipe.yaml' not found"),
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"notes": {"plian": "typo"}}, r"notes for unknown variant\(s\) \['plian'\]; valid: plain, fb"),
    ({"notes": {"plain": ["a", "list"]}}, r"notes must be a mapping of variant -> text"),
])
def test_bad_study_files_are_clear_errors(tmp_path, change, message):
    spec = dict(TINY, **change)
    with pytest.raises(TextVAEError, match=message):
        st.plan(st.load_study(write_study(tmp_path, spec)))


@pytest.mark.parametrize("variant, message", [
    ({"objective.remedies": [{"name": "bn_vae", "gama": 0.7}]}, r"bad/seed1: remedy 'bn_vae': unknown parameter"),
    ({"optim.lr": -1}, r"bad/seed1: optim.lr must be"),
])
def test_a_bad_variant_is_an_error_before_any_run_trains(tmp_path, monkeypatch, variant, message):
    import textvae.tasks as tasks_module

    monkeypatch.setattr(tasks_module, "run_training", lambda *a, **kw: pytest.fail("a run trained"))
    spec = dict(TINY, seeds=[1], variants={"plain": {}, "bad": variant})
    with pytest.raises(TextVAEError, match=message):
        st.run_study(write_study(tmp_path, spec), out=str(tmp_path / "out"))


def test_a_seconds_budget_sets_every_runs_max_seconds(tmp_path):
    path = write_study(tmp_path, dict(TINY, budget={"seconds": 60}))
    assert {r.config.train.max_seconds for r in st.plan(st.load_study(path))} == {60}


def test_command_line_seeds_and_sets(tmp_path):
    """--seeds replaces the file's seeds; --set applies to every run after the file's overrides
    (its YAML values typed) and before the variant's, which still win."""
    path = write_study(tmp_path)
    study = st.load_study(path, seeds=[7], sets=["train.iw_samples_final=50", "optim.lr=0.5",
                                                 "objective.kl_schedule={name: linear, warmup_steps: 10}"])
    runs = {r.label: r.config for r in st.plan(study)}
    assert set(runs) == {"plain/seed7", "fb/seed7"}
    assert {c.train.iw_samples_final for c in runs.values()} == {50}
    assert runs["fb/seed7"].optim.lr == 0.5 and runs["plain/seed7"].optim.lr == 0.003
    assert runs["fb/seed7"].objective.kl_schedule == {"name": "linear", "warmup_steps": 10}
    report = st.report_markdown(study, {"variants": [], "runs": []}, {}, "")
    assert "train.iw_samples_final=50" in report
    # the study file's own settings of every run are in the report too
    assert ("(the study file's `data` and `overrides`): `data.batch_size: 20`; `data.eval_batch_size: 50`; "
            "`data.max_sentences: 100`; `model.emb_dim: 8`;") in report and "`train.threads: 1`" in report


@pytest.mark.parametrize("argv, message", [
    (["missing.yaml"], r"no such study: missing.yaml \(neither a file nor a packaged study; packaged: architectures_ptb_short"),
    (["{study}", "--jobs", "0"], "--jobs must be >= 1"),
    (["{study}", "--only", "nope"], r"unknown variant\(s\) or run\(s\) \['nope'\]; valid: plain, fb, or one run"),
    (["{study}", "--only", "fb/seed3"], r"\['fb/seed3'\].* VARIANT/seedK with K of the seeds \(1, 2\)"),
    (["{study}", "--frobnicate"], "unrecognized arguments"),
    (["{study}", "--set", "train.iw_samples_final"], "expected KEY=VALUE"),
    (["{study}", "--seeds", "1", "1"], r"^--seeds must be a non-empty list of distinct integers, got \[1, 1\]$"),
    (["{study}", "--set", "train.colour=red"], r"^--set: unknown key train.colour; valid in train: "),
    (["{study}", "--set", "train.max_steps=x"], r"variant 'plain' \(with --set train.max_steps=x\): train.max_steps "
                                                r"must be an integer or null, got 'x'$"),
    ([], "required"),
])
def test_command_line_errors(tmp_path, argv, message):
    path = write_study(tmp_path)
    with pytest.raises(TextVAEError, match=message):
        st.main([a.format(study=path) for a in argv])


# ---- aggregation and outputs --------------------------------------------------------------------
def fake_run(tmp_path, variant, seed, report, curve):
    """A finished run folder: periodic validation records, the test record, and a last line cut
    short (as by a kill), which readers must skip."""
    run = st.Run(variant, seed, tmp_path / "out" / variant / f"seed{seed}", RunConfig())
    run.dir.mkdir(parents=True)
    records = [{"split": "valid_metrics", "step": s, "epoch": 0, **v} for s, v in curve]
    records.append({"split": "test", "step": 30, "epoch": 1, **report})
    (run.dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"split": "tr')
    return run


def test_aggregation_matches_a_brute_force_computation(tmp_path):
    reports = {
        ("vae", 1): {"iw_nll": 100.0, "iw_ppl": 90.0, "kl": 1.0, "rec": 99.5, "neg_elbo": 100.5, "mi_dataset": 0.5,
                     "mi_batch": 0.4, "au": 2.0, "train_seconds": 60.0, "train_tokens_per_s": 1000.0,
                     "iw_samples": 500.0, "au_threshold": 0.01},
        ("vae", 2): {"iw_nll": 102.0, "iw_ppl": 95.0, "kl": 3.0, "rec": 100.0, "neg_elbo": 103.0, "mi_dataset": 1.5,
                     "mi_batch": 1.0, "au": 4.0, "train_seconds": 120.0, "train_tokens_per_s": 2000.0},
        ("vae", 3): {"iw_nll": 101.0, "iw_ppl": 93.0, "kl": 2.0, "rec": 99.0, "neg_elbo": 101.0, "mi_dataset": 1.0,
                     "mi_batch": 0.7, "au": 3.0, "train_seconds": 90.0, "train_tokens_per_s": 1500.0},
        ("lm", 1): {"rec": 98.0, "kl": 0.0, "neg_elbo": 98.0, "elbo_ppl": 88.0, "train_seconds": 30.0,
                    "train_tokens_per_s": 3000.0},
    }
    curve = [(10, {"kl": 1.0, "mi_dataset": 0.2, "au": 1, "neg_elbo": 110.0}),
             (20, {"kl": 2.0, "mi_dataset": 0.4, "au": 2, "neg_elbo": 105.0})]
    runs = [fake_run(tmp_path, v, s, rep, curve) for (v, s), rep in reports.items()]
    runs.append(st.Run("lm", 2, tmp_path / "out" / "lm" / "seed2", RunConfig()))  # not trained yet
    study = st.Study(name="fake", path=tmp_path / "fake.yaml", base=tmp_path / "base.yaml", out=tmp_path / "out",
                     seeds=[1, 2, 3], variants={"vae": {}, "lm": {}}, common=[], budget={"epochs": 3})
    results = st.write_outputs(study, runs)

    vae = next(v for v in results["variants"] if v["variant"] == "vae")["figures"]
    for key, report_key in [("nll", "iw_nll"), ("kl", "kl"), ("mi", "mi_dataset"), ("au", "au"), ("ppl", "iw_ppl"),
                            ("rec", "rec"), ("neg_elbo", "neg_elbo"), ("mi_batch", "mi_batch")]:
        values = [reports[("vae", s)][report_key] for s in (1, 2, 3)]
        assert vae[key]["mean"] == pytest.approx(statistics.mean(values)), key
        assert vae[key]["std"] == pytest.approx(statistics.stdev(values)), key
        assert vae[key]["n"] == 3
    assert vae["train_minutes"]["mean"] == pytest.approx(1.5)
    lm = next(v for v in results["variants"] if v["variant"] == "lm")
    assert (lm["runs"], lm["planned"]) == (1, 2)
    assert lm["figures"]["nll"]["mean"] == 98.0 and math.isnan(lm["figures"]["nll"]["std"])
    assert lm["figures"]["ppl"]["mean"] == 88.0 and lm["figures"]["mi"]["n"] == 0

    with open(tmp_path / "out" / "results.csv") as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert float(rows["vae"]["iw_nll_mean"]) == pytest.approx(101.0)
    assert float(rows["vae"]["kl_std"]) == pytest.approx(1.0)
    saved = json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=pytest.fail)  # no NaN
    assert saved["variants"][0]["figures"]["au"]["mean"] == 3.0 and saved["variants"][1]["figures"]["mi"]["mean"] is None

    report = (tmp_path / "out" / "report.md").read_text()
    assert "| vae | 3/3 | 101.00 ± 1.00 | 2.00 ± 1.00 | 1.00 ± 0.50 | 3.0 ± 1.0 | 92.67 ± 2.52 |" in report
    assert "| lm | 1/2 | 98.00 | 0.00 | – | – | 88.00 |" in report
    assert "K = 500" in report and "whole-set estimator" in report
    for name in ("curves", "rate_distortion", "nll_mi"):
        png = tmp_path / "out" / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{name}.png)" in report


def test_run_curves_keep_the_last_record_of_a_replayed_step():
    from textvae.plots import run_curves

    records = [{"split": "valid", "step": 5, "kl": 7.0, "mi_batch": 0.1, "au": 1, "neg_elbo": 50.0},
               {"split": "valid_metrics", "step": 5, "kl": 1.0, "mi_dataset": 0.3, "au": 1, "neg_elbo": 40.0},
               {"split": "valid_metrics", "step": 10, "kl": 9.0, "mi_dataset": 0.3, "au": 1, "neg_elbo": 40.0},
               {"split": "valid_metrics", "step": 10, "kl": 2.0, "mi_dataset": 0.5, "au": 2, "neg_elbo": 39.0}]
    curves = run_curves(records)
    assert curves["KL (nats)"] == {5: 1.0, 10: 2.0}, "periodic records are preferred, the last one of a step wins"
    assert curves["MI (nats)"] == {5: 0.3, 10: 0.5}
    only_epochs = run_curves(records[:1])
    assert only_epochs["MI (nats)"] == {5: 0.1} and only_epochs["-ELBO (nats, NLL bound)"] == {5: 50.0}


def test_missing_matplotlib_skips_plots_with_a_note(tmp_path, monkeypatch):
    import textvae.plots as plots

    def no_matplotlib(*args):
        raise TextVAEError("plots need matplotlib: pip install 'textvae[plot]'")

    monkeypatch.setattr(plots, "_figure", no_matplotlib)
    run = fake_run(tmp_path, "vae", 1, {"iw_nll": 1.0, "kl": 1.0, "rec": 1.0, "neg_elbo": 2.0, "mi_dataset": 0.1},
                   [(10, {"kl": 1.0})])
    study = st.Study(name="fake", path=tmp_path / "f.yaml", base=tmp_path / "b.yaml", out=tmp_path / "out",
                     seeds=[1], variants={"vae": {}}, common=[])
    st.write_outputs(study, [run])
    assert "Plots skipped: plots need matplotlib" in (tmp_path / "out" / "report.md").read_text()


def test_nll_mi_plot_keeps_points_in_view_and_apart():
    """Five clustered variants: no overprinted labels (legend only, one marker each); a true NLL far
    below does not stretch the axis but is named with its value; true NLL and true MI differ in style."""
    pytest.importorskip("matplotlib")
    from textvae.plots import draw_nll_mi

    def figure(mean: float, n: int = 1) -> dict:
        return {"mean": mean, "std": float("nan"), "n": n}

    none = figure(float("nan"), 0)
    variants = [{"variant": f"v{i}", "figures": {"mi": figure(2.0 + 0.01 * i), "nll": figure(80.0 + 0.01 * i),
                                                 "true_nll": figure(40.0), "true_mi": figure(2.02)}}
                for i in range(5)]
    variants.append({"variant": "lm", "figures": {"mi": none, "nll": figure(80.02), "true_nll": none, "true_mi": none}})
    ax = draw_nll_mi(variants).axes[0]
    assert not ax.texts  # no labels beside the points
    assert ax.get_ylim()[0] > 79  # the true NLL at 40 would put every point at the top
    legend = {t.get_text(): h for h, t in zip(ax.figure.legends[0].legend_handles, ax.figure.legends[0].texts)}
    assert "true NLL = 40.00 (below the view)" in legend and "true MI" in legend and "lm (no latent)" in legend
    assert legend["true NLL = 40.00 (below the view)"].get_linestyle() != legend["true MI"].get_linestyle()
    assert len({c.lines[0].get_marker() for c in ax.containers}) == 5  # each errorbar's data line


def test_nll_falls_back_to_the_bound_only_for_the_language_model():
    lm = {"rec": 90.0, "kl": 0.0, "neg_elbo": 90.0, "elbo_ppl": 110.0}
    vae = {**lm, "kl": 2.0, "neg_elbo": 92.0, "au": 3.0, "latent_dim": 32.0}  # iw_samples_final 0
    assert st.run_figures(lm)["nll"] == 90.0 and st.run_figures(lm)["ppl"] == 110.0
    assert math.isnan(st.run_figures(vae)["nll"]) and math.isnan(st.run_figures(vae)["ppl"])
    assert st.run_figures({**vae, "iw_nll": 91.0, "iw_ppl": 105.0})["nll"] == 91.0
    # a per-dimension list, or an archive's null, is no figure; anything else that is no number is an error
    figures = st.run_figures({**vae, "kl_per_dim": [0.5, 1.5], "iw_nll_mc_se": None})
    assert math.isnan(figures["kl_per_dim"]) and math.isnan(figures["iw_nll_mc_se"])
    with pytest.raises(ValueError):
        st.run_figures({**vae, "au": "three"})


# ---- one writer per run folder ------------------------------------------------------------------
@contextlib.contextmanager
def held_elsewhere(run_dir):
    """``run_dir`` held by another process (a child holding :func:`run_folder_lock` until its stdin
    closes); yields the child."""
    from tests.test_train import REPO

    code = ("import sys; from pathlib import Path; from textvae.files import run_folder_lock\n"
            "with run_folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert child.stdout.readline().strip() == "held"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=30)


def test_run_folder_lock_keeps_a_second_process_out_until_the_first_ends(tmp_path):
    from textvae.files import run_folder_lock

    run_dir = tmp_path / "runs" / "x"
    with held_elsewhere(run_dir) as child:
        with pytest.raises(TextVAEError, match=rf"{run_dir} is being written by another process \(pid {child.pid}\)"):
            with run_folder_lock(run_dir):
                pass
    with run_folder_lock(run_dir), run_folder_lock(run_dir):  # free again; re-entrant in one process
        assert not run_dir.exists()  # holding a folder does not make it
    with held_elsewhere(run_dir) as child:
        child.kill()  # a killed holder leaves no stale lock
        child.wait(timeout=30)
        with run_folder_lock(run_dir):
            pass


@pytest.mark.parametrize("jobs", [1, 2])
def test_study_leaves_a_run_folder_held_by_another_process_alone(tmp_path, caplog, jobs):
    """A study started twice must not clear or resume a run the other one is training, nor count it failed;
    a run that starts from it cannot start here."""
    variants = {"plain": {}, "after": {"model.encoder_from": "{run:plain}/model"}}
    path = write_study(tmp_path, dict(TINY, seeds=[1], variants=variants))
    run = st.plan(st.load_study(path, str(tmp_path / "out")), jobs)[0]
    run.dir.mkdir(parents=True)
    record = json.dumps({"split": "train", "step": 0, "loss": 1.0}) + "\n"  # the other process's; no checkpoint yet
    (run.dir / "metrics.jsonl").write_text(record)
    with caplog.at_level(logging.INFO), held_elsewhere(run.dir), \
            pytest.raises(TextVAEError, match="^1 run failed: after/seed1 "):
        st.run_study(path, out=str(tmp_path / "out"), jobs=jobs)
    assert (run.dir / "metrics.jsonl").read_text() == record
    assert f"plain/seed1 left to the process training it ({run.dir} is being written by another process" in caplog.text
    assert "after/seed1 not trained: it needs plain/seed1, which is not finished" in caplog.text


@pytest.mark.parametrize("sig, code", [
    (signal.SIGTERM, 143),
    pytest.param(signal.SIGKILL, -signal.SIGKILL, marks=pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")),
])
def test_a_stopped_study_stops_its_subprocess_runs_with_checkpoints(tmp_path, sig, code):
    """A study killed with SIGTERM (`kill PID`) passes the stop on; killed with SIGKILL it cannot, and
    the kernel sends its runs SIGTERM instead. Either way its runs stop after their current step with
    a checkpoint, and no orphan goes on writing their folders."""
    from tests.test_resume import checkpoint_step, start
    from textvae.files import lock_holder, run_folder_lock

    spec = dict(TINY, budget={"epochs": 500}, variants={"plain": {}})
    path, out = write_study(tmp_path, spec), tmp_path / "out"
    runs = st.plan(st.load_study(path, str(out)), 2)
    study = start(["study", str(path), "--jobs", "2", "--out", str(out)], tmp_path / "log.txt")
    try:
        deadline = time.monotonic() + 240
        while min(checkpoint_step(r.dir / "checkpoint.safetensors") for r in runs) < 1:
            assert study.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()
            time.sleep(0.05)
        children = [lock_holder(r.dir) for r in runs]
        assert all(pid and pid.isdigit() and int(pid) != study.pid for pid in children)
        study.send_signal(sig)
        assert study.wait(timeout=120) == code
    finally:
        study.kill()
    deadline = time.monotonic() + 120
    for run in runs:
        while lock_holder(run.dir) is not None:  # its child still running
            assert time.monotonic() < deadline, f"{run.label}: an orphan trains on"
            time.sleep(0.05)
        with run_folder_lock(run.dir):
            assert 1 <= checkpoint_step(run.dir / "checkpoint.safetensors") < 500 * 5
        assert "SIGTERM: training stops after the current step" in run.log_file.read_text()


def test_only_names_variants_or_runs_and_sets_the_order(tmp_path, capsys, monkeypatch):
    """--only takes variants and single runs, in the order given (a run named twice where first named); a
    chosen run that another chosen run starts from is trained right before it (ae/seed1 before vae/seed1)."""
    spec = dict(TINY, variants={"ae": {}, "vae": {"model.encoder_from": "{run:ae}/model"}, "other": {}})
    path, out = write_study(tmp_path, spec), tmp_path / "out"
    runs = st.plan(st.load_study(path, str(out)))
    only = ["other/seed2", "vae/seed1", "other", "ae", "other/seed2"]
    chosen = ["other/seed2", "vae/seed1", "other/seed1", "ae/seed1", "ae/seed2"]
    assert [r.label for r in select(runs, only)] == chosen
    assert [r.label for r in training_order(runs, select(runs, only))] == [
        "other/seed2", "ae/seed1", "vae/seed1", "other/seed1", "ae/seed2"]
    assert [r.label for r in training_order(runs, select(runs, None))] == [r.label for r in runs], \
        "without --only: the plan's order, seed by seed"
    st.main([str(path), "--out", str(out), "--status", "--only", *only])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]] == chosen
    # what is finished drops out of the order
    done, real = [], runner_module._train_in_process
    monkeypatch.setattr(runner_module, "_train_in_process",
                        lambda run, n, total: done.append(run.label) or real(run, n, total))
    st.run_study(path, out=str(out), only=["ae/seed1", "other/seed2"])
    assert done == ["ae/seed1", "other/seed2"]
    assert [r.label for r in training_order(runs, select(runs, only))] == ["vae/seed1", "other/seed1", "ae/seed2"]


def test_a_bar_in_a_table_cell_does_not_split_it():
    from textvae.study.report import table_row

    row = table_row(["|mu|", "1.00", "a | b"])
    assert row == "| \\|mu\\| | 1.00 | a \\| b |" and len(re.findall(r"(?<!\\)\|", row)) == 4


def test_the_text_metrics_columns_show_where_a_run_has_them(tmp_path):
    """A dialogue study's table and results.csv have its BLEU and distinct columns; a sentence study's,
    whose reports have none, do not."""
    from textvae.study.report import figure_keys, write_csv

    def results(dialogue: bool) -> dict:
        text = {"bleu2_precision", "bleu2_recall", "distinct_2", "intra_dist2"}
        figures = {k: {"mean": 0.25, "std": math.nan, "n": int(dialogue or k not in text)} for k in figure_keys()}
        return {"variants": [{"variant": "v", "runs": 1, "planned": 1, "figures": figures}]}

    for dialogue in (True, False):
        header = st.markdown_table(results(dialogue)).splitlines()[0]
        write_csv(results(dialogue), tmp_path / "results.csv")
        csv_header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
        assert ("| BLEU-2 P | BLEU-2 R | dist-2 | intra dist-2 |" in header) is dialogue
        assert ("bleu2_precision_mean" in csv_header and "intra_dist2_std" in csv_header) is dialogue
        assert "| IW-NLL | KL |" in header and "nll_mean" in csv_header


def test_a_dialogue_study_takes_the_dialogue_settings(tmp_path):
    """Variants and --set of a study on a dialogue recipe are checked against the dialogue CVAE's
    configuration (model.use_acts, data.context_turns, eval.*), not the sentence VAE's."""
    from textvae.dialogue.config import CVAERunConfig

    spec = {"base": str(REPO / "textvae/recipes/dailydialog/cvae.yaml"), "seeds": [1],
            "variants": {"plain": {}, "acts": {"model.use_acts": True, "data.context_turns": 2, "eval.max_pairs": 9}}}
    runs = st.plan(st.load_study(write_study(tmp_path, spec), str(tmp_path / "out"), sets=["eval.n_responses=3"]))
    assert all(isinstance(r.config, CVAERunConfig) and r.config.eval.n_responses == 3 for r in runs)
    acts = next(r for r in runs if r.variant == "acts").config
    assert acts.model.use_acts and acts.data.context_turns == 2 and acts.eval.max_pairs == 9
    study = st.load_study(write_study(tmp_path, spec), str(tmp_path / "out"))
    report = st.report_markdown(study, {"variants": [], "runs": []}, {}, "", CVAERunConfig)
    assert "-ELBO in nats per pair" in report and "over all N test pairs" in report and "sentence" not in report
    assert "-ELBO in nats per sentence" in st.report_markdown(study, {"variants": [], "runs": []}, {}, "")
    with pytest.raises(TextVAEError, match=r"unknown key model.latent_dimm \(did you mean model.latent_dim\?\)"):
        st.plan(st.load_study(write_study(tmp_path, {**spec, "variants": {"x": {"model.latent_dimm": 3}}}),
                              str(tmp_path / "out")))
    # a setting of the sentence task is named as that task's, in a variant and in --set
    with pytest.raises(TextVAEError, match=r"unknown key data.max_sentences; valid in data: .* \(data.max_sentences "
                                           r"is a setting of the sentences task, and the base recipe's is dialogue\)$"):
        st.plan(st.load_study(write_study(tmp_path, {**spec, "variants": {"x": {"data.max_sentences": 3}}}),
                              str(tmp_path / "out")))
    with pytest.raises(TextVAEError, match=r"^--set: unknown key model.prior; .* \(model.prior is a setting of the "
                                           r"sentences task, and the base recipe's is dialogue\)$"):
        st.load_study(write_study(tmp_path, spec), str(tmp_path / "out"), sets=["model.prior=vamp"])
    with pytest.raises(TextVAEError, match=r"unknown key model.latent_dimm \(did you mean model.latent_dim\?\); "
                                           r"valid in model: [a-z_, ]+$"):  # the failing key's error, no other's note
        st.plan(st.load_study(write_study(tmp_path, {**spec, "variants": {
            "x": {"model.latent_dimm": 3, "data.max_sentences": 3}}}), str(tmp_path / "out")))


def test_archived_runs_a_run_starts_from_are_retrained_down_the_chain(tmp_path):
    """An archive holds no weights: a run to train whose encoder run is archived gets that run retrained
    first, and that run's own archived encoder run before it (c, then b, then a)."""
    spec = dict(TINY, variants={"c": {}, "b": {"model.encoder_from": "{run:c}/model"},
                                "a": {"model.encoder_from": "{run:b}/model"}})
    runs = st.plan(st.load_study(write_study(tmp_path, spec), str(tmp_path / "out")))
    for run in runs:
        if run.variant in ("b", "c"):
            run.archived = {"report": {}}
    assert [r.label for r in training_order(runs, select(runs, ["a/seed1"]))] == ["c/seed1", "b/seed1", "a/seed1"]
    assert training_order(runs, select(runs, ["b", "c"])) == [], "archived runs alone are not trained again"


def test_status_says_where_each_run_is_and_writes_nothing(tmp_path, capsys):
    spec = dict(TINY, seeds=[1], variants={"ae": {}, "vae": {"model.encoder_from": "{run:ae}/model"},
                                           "other": {"optim.lr": 0.003}, "busy": {"optim.lr": 0.002},
                                           "testing": {"optim.lr": 0.004}})
    path, out = write_study(tmp_path, spec), tmp_path / "out"

    def status():
        capsys.readouterr()
        st.main([str(path), "--out", str(out), "--status"])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"study tiny in {out}:"
        return {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:-1]}, lines[-1]

    assert status() == ({"ae/seed1": ["new"], "vae/seed1": ["waiting", "starts after ae/seed1"],
                         "other/seed1": ["new"], "busy/seed1": ["new"], "testing/seed1": ["new"]},
                        "4 new, 1 waiting")
    assert not out.exists()
    st.run_study(path, out=str(out), only=["ae", "other"])
    runs = {r.label: r for r in st.plan(st.load_study(path, str(out)))}
    metrics = runs["other/seed1"].dir / "metrics.jsonl"  # stopped: its finished marker removed
    lines = metrics.read_text().splitlines(keepends=True)
    assert [json.loads(line)["split"] for line in lines[-2:]] == ["test_start", "test"]
    metrics.write_text("".join(lines[:-2]))
    # another run in its final evaluation: the same log up to the test report's start
    runs["testing/seed1"].dir.mkdir(parents=True)
    (runs["testing/seed1"].dir / "metrics.jsonl").write_text("".join(lines[:-1]))
    progress = IWProgress(runs["testing/seed1"].dir / IW_PROGRESS_FILE, "its key")
    for index in range(2):  # its IW pass two batches in
        progress.put(index, {"nll": torch.zeros(3)})
    last = [r for r in read_jsonl(metrics) if r["split"] == "valid"][-1]
    since = time.strftime("%H:%M UTC", time.gmtime(json.loads(lines[-2])["time"]))
    report = st.finished_report(runs["ae/seed1"].dir)
    with held_elsewhere(runs["busy/seed1"].dir) as child, held_elsewhere(runs["testing/seed1"].dir) as tester:
        states, counts = status()
    assert states["ae/seed1"][0] == "done" and states["ae/seed1"][1].startswith(
        f"NLL {report['iw_nll']:.2f}  KL {report['kl']:.2f}  MI {report['mi_dataset']:.2f}  AU {report['au']:.0f}")
    assert states["vae/seed1"] == ["new"]
    assert states["other/seed1"] == ["stopped", f"after step {last['step']} (epoch 3, batch 1 next); last validation "
                                                f"epoch 2 (step {last['step']}), lr {last['lr']:g}, "
                                                f"valid -ELBO {last['neg_elbo']:.2f}; the study resumes it"]
    assert states["busy/seed1"] == ["training", f"pid {child.pid}: no validation yet (step 0)"]
    assert states["testing/seed1"] == ["testing", f"pid {tester.pid}: the test report since {since} (2 IW batches "
                                                  f"done), after epoch 2 "
                                                  f"(step {last['step']}), lr {last['lr']:g}, "
                                                  f"valid -ELBO {last['neg_elbo']:.2f}"]
    assert counts == "1 done, 1 new, 1 stopped, 1 training, 1 testing"
    assert status()[0]["busy/seed1"] == ["new"]  # its holder gone


def test_report_says_what_each_variant_sets_with_its_note(tmp_path):
    """report.md's Variants table: a variant's own settings by section (free-form values whole) and the
    study file's note, with a | in either escaped for the table."""
    spec = dict(TINY, seeds=[1], variants={"plain": {}, "fb": TINY["variants"]["fb"],
                                           "cap": {"objective.remedies": [{"name": "kl_constraint", "capacity": 2}],
                                                   "optim": {"name": "adam", "lr": 0.003}}},
                notes={"cap": "Prokhorov et al.'s |KL - C|  over\n two lines"})
    study = st.load_study(write_study(tmp_path, spec), str(tmp_path / "out"))
    lines = st.variants_markdown(study, RunConfig)
    assert lines[6:9] == [
        "| plain | – |  |",
        '| fb | `objective.remedies: [{"name": "free_bits_li2019", "target_kl": 1.0}]` |  |',
        '| cap | `objective.remedies: [{"name": "kl_constraint", "capacity": 2}]`; `optim.name: "adam"`; '
        "`optim.lr: 0.003` | Prokhorov et al.'s \\|KL - C\\| over two lines |"]
    assert "\n".join(lines) in st.report_markdown(study, {"variants": [], "runs": []}, {}, "")


STUDIES = Path(__file__).resolve().parents[1] / "textvae" / "studies"


@pytest.mark.parametrize("name", sorted(p.name for p in STUDIES.glob("*.yaml")))
def test_every_shipped_study_plans(name, tmp_path):
    """Each study file under studies/ loads and plans (its base recipe found, every variant a valid
    configuration, its notes on variants it has), writing nothing."""
    study = st.load_study(STUDIES / name, str(tmp_path / "out"))
    runs = st.plan(study)
    assert len(runs) == len(study.variants) * len(study.seeds) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in STUDIES.glob("*.yaml")))
def test_every_shipped_row_that_changes_model_or_optimiser_says_so(name, tmp_path):
    """A comparison is fair or says why not: a row whose own settings change the model (its init
    included) or the optimiser, which a study's rows otherwise share, has a note in report.md."""
    study = st.load_study(STUDIES / name, str(tmp_path / "out"))
    silent = [v for v, overrides in study.variants.items()
              if {"model", "optim"} & set(overrides) and v not in study.notes]
    assert not silent, f"{name}: rows changing model or optim without a note: {silent}"


def test_archive_keeps_finished_runs_when_their_folders_are_gone(tmp_path, capsys, caplog):
    spec = dict(TINY, seeds=[1], variants={"ae": {}, "vae": {"model.encoder_from": "{run:ae}/model"},
                                           "other": {"optim.lr": 0.003}})
    path, out, archive = write_study(tmp_path, spec), tmp_path / "out", tmp_path / "kept" / "archive.json"
    first = st.run_study(path, out=str(out), only=["ae", "other"], archive=archive)
    saved = json.loads(archive.read_text())  # standard JSON: NaN written as null
    assert {(e["variant"], e["seed"], e["source"]) for e in saved["runs"]} == {("ae", 1, "run folder"),
                                                                                ("other", 1, "run folder")}
    plan = {r.label: r for r in st.plan(st.load_study(path, str(out)))}
    valid = [r for r in read_jsonl(plan["other/seed1"].dir / "metrics.jsonl") if r["split"] == "valid"]
    entry = next(e for e in saved["runs"] if e["variant"] == "other")
    assert [r["epoch"] for r in entry["valid"]] == [r["epoch"] for r in valid] == [1, 2]
    sources = [r for r in read_jsonl(plan["other/seed1"].dir / "metrics.jsonl") if r["split"] == "source"]
    assert entry["test_seconds"] > 0 and entry["commits"] == [code_name(r) for r in sources]
    assert len(sources) == 1 and sources[0]["commit"] == current_commit()  # named as tests/test_train.py checks
    assert entry["machines"] == [f"{source['cpu']}, {source['threads']} threads"
                                 for source in read_jsonl(plan["other/seed1"].dir / "metrics.jsonl")
                                 if source["split"] == "source"]
    shutil.rmtree(out)  # the machine is new: every run folder is gone
    # an entry written before textvae had a setting matches a run with that setting's default
    older = json.loads(archive.read_text())
    del older["runs"][0]["config"]["train"]["valid_redraw"]
    archive.write_text(json.dumps(older))

    capsys.readouterr()
    st.main([str(path), "--out", str(out), "--status", "--archive", str(archive)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [["ae/seed1", "archived"], ["vae/seed1", "waiting"],
                                                           ["other/seed1", "archived"]]
    assert lines[-1] == "2 archived, 1 waiting" and not out.exists()
    again = st.run_study(path, out=str(out), only=["ae", "other"], archive=archive)  # trains nothing
    assert not (out / "ae" / "seed1").exists() and not (out / "other" / "seed1").exists()
    assert_same(again, first)
    assert [r["state"] for r in again["runs"]] == ["archived", "new", "archived"]
    assert again["runs"][2]["machines"] == entry["machines"]  # an archived run still says where it ran
    assert (out / "plots" / "curves.png").is_file()
    assert json.loads(archive.read_text())["runs"] == older["runs"]  # entries kept as they were

    # another configuration: the archived runs do not count, and say so
    st.main([str(path), "--out", str(out), "--status", "--archive", str(archive), "--set", "optim.clip=1.0"])
    assert capsys.readouterr().out.splitlines()[-1] == "2 new, 1 waiting"
    assert "the archive's run was made with other settings" in caplog.text
    # a larger budget, which trains runs that their budget stopped on: said so, since the run is trained again from
    # its start, not on; a lower one, which would have stopped them earlier: said so too
    for budget, said in (("train.epochs=3", "was made with another budget, and an archive keeps no weights"),
                         ("train.max_steps=7", "trained past the study's budget: under it, it would have stopped")):
        caplog.clear()
        st.main([str(path), "--out", str(out), "--status", "--archive", str(archive), "--set", budget])
        assert capsys.readouterr().out.splitlines()[-1] == "2 new, 1 waiting"
        assert f"other/seed1: the archive's run {said}" in caplog.text

    # vae starts from ae's weights, which no archive holds: ae is trained again, to the same figures
    caplog.clear()
    with caplog.at_level("INFO", logger="textvae"):
        third = st.run_study(path, out=str(out), only=["vae"], archive=archive)
    assert "1 run, 0 finished, 2 to train (1 of them needed by the selection; in this process)" in caplog.text
    assert [r["state"] for r in third["runs"]] == ["done", "done", "archived"]
    assert_same({**third, "runs": third["runs"][:1], "variants": third["variants"][:1]},
                {**first, "runs": first["runs"][:1], "variants": first["variants"][:1]})
    assert len(json.loads(archive.read_text())["runs"]) == 3


def test_an_archived_run_that_its_plateau_schedule_ended_stands_for_the_run_of_a_larger_budget(tmp_path, capsys,
                                                                                               caplog):
    """As a run folder does: a budget it did not reach makes the same run. One that its budget stopped is
    trained again under a larger one (an archive keeps no weights to train it on from), and so is one that a
    lower budget would have stopped earlier."""
    # lr 1e-30 leaves every weight as it was, so the second epoch's validation is no better than the first's:
    # one bad epoch, and max_decays 0 ends the schedule there
    ends = {"optim": {"lr": 1e-30, "decay_start_epoch": 0, "decay_patience": 1, "max_decays": 0}}
    spec = dict(TINY, seeds=[1], budget={"epochs": 3}, variants={"ends": ends, "capped": {"optim.lr": 0.003}})
    path, out, archive = write_study(tmp_path, spec), tmp_path / "out", tmp_path / "archive.json"
    st.run_study(path, out=str(out), archive=archive)
    entries = {e["variant"]: e for e in json.loads(archive.read_text())["runs"]}
    assert [entries[v]["report"]["train_epochs"] for v in ("ends", "capped")] == [2, 3]
    assert [entries[v]["report"]["train_plateau_ended"] for v in ("ends", "capped")] == [True, False]
    ends, capped = stopped_at(entries["ends"]), stopped_at(entries["capped"])
    assert (ends.epoch, ends.done, capped.epoch, capped.done) == (2, True, 3, False)
    # a report from before textvae recorded why and when the run stopped: inferred from its budgets, and the whole
    # epochs from the last validation, at the steps trained
    for entry in entries.values():
        entry["report"] = {k: v for k, v in entry["report"].items() if k not in ("train_epochs", "train_plateau_ended")}
    ends, capped = stopped_at(entries["ends"]), stopped_at(entries["capped"])
    assert (ends.epoch, ends.done, capped.epoch, capped.done) == (2, True, 3, False)
    assert stopped_at({**entries["ends"], "valid": []}) is None
    # the flag decides where the budgets cannot: a schedule that ended at the budget's last epoch
    last = {**entries["capped"], "report": {**entries["capped"]["report"], "train_epochs": 3, "train_plateau_ended": True}}
    assert stopped_at(last).done
    shutil.rmtree(out)
    capsys.readouterr()
    for epochs, states in [(3, "archived archived"), (50, "archived new"), (2, "archived new"), (1, "new new")]:
        caplog.clear()
        st.main([str(path), "--out", str(out), "--status", "--archive", str(archive), "--set", f"train.epochs={epochs}"])
        lines = capsys.readouterr().out.splitlines()[1:-1]
        assert [line.split()[:2] for line in lines] == [[f"{v}/seed1", s] for v, s in zip(("ends", "capped"),
                                                                                           states.split())], epochs
        assert ("capped/seed1: the archive's run was made with another budget" in caplog.text) == (epochs == 50)
        past = [v for v in ("ends", "capped") if f"{v}/seed1: the archive's run trained past the study's budget" in
                caplog.text]
        assert past == {50: [], 3: [], 2: ["capped"], 1: ["ends", "capped"]}[epochs]


@pytest.mark.parametrize("text", ["[]", "{not json", '{"format": 99, "runs": []}'])
def test_a_file_that_is_no_archive_is_a_clear_error(tmp_path, text):
    path, archive = write_study(tmp_path), tmp_path / "archive.json"
    archive.write_text(text)
    with pytest.raises(TextVAEError, match="--archive .*archive.json: not a study archive"):
        st.run_study(path, out=str(tmp_path / "out"), status=True, archive=archive)


def test_report_writes_the_finished_runs_over_every_seed_and_trains_nothing(tmp_path):
    """--report: the outputs over the given seeds from what is finished; no run folder appears."""
    spec = dict(TINY, seeds=[1], variants={"plain": TINY["variants"]["plain"]})
    path, out = write_study(tmp_path, spec), tmp_path / "out"
    trained = st.run_study(path, out=str(out))
    st.main([str(path), "--out", str(out), "--seeds", "1", "2", "--report"])
    results = json.loads((out / "results.json").read_text())
    assert not (out / "plain" / "seed2").exists()
    assert results["seeds"] == [1, 2] and results["variants"][0]["runs"] == 1
    assert results["variants"][0]["planned"] == 2
    assert [r["report"] for r in results["runs"] if r["seed"] == 1] == [r["report"] for r in trained["runs"]]
    with pytest.raises(TextVAEError, match="--status: not allowed with argument --report"):
        st.main([str(path), "--out", str(out), "--report", "--status"])


def test_a_folder_of_another_configuration_blocks_only_its_own_training(tmp_path, caplog):
    """A study with a folder of another configuration refuses to train that run; --only another run trains it,
    and --report writes the others; both leave that run out with a warning (state ``conflict``), and take its
    archive entry where one matches."""
    spec = dict(TINY, seeds=[1])
    path, out, archive = write_study(tmp_path, spec), tmp_path / "out", tmp_path / "archive.json"
    st.run_study(path, out=str(out), archive=archive)
    shutil.rmtree(out / "fb" / "seed1")  # its archive entry stands for it, until the folder below
    other = dict(spec, variants={**spec["variants"], "fb": {"optim.lr": 0.5}})
    st.run_study(write_study(tmp_path, other, "other.yaml"), out=str(out), only=["fb"])
    with pytest.raises(TextVAEError, match="fb/seed1 was trained with another configuration"):
        st.run_study(path, out=str(out), archive=archive)
    shutil.rmtree(out / "plain" / "seed1")
    trained = st.run_study(path, out=str(out), only=["plain"])  # a run outside --only does not block it
    assert {r["variant"]: r["state"] for r in trained["runs"]} == {"plain": "done", "fb": "conflict"}
    with caplog.at_level(logging.WARNING, logger="textvae.study"):
        results = st.run_study(path, out=str(out), report=True)
    assert "fb/seed1 left out of the study's outputs:" in caplog.text
    states = {r["variant"]: r["state"] for r in results["runs"]}
    assert states == {"plain": "done", "fb": "conflict"}
    assert [v["runs"] for v in results["variants"]] == [1, 0]
    assert "| fb | 1 | conflict |" in (out / "report.md").read_text()
    archived = st.run_study(path, out=str(out), report=True, archive=archive)
    assert {r["variant"]: r["state"] for r in archived["runs"]} == {"plain": "done", "fb": "archived"}
    assert [v["runs"] for v in archived["variants"]] == [1, 1]
    entries = json.loads(archive.read_text())["runs"]
    assert [e["config"]["optim"]["lr"] for e in entries if e["variant"] == "fb"] != [0.5]  # not the folder's run


def test_status_ends_with_the_error_that_would_stop_the_study(tmp_path, capsys):
    """--status checks the runs to train as the study would before it trains (values, not only keys): each run's
    line, then the error; nothing written."""
    path, out = write_study(tmp_path), tmp_path / "out"
    with pytest.raises(TextVAEError, match=r"^plain/seed1: data.batch_size must be at least 1, got 0$"):
        st.run_study(path, out=str(out), status=True, sets=["data.batch_size=0"])
    assert re.search(r"^fb/seed2 +new$", capsys.readouterr().out, re.M) and not out.exists()
    spec = dict(TINY, variants={"fb": {"objective": {"remedies": [{"name": "free_bits_li2019", "target": 1.0}]}}})
    with pytest.raises(TextVAEError, match=r"^fb/seed1: remedy 'free_bits_li2019': unknown parameter"):
        st.run_study(write_study(tmp_path, spec, "fb.yaml"), out=str(out), status=True)
    # a device this machine lacks is the training machine's business, not a watcher's
    assert st.run_study(path, out=str(out), status=True, sets=["train.device=cuda:7"]) == {}


def test_a_report_of_nothing_finished_says_so(tmp_path, caplog):
    """--report of a study folder without a finished run (a mistyped --out) writes empty tables and warns."""
    with caplog.at_level(logging.WARNING, logger="textvae.study"):
        results = st.run_study(write_study(tmp_path), out=str(tmp_path / "typo"), report=True)
    assert [v["runs"] for v in results["variants"]] == [0, 0]
    assert "no run of study tiny is finished in" in caplog.text and "--archive FILE" in caplog.text


def test_an_unwritable_study_folder_or_archive_is_a_one_line_error(tmp_path):
    path, a_file = write_study(tmp_path), tmp_path / "a_file"
    a_file.write_text("")
    for out in (a_file, a_file / "sub"):
        with pytest.raises(TextVAEError, match=f"^cannot write the study folder {out}: .*; choose another --out$"):
            st.run_study(path, out=str(out), report=True)
    with pytest.raises(TextVAEError, match="^--archive .*: a folder; name a file"):
        st.run_study(path, out=str(tmp_path / "out"), report=True, archive=tmp_path)
    with pytest.raises(TextVAEError, match="^cannot write the archive's folder .*; choose another --archive$"):
        st.run_study(path, out=str(tmp_path / "out"), report=True, archive=a_file / "archive.json")
    from textvae.files import check_writable

    check_writable(tmp_path / "new" / ".." / "made", keep=False)  # leaves nothing behind, "new" included
    assert not (tmp_path / "new").exists() and not (tmp_path / "made").exists()


def test_a_recipe_given_as_a_study_and_a_study_given_as_a_recipe_say_so(tmp_path):
    from textvae.tasks.runconfig import parse_run_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {latent_dim: 4}\ntrain: {max_steps: 3}\n")
    with pytest.raises(TextVAEError, match=f"^{recipe}: a recipe, not a study .*textvae train {recipe}"):
        st.run_study(recipe, status=True)
    study = write_study(tmp_path)
    with pytest.raises(TextVAEError, match=f"^recipe {study}: a study file .*textvae study {study}$"):
        parse_run_config([str(study)])
    with pytest.raises(TextVAEError, match=r"^textvae study: the following arguments are required: study .*; the "
                                           r"study goes first: textvae study STUDY \[options\]$"):
        st.main(["--only", "plain", str(study)])
    with pytest.raises(TextVAEError, match=r"invalid int value: .*; the study goes first"):
        st.main(["--seeds", "1", str(study)])
    with pytest.raises(TextVAEError, match=r"unrecognized arguments: --bogus \(see textvae study --help\)$"):
        st.main(["--jobs", "2", str(study), "--bogus"])  # the study is there: no hint


def test_bf16_where_the_cpu_has_none_is_refused_before_any_run_starts(tmp_path, cpu_without_bf16):
    path, out = write_study(tmp_path), tmp_path / "out"
    with pytest.raises(TextVAEError, match=r"train.precision bf16: this CPU \(.*\) has no bfloat16 arithmetic.*"
                                           r"use train.precision fp32 \(--set train.precision=fp32\)$"):
        st.run_study(path, out=str(out), jobs=2, sets=["train.precision=bf16"])
    assert not out.exists()


def test_the_cpu_smoke_study_has_every_remedy():
    """README: studies/cpu_smoke.yaml runs every remedy, briefly; a newly registered remedy needs its row."""
    from textvae.remedies import list_remedies

    spec = yaml.safe_load((REPO / "textvae" / "studies" / "cpu_smoke.yaml").read_text())
    used = {r["name"] for v in spec["variants"].values() for r in (v or {}).get("objective.remedies", [])}
    assert used == set(list_remedies())


def test_the_mi_noise_note_counts_a_dialogue_study_s_pairs():
    """He et al.'s per-batch MI noise floor sqrt(D / 2N) is said for dialogue studies too, whose
    reports count pairs, not sentences."""
    from textvae.study.report import _mi_noise

    assert "D = 32, N = 500" in _mi_noise({"latent_dim": 32, "n_sentences": 500})
    assert "D = 32, N = 400" in _mi_noise({"latent_dim": 32, "n_pairs": 400})
    assert _mi_noise({"latent_dim": 32}) == ""
