"""Malformed input through the CLI: a one-line ``textvae: error: ...`` naming what and where, exit
status 2, no traceback -- or, where the policy is to go on (over-long lines, unknown words), a count
in the log. The README's "Bad input" table lists these cases.
"""
import argparse
import dataclasses
import importlib.util
import json
import logging
import re
import shlex
import shutil
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from textvae.cli import check_probe, default_results_name, main
from textvae.config import RunConfig, check_ranges
from textvae.dialogue.config import CVAERunConfig
from textvae.errors import TextVAEError
from textvae.packaged import packaged_file
from textvae.tasks.runconfig import parse_run_config
from textvae.training.logger import read_jsonl
from tests.test_train import tiny_args, write_corpus


def fails(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error; returns its one line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("textvae: error")]
    return line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=60, n_eval=20)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A finished tiny run (latent_dim 4, vocabulary of ``corpus``)."""
    out = tmp_path_factory.mktemp("runs")
    main(["train", *tiny_args(out, "run", corpus, "--train.max_steps", "2")])
    return out / "run"


def train_on(tmp_path: Path, data: Path | str, *extra: str) -> list[str]:
    return ["train", *tiny_args(tmp_path / "runs", "x", data, "--train.max_steps", "2", *extra)]


def folder(tmp_path: Path, train: bytes, name: str = "data") -> Path:
    """A corpus folder whose train.txt holds ``train`` and whose valid/test files are fine."""
    path = write_corpus(tmp_path / name, n_train=5, n_eval=5)
    (path / "train.txt").write_bytes(train)
    return path


def test_missing_files(tmp_path, corpus, capsys):
    assert "'/no/such/corpus.txt' is not a corpus" in fails(train_on(tmp_path, "/no/such/corpus.txt"), capsys)
    assert not (tmp_path / "runs" / "x").exists()  # a start that failed leaves no run folder behind
    (tmp_path / "runs" / "keep").mkdir(parents=True)  # ... and removes nothing it did not make
    assert "name 'a/..': a run's name is its folder" in fails([*train_on(tmp_path, "/no/such/corpus.txt"), "--name",
                                                                 "a/.."], capsys)
    assert (tmp_path / "runs" / "keep").is_dir()
    assert "no such recipe: missing.yaml" in fails(["train", "missing.yaml"], capsys)
    partial = tmp_path / "partial"
    shutil.copytree(corpus, partial)
    (partial / "valid.txt").unlink()
    assert re.search(r"partial: no valid.txt or \*.valid.txt files", fails(train_on(tmp_path, partial), capsys))
    assert "no such run or model folder: /no/run" in fails(["evaluate", "/no/run"], capsys)
    (tmp_path / "empty").mkdir()
    assert fails(["evaluate", str(tmp_path / "empty")], capsys).endswith(
        "empty is neither a run folder (config.yaml and model/) nor a model folder (config.json and model.safetensors)")


@pytest.mark.parametrize("recipe, given, expected", [
    ("data:\n  batch_size: 0\n", [], "data.batch_size must be at least 1, got 0 (data.batch_size set in {overlay})"),
    ("data: {batch_size: abc}\n", [],
     "data.batch_size must be an integer, got 'abc' (data.batch_size set in {overlay})"),
    ("objective.remedies: [{name: bn_vae, gamma: -1}]\n", [],
     "remedy 'bn_vae': gamma must be > 0, got -1 (objective.remedies set in {overlay})"),
    ("objective:\n  kl_schedule: {name: linear, warmup_steps: -3}\n", [],
     "linear KL schedule: warmup_steps must be > 0 (objective.kl_schedule set in {overlay})"),
    ("data:\n  batch_size: 4\n", ["--data.batch_size", "0"],  # the command line wins, and is named
     "data.batch_size must be at least 1, got 0 (--data.batch_size on the command line)"),
    ("data:\n  batch_size: 4\n", ["--data", "{batch_size: 0}"],  # through its section
     "data.batch_size must be at least 1, got 0 (--data on the command line)"),
    # a combination: of the settings it is about, the one given on the command line
    ("objective.remedies: [{name: bn_vae}]\n", ["--model.latent_dim", "0"],
     "remedy 'bn_vae' acts on the latent z, but model.latent_dim 0 is the language model, which has none; set "
     "model.latent_dim >= 1 or drop the remedy (--model.latent_dim on the command line)"),
])
def test_a_bad_value_names_the_recipe_or_argument_that_set_it(tmp_path, corpus, capsys, recipe, given, expected):
    """A bad value names the overlay recipe or the argument that set it: found without reading every file."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(recipe)
    line = fails([*train_on(tmp_path, corpus), "--config", str(overlay), *given], capsys)
    assert line == "textvae: error: " + expected.format(overlay=overlay)


def test_a_data_dir_the_synthetic_corpus_would_not_read_is_refused_before_training(tmp_path, capsys):
    line = fails(train_on(tmp_path, "synthetic", "--data.data_dir", str(tmp_path)), capsys)
    assert line.startswith(f"textvae: error: data.data_dir {tmp_path}: not read for data.name 'synthetic', a synthetic "
                           f"corpus; it is where the named corpora (")
    assert line.endswith("(none: --data.data_dir null) (--data.data_dir on the command line)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setting,message", [
    (["--objective.remedies", '[{"name": "bowl"}]'], "unknown remedy 'bowl'; valid: aggressive,"),
    (["--objective.remedies", '[{"name": "bn_vae", "gamma": "high"}]'], "remedy 'bn_vae': gamma must be a number"),
    (["--objective.remedies", '[{"gamma": 0.5}]'], "a remedy is {name: NAME, PARAMETER: VALUE, ...}, got {'gamma': 0.5}"),
    (["--objective.kl_schedule", '{"name": "linear", "warmup": 5}'], "KL schedule 'linear': unknown parameter(s)"),
    (["--objective.kl_schedule", '{"name": "constant", "value": -1}'], "constant KL schedule: value must be >= 0"),
    (["--objective.kl_schedule", '{"name": "linear", "start": -0.5}'], "start and end must be >= 0, got -0.5 and 1.0"),
    (["--objective.kl_schedule", '{"name": "cyclical"}'], "KL schedule 'cyclical': missing parameter(s) ['total_steps']"),
    (["--optim.name", "rmsprop"], "unknown optimizer 'rmsprop'; valid: adam, sgd"),
    (["--model.posterior", "vmff"], "unknown posterior 'vmff'; valid: gaussian, iaf, vmf"),
    (["--model.init", "xavier"], "unknown model.init 'xavier'; valid: he2019, torch"),
    (["--model.decoder.type", "cnn", "--model.decoder.z_concat", "false"], "model.decoder.z_concat: False would be"),
])
def test_the_recipe_s_parts_are_checked_before_the_data_is_read(tmp_path, capsys, setting, message):
    """A typo in a remedy or schedule fails at once, not after a corpus has been read (here: none exists)."""
    assert message in fails(train_on(tmp_path, "/no/such/corpus.txt", *setting), capsys)


@pytest.mark.parametrize("setting,message", [
    (["--eval.method", "nucleus"], "eval.method 'nucleus': unknown decoding method; valid: greedy, sample, beam "
                                   "(--eval.method on the command line)"),
    (["--eval.temperature", "0.5"], "eval.temperature is an option of eval.method sample, and eval.method greedy "
                                    "would ignore it (--eval.temperature on the command line)"),
    (["--objective.remedies", '[{"name": "delta_vae", "delta": 0.1}]'],
     "remedy 'delta_vae' bounds the KL against the fixed N(0, I) prior, and the dialogue CVAE's prior is its learned "
     "p(z|c); the remedy does not combine with this model (--objective.remedies on the command line)"),
])
def test_a_dialogue_recipe_s_settings_are_checked_before_the_data_is_read(tmp_path, capsys, setting, message):
    """The test report decodes responses after the last epoch: its settings fail at once, not hours later; a
    remedy that needs N(0, I) says that the CVAE's prior is learned (it has no model.prior to change)."""
    argv = ["train", "dailydialog/cvae", "--data.name", str(tmp_path / "none"), "--out_dir", str(tmp_path), *setting]
    assert fails(argv, capsys) == "textvae: error: " + message
    assert not any(tmp_path.iterdir())  # no run folder was made


def test_a_dialogue_run_refuses_a_data_dir_that_its_folder_of_pairs_would_not_read(tmp_path, capsys):
    """data.data_dir is where the dialogue corpora are looked for; a folder given as data.name is read from there,
    so a data_dir beside it was ignored without a word."""
    pairs, out = tmp_path / "pairs", tmp_path / "out"
    pairs.mkdir()
    argv = ["train", "dailydialog/cvae", "--data.name", str(pairs), "--data.data_dir", "/no/dir", "--out_dir", str(out)]
    assert fails(argv, capsys) == (f"textvae: error: data.data_dir /no/dir: not read for data.name {str(pairs)!r}, a "
                                   f"folder of pairs read from its own path; it is where the dialogue corpora "
                                   f"(dailydialog) are looked for (none: --data.data_dir null) (--data.data_dir on the "
                                   f"command line)")
    assert not out.exists()


def test_a_dialogue_run_in_bf16_on_the_cpu_is_warned_of(caplog):
    """The kgCVAE's GRUs step over packed turns, and in bf16 oneDNN builds a kernel per new GEMM shape (README)."""
    from textvae.config import TrainConfig
    from textvae.tasks import create_task

    import torch

    warning = "on a CPU the dialogue CVAE runs slower in bf16 than in fp32"
    for precision, device in (("fp32", "cpu"), ("bf16", "cuda"), ("bf16", "auto"), ("bf16", "cpu")):
        caplog.clear()
        # a device this machine may lack is not the check's to refuse (evaluate runs a GPU run's report on the CPU)
        create_task(CVAERunConfig(train=TrainConfig(precision=precision, device=device))).check()
        on_cpu = device == "cpu" or device == "auto" and not torch.cuda.is_available()
        assert (warning in caplog.text) is (precision == "bf16" and on_cpu), (precision, device)


def test_evaluate_names_its_results_by_what_it_evaluated(tmp_path):
    """Another corpus or a subset never overwrite the figures of the model's own split, whole."""
    def name(**given):
        return default_results_name(SimpleNamespace(**{"data": None, "split": "test", "max_sentences": None, **given}))

    assert name() == "eval_test.json" and name(split="valid", max_sentences=50) == "eval_valid_n50.json"
    assert name(data="/corpora/my data/") == "eval_my_data_test.json" and name(data="ptb") == "eval_ptb_test.json"
    (tmp_path / "mine.txt").write_text("a b\n")  # a text file, evaluated whole: no split of it to name
    assert name(data=str(tmp_path / "mine.txt")) == "eval_mine.txt.json"
    (tmp_path / "test.txt").write_text("a b\n")  # not the run's own test split's eval_test.json
    assert name(data=str(tmp_path / "test.txt")) == "eval_test.txt.json"


def test_an_overlay_s_file_is_no_stray_recipe_and_help_shows_every_recipe(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("name: other\ntrain:\n  epochs: 4\n")
    line = fails(["train", "synthetic", "--config", str(overlay), "--train.epohcs", "2"], capsys)
    assert line.endswith("(did you mean --train.epochs?)"), line
    with pytest.raises(SystemExit):
        main(["train", "synthetic", "--config", str(overlay), "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--train.epochs EPOCHS passes over the training set (type: int, default: 4)" in shown and "default: other)" in shown


def test_a_run_folder_s_settings_name_that_folder_whatever_an_overlay_names(tmp_path):
    run = tmp_path / "moved" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: r1\nout_dir: /elsewhere\n")
    (run / "model").mkdir()  # a run's folder: its best model
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("name: other\n")
    cfg, _ = parse_run_config([str(run / "config.yaml"), "--config", str(overlay)])
    assert (cfg.out_dir, cfg.name) == (str(tmp_path / "moved"), "r1")


def test_overrides_win_wherever_the_recipe_stands(tmp_path, capsys):
    """``--config FILE`` after the overrides does not undo them (jsonargparse applies arguments in order), a
    second one neither;
    a recipe given as the first positional argument after options is an error that says where it goes."""
    recipe = tmp_path / "min.yaml"
    recipe.write_text("train:\n  max_steps: 10\n  epochs: 3\n")
    for argv in (["--train.max_steps", "5", "--config", str(recipe)], [f"--config={recipe}", "--train.max_steps", "5"],
                 [str(recipe), "--train.max_steps", "5"]):
        cfg, _ = parse_run_config(argv)
        assert (cfg.train.max_steps, cfg.train.epochs) == (5, 3), argv
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 4\n")
    cfg, _ = parse_run_config([str(recipe), "--config", str(overlay)])  # a second recipe overlays the first
    assert (cfg.train.max_steps, cfg.train.epochs) == (10, 4)
    for argv in ([str(recipe), "--train.epochs", "7", "--config", str(overlay)],  # and a typed value wins over both
                 ["--train.epochs", "7", "--config", str(recipe), "--config", str(overlay)]):
        cfg, _ = parse_run_config(argv)
        assert (cfg.train.max_steps, cfg.train.epochs) == (10, 7), argv
    line = fails(["train", "--train.max_steps", "5", str(recipe)], capsys)
    assert line.endswith(f"unrecognized arguments: {recipe} (the recipe {recipe} goes first, before the overrides)")
    for packaged in ("ptb/vae", "recipes/ptb/vae.yaml"):  # a packaged recipe's name after options likewise
        line = fails(["train", "--train.max_steps", "5", packaged], capsys)
        assert line.endswith(f"(the recipe {packaged} goes first, before the overrides)")
    line = fails(["train", str(recipe), str(overlay)], capsys)  # two recipes, the second one without --config
    assert line.endswith(f"unrecognized arguments: {overlay} (a second recipe: a run starts from one, and --config "
                         f"{overlay} overlays another on it)")


def without(monkeypatch, *packages: str) -> None:
    """As if ``packages`` were not installed, to textvae's checks of optional packages."""
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else found(name, *a))


def test_evaluate_checks_its_optional_packages_before_the_pass(tmp_path, trained, capsys, monkeypatch):
    without(monkeypatch, "sacrebleu", "sklearn")
    out = tmp_path / "eval.json"
    line = fails(["evaluate", str(trained), "--iw-samples", "2", "--json", str(out)], capsys)
    assert line.endswith("the text metrics need sacrebleu: pip install 'textvae[eval]' (or --no-generation)")
    assert not out.exists() and not list(tmp_path.glob("*.iw_progress.safetensors"))  # no IW batch was done
    main(["evaluate", str(trained), "--iw-samples", "0", "--no-generation", "--json", str(out)])
    assert "recon_bleu" not in json.loads(out.read_text())
    labelled = SimpleNamespace(name="labelled", splits={"train": SimpleNamespace(labels=[0, 1])})
    with pytest.raises(TextVAEError, match=r"^--probe needs scikit-learn: pip install 'textvae\[eval\]'$"):
        check_probe(SimpleNamespace(is_lm=False), labelled)  # before the pass, as the text metrics' check
    monkeypatch.undo()
    with pytest.raises(TextVAEError, match=r"^--probe 2: class 0 has only 1 labelled training sentences; use --probe 1"):
        check_probe(SimpleNamespace(is_lm=False), labelled, 2)
    as_read = SimpleNamespace(name="labelled", splits={"train": SimpleNamespace(labels=np.array([0, 1, 1]))})
    with pytest.raises(TextVAEError, match=r"^--probe 2: class 0 has only 1 "):  # not np.int64(0)
        check_probe(SimpleNamespace(is_lm=False), as_read, 2)
    check_probe(SimpleNamespace(is_lm=False), labelled, 1)


def test_missing_sentence_file(trained, capsys):
    line = fails(["reconstruct", str(trained / "model"), "--file", "/no/sentences.txt"], capsys)
    assert "no such file: /no/sentences.txt" in line


def test_empty_file(tmp_path, capsys):
    assert re.search(r"data/train.txt: the file is empty", fails(train_on(tmp_path, folder(tmp_path, b"")), capsys))
    single = tmp_path / "empty.txt"
    single.write_text("")
    assert "empty.txt: 0 lines are too few to split 90/5/5" in fails(train_on(tmp_path, single), capsys)


def test_only_blank_lines(tmp_path, capsys):
    line = fails(train_on(tmp_path, folder(tmp_path, b"\n  \n\t\n")), capsys)
    assert "train.txt: the file has only blank lines (3)" in line
    single = tmp_path / "blank.txt"  # a single file is split 90/5/5: too few lines would be said first
    single.write_text("\n" * 5)
    assert "blank.txt: the file has only blank lines (5)" in fails(train_on(tmp_path, single), capsys)


def test_batch_larger_than_the_corpus_warns(tmp_path, corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="textvae"):
        main([*train_on(tmp_path, corpus), "--data.batch_size", "100"])
    assert "data.batch_size 100 is larger than the training split (60): every epoch is one step of 60" in caplog.text


def test_zero_epochs_is_not_called_collapsed(tmp_path, corpus, caplog, capsys):
    """Neither by the training report nor by ``evaluate`` of the run, which reads the steps from its log."""
    with caplog.at_level(logging.WARNING, logger="textvae"):
        main([*train_on(tmp_path, corpus), "--train.epochs", "0"])
    out = capsys.readouterr().out
    assert "train.epochs 0: no training step" in caplog.text
    assert re.search(r"latent space\s+not trained \(0 steps\): no verdict", out) and "collapsed" not in out
    run = tmp_path / "runs" / "x"
    main(["evaluate", str(run), "--iw-samples", "2", "--no-generation", "--json", str(tmp_path / "eval.json")])
    out = capsys.readouterr().out
    assert re.search(r"latent space\s+not trained \(0 steps\): no verdict", out) and "collapsed" not in out
    assert json.loads((tmp_path / "eval.json").read_text())["train_steps"] == 0


def test_evaluate_of_a_trained_run_gives_a_verdict_and_its_steps(trained, tmp_path, capsys):
    main(["evaluate", str(trained), "--iw-samples", "2", "--no-generation", "--json", str(tmp_path / "eval.json")])
    assert re.search(r"latent space\s+(?!not trained)", capsys.readouterr().out)
    assert json.loads((tmp_path / "eval.json").read_text())["train_steps"] == 2
    # the run's config.yaml names the run: its results file, its steps and figures are the folder's
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    main(["evaluate", str(copy / "config.yaml"), "--iw-samples", "2", "--no-generation"])
    again = json.loads((copy / "eval_test.json").read_text())
    assert again["train_steps"] == 2
    assert again["neg_elbo"] == json.loads((tmp_path / "eval.json").read_text())["neg_elbo"]


def test_the_results_file_check_makes_and_removes_nothing_of_the_user_s(tmp_path):
    from textvae.cli import results_file

    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "target.json")  # dangling: evaluate writes through it at the end
    args = argparse.Namespace(json=str(link), model=str(tmp_path), data=None, split="test", max_sentences=None)
    assert results_file(args, tmp_path) == link
    assert link.is_symlink() and not (tmp_path / "target.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json"]  # no probe file left beside it


def test_probe_on_an_unlabelled_corpus_fails_before_the_evaluation_pass(trained, monkeypatch, capsys):
    def evaluation(*args, **kwargs):
        raise AssertionError("the evaluation pass ran before the probe's data was checked")

    monkeypatch.setattr("textvae.training.train.evaluation", evaluation)
    line = fails(["evaluate", str(trained), "--probe", "5", "--no-generation"], capsys)
    assert "--probe needs a labelled corpus such as yelp_short; " in line and "has no labels" in line


def test_an_unwritable_results_file_fails_before_the_evaluation_pass(trained, tmp_path, monkeypatch, capsys):
    """``--json`` under a file: a one-line error before the pass (an hour at K = 500), not a traceback after
    it; a folder that does not exist yet is made."""
    def evaluation(*args, **kwargs):
        raise AssertionError("the evaluation pass ran before the results file was checked")

    (tmp_path / "file").write_text("")
    monkeypatch.setattr("textvae.training.train.evaluation", evaluation)
    line = fails(["evaluate", str(trained), "--no-generation", "--json", str(tmp_path / "file/e.json")], capsys)
    assert line == f"textvae: error: cannot write the results file {tmp_path / 'file/e.json'}: a file is in the way; " \
                   f"choose another --json"
    if Path("/proc").is_dir():  # a pseudo file system: writable for root by its modes, yet no file can be made
        line = fails(["evaluate", str(trained), "--no-generation", "--json", "/proc/e.json"], capsys)
        assert line.startswith("textvae: error: cannot write the results file /proc/e.json: ")
    monkeypatch.undo()
    main(["evaluate", str(trained), "--iw-samples", "2", "--no-generation", "--json", str(tmp_path / "new/e.json")])
    assert json.loads((tmp_path / "new/e.json").read_text())["train_steps"] == 2


def test_a_cache_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    """The synthetic corpus is made in the cache: a cache under a file is a one-line error naming TEXTVAE_CACHE."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "file/cache"))
    line = fails(["train", "--out_dir", str(tmp_path / "runs"), "--train.max_steps", "1"], capsys)
    assert line == (f"textvae: error: cannot write the cache folder {tmp_path / 'file/cache/synthetic'}: Not a "
                    f"directory; set TEXTVAE_CACHE to a writable folder")


def test_non_utf8_bytes(tmp_path, capsys):
    line = fails(train_on(tmp_path, folder(tmp_path, b"w1 w2\nw3 \xff w4\n")), capsys)
    assert re.search(r"train.txt: line 2: invalid UTF-8 byte 0xff at byte offset 9 \(column 4\)", line)


def test_over_long_lines_are_counted_and_skipped(tmp_path, corpus, caplog):
    data = tmp_path / "long"
    shutil.copytree(corpus, data)
    lines = (data / "train.txt").read_text().splitlines()
    (data / "train.txt").write_text("\n".join(lines[:30] + ["w1 " * 201] + lines[30:]) + "\n")
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(train_on(tmp_path, data))
    assert re.search(r"train.txt: 60 of 61 lines kept; 0 blank skipped; 1 longer than 200 words skipped", caplog.text)
    record = next(r for r in read_jsonl(tmp_path / "runs/x/metrics.jsonl") if r["split"] == "data")
    assert record["train_sentences"] == 60


def test_only_over_long_lines(tmp_path, capsys):
    line = fails(train_on(tmp_path, folder(tmp_path, b"w1 w2 w3\nw4 w5 w6\n"), "--data.max_length", "2"), capsys)
    assert "no usable lines (0 blank, 2 longer than max_length=2 words, 0 malformed); raise data.max_length" in line


def test_unknown_words_are_unk_and_reported(tmp_path, trained, caplog, capsys):
    other = write_corpus(tmp_path / "other", n_train=30, n_eval=20, vocab=40, seed=1)  # w30..w39 are unseen
    test_words = (other / "test.txt").read_text().split()
    unseen = sum(int(w[1:]) >= 30 for w in test_words) / len(test_words)
    assert unseen > 0.1
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["evaluate", str(trained / "model"), "--data", str(other), "--iw-samples", "2",
              "--json", str(tmp_path / "eval.json")])
    assert f"test {unseen:.2%}" in re.search(r"unk rate .*", caplog.text).group(0)
    out = capsys.readouterr().out
    assert "-ELBO" in out and re.search(rf"unknown words \(<unk>\)\s+{unseen:.2%}", out)  # in the table
    assert json.loads((tmp_path / "eval.json").read_text())["unk_rate"] == pytest.approx(unseen)
    assert f"{100 * unseen:.2f}% of the words of the test sentences are <unk>" in caplog.text  # and a warning


def test_evaluate_states_its_cost_first(trained, corpus, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["evaluate", str(trained), "--iw-samples", "3", "--no-generation", "--max-sentences", "10"])
    tokens = int(re.search(r"evaluating 10 of 20 test sentences \((\d+) tokens\) in fp32: IW-NLL with K = 3 samples "
                           r"decodes ([\d,]+) tokens", caplog.text).group(1))
    assert f"decodes {3 * tokens:,} tokens" in caplog.text
    out, err = capsys.readouterr()
    assert re.search(r"unknown words \(<unk>\)\s+0.00%", out)
    assert re.search(rf"evaluate test: .*/{tokens}.0 \[00:00<.*tok/s\]", err)  # a bar over the tokens, time left


@pytest.mark.parametrize("change,detail", [
    (["--model.latent_dim", "8"], r"has shape \(8, 4\), model expects \(8, 8\); changed since the checkpoint: "
                                  r"model.latent_dim 4 -> 8 \(to resume with the run's own settings: "
                                  r"textvae train \S+/runs/x/config.yaml --resume\)$"),
    (["--model.decoder.hidden_dim", "9"], r"model.decoder.hidden_dim 8 -> 9"),
    ("other vocabulary", r"decoder.embedding.weight has shape \(34, 8\), model expects \(44, 8\); "
                         r"changed since the checkpoint: data.name"),
])
def test_resume_with_another_model_or_vocabulary(tmp_path, trained, corpus, capsys, change, detail):
    shutil.copytree(trained, tmp_path / "runs/x")
    if change == "other vocabulary":
        change = ["--data.name", str(write_corpus(tmp_path / "other", n_train=60, n_eval=20, vocab=40))]
    line = fails([*train_on(tmp_path, corpus), *change, "--resume"], capsys)
    assert "does not fit this model (other vocabulary or shape?)" in line and re.search(detail, line), line


@pytest.mark.parametrize("damage", ["garble", "truncate", "model_file"])
def test_corrupted_checkpoint(tmp_path, trained, corpus, capsys, damage):
    shutil.copytree(trained, tmp_path / "runs/x")
    ckpt = tmp_path / "runs/x/checkpoint.safetensors"
    data = ckpt.read_bytes()
    if damage == "garble":
        ckpt.write_bytes(b"\x00\xff" * 100 + data[200:])
    elif damage == "truncate":
        ckpt.write_bytes(data[: len(data) // 2])
    else:  # a model's weights where the checkpoint should be
        shutil.copy(tmp_path / "runs/x/model/model.safetensors", ckpt)
    line = fails([*train_on(tmp_path, corpus), "--resume", "--train.max_steps", "3"], capsys)  # to train on
    expected = "is not a textvae checkpoint" if damage == "model_file" else "corrupted checkpoint"
    assert f"{ckpt}" in line and expected in line


def test_corrupted_model_weights(tmp_path, trained, capsys):
    shutil.copytree(trained, tmp_path / "run")
    weights = tmp_path / "run/model/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert f"cannot load weights {weights}" in fails(["evaluate", str(tmp_path / "run")], capsys)


def test_resume_and_restart_mistakes(tmp_path, trained, corpus, capsys):
    line = fails([*train_on(tmp_path, corpus), "--resume"], capsys)
    assert "--resume: no checkpoint in" in line and "start the run without --resume" in line
    shutil.copytree(trained, tmp_path / "runs/x")
    assert "already holds a run; pass --resume" in fails(train_on(tmp_path, corpus), capsys)


@pytest.mark.parametrize("args,expected", [
    (["--model.latnt_dim", "4"], "unrecognized arguments: --model.latnt_dim 4 (did you mean --model.latent_dim?)"),
    (["--train.max-steps", "4"], "unrecognized arguments: --train.max-steps 4 (did you mean --train.max_steps?)"),
    (["--train.max_steps", "3", "--train.max_steps_per_epoch", "4"],  # the one named, not one it contains
     "unrecognized arguments: --train.max_steps_per_epoch 4 (textvae train --help lists the settings)"),
    (["--model.frobnicate", "4"], "unrecognized arguments: --model.frobnicate 4 (textvae train --help lists the settings)"),
    (["--task", "dialogue"], "--task dialogue: the task is the recipe's (its task key), and this recipe's is sentences"),
    (["--model.latent_dim", "four"], "model.latent_dim must be an integer, got 'four'"),
    (["--train.max_steps", "x"], "train.max_steps must be an integer or null, got 'x'"),
    (["--objective.remedies", '[{"name": "bn_vae", "momentum": 2}]'], "remedy 'bn_vae': momentum must be at most 1, got 2"),
    (["--objective.remedies", '[{"name": "bn_vae", "eps": -1}]'], "remedy 'bn_vae': eps must be > 0, got -1"),
    (["--objective.remedies", '[{"name": "bn_vae", "gamma": .nan}]'], "remedy 'bn_vae': gamma must be a finite number, got nan"),
    (["--objective.remedies", '[{"name": "free_bits_li2019", "target_kl": .inf}]'],
     "remedy 'free_bits_li2019': target_kl must be a finite number, got inf"),
    (["--objective.remedies", '[{"name": "zforcing", "weight": -1}]'], "remedy 'zforcing': weight must be at least 0, got -1"),
    (["--optim.momentum", "2"], "optim.momentum must be < 1, got 2.0"),
    (["--model.lat", "4"], "unrecognized arguments: --model.lat 4"),  # no abbreviation of a setting's name
    (["--model.encodr.hidden_dim", "8"], "--model.encodr.hidden_dim 8 (did you mean --model.encoder.hidden_dim?)"),
    (["--data.max_pairs", "8"], "(--data.max_pairs is a setting of the dialogue task, and this recipe's is sentences; "
                                "textvae train --help lists the settings)"),
    (["--data.max_pairs=8"], "(--data.max_pairs is a setting of the dialogue task"),
    (["--objective.remedies", "{name: bn_vae}"], "objective.remedies must be a list ([a, b] on the command line, one "
                                                 "- item per entry in YAML), got \"{'name': 'bn_vae'}\""),
    (["--objective.remedies", '[{"name": "bow", "foo": 1}]'], "remedy 'bow': unknown parameter(s) ['foo']"),
    (["--name", ""], "name '': a run's name is its folder under out_dir; give a folder name"),
    (["--data.batch_size", "0"], "data.batch_size must be at least 1, got 0"),
    (["--train.log_every", "0"], "train.log_every must be at least 1, got 0"),
    (["--optim.lr", "-1"], "optim.lr must be > 0, got -1.0"),
    (["--model.latent_dim", "-4"], "model.latent_dim must be at least 0, got -4"),
    (["--data.max_sentences", "0"], "data.max_sentences must be at least 1, got 0"),
    (["--model.decoder.hidden_dim", "0"], "model.decoder.hidden_dim must be at least 1, got 0"),
    (["--model.emb_dim", "-5"], "model.emb_dim must be at least 1, got -5"),
    (["--train.threads", "-1"], "train.threads must be at least 1, got -1"),
    (["--model.encoder.dropout", "1.5"], "model.encoder.dropout must be at most 1, got 1.5"),
    (["--optim.betas", "[0.9, 1.0]"], "optim.betas must be < 1, got (0.9, 1.0)"),
    (["--optim.name", "rmsprop"], "unknown optimizer 'rmsprop'; valid: adam, sgd"),
    (["--data.long_lines", "cut"], "long_lines must be one of ('skip', 'truncate'), got 'cut'"),
])
def test_bad_config_values(tmp_path, corpus, capsys, args, expected):
    assert expected in fails([*train_on(tmp_path, corpus), *args], capsys)


def test_a_setting_of_the_wrong_type_in_a_configuration_built_in_python_is_named():
    cfg = RunConfig()
    cfg.train.max_steps = "five"  # no parser between the caller and the loop
    with pytest.raises(TextVAEError, match=r"^train\.max_steps must be a number, got five$"):
        check_ranges(cfg)
    with pytest.raises(AttributeError, match=r"^ModelConfig has no setting 'latnt_dim' \(did you mean latent_dim\?\)$"):
        cfg.model.latnt_dim = 8  # a typo is not a new attribute the run would ignore
    dialogue = CVAERunConfig()
    dialogue.optim.lr = 0.5  # a subclass's settings include its parent's
    with pytest.raises(AttributeError, match="DialogueOptimConfig has no setting 'lrr'"):
        dialogue.optim.lrr = 0.5


def test_a_setting_of_the_other_task_says_so(capsys):
    """A dialogue run's cap is data.max_pairs; the sentence task's data.max_sentences is named as the other's."""
    assert fails(["train", "dailydialog/cvae", "--data.max_sentences", "8"], capsys).endswith(
        "(--data.max_sentences is a setting of the sentences task, and this recipe's is dialogue; "
        "textvae train RECIPE --help lists the settings)")


def test_a_latent_model_on_a_corpus_too_small_to_evaluate_stops_before_its_first_step(tmp_path, capsys):
    """A file of 20 lines splits into 18 / 1 / 1: a VAE's AU and MI need 2 validation sentences, so the run
    stops before it trains, leaving no folder; the language model, which has neither, trains."""
    text = tmp_path / "twenty.txt"
    text.write_text("".join(f"the cat {i} sat\n" for i in range(20)))
    line = fails(train_on(tmp_path, text), capsys)
    assert line == ("textvae: error: the valid split holds 1 example(s): a latent model's figures (AU, MI) need "
                    "at least 2 in the valid and test splits; give the corpus more lines")
    assert not (tmp_path / "runs" / "x").exists()
    main(train_on(tmp_path, text, "--model.latent_dim", "0", "--train.iw_samples_final", "0"))
    assert (tmp_path / "runs" / "x" / "model").is_dir()


def test_a_run_folder_where_another_folder_is_meant_says_which(tmp_path, corpus, trained, capsys):
    """A run folder given as a recipe or as model.encoder_from, and a run's model folder given to plot or
    compare: each error names the folder meant."""
    assert fails(["train", str(trained), "--resume"], capsys) == \
        f"textvae: error: {trained} is a run folder; give its settings file, {trained / 'config.yaml'}"
    assert fails(train_on(tmp_path, corpus, "--model.encoder_from", str(trained)), capsys) == \
        f"textvae: error: model.encoder_from {trained} is a run folder; give the model folder in it, {trained / 'model'}"
    for command, reads in (("plot", "metrics.jsonl"), ("compare", "config.yaml")):
        assert fails([command, str(trained / "model")], capsys) == \
            f"textvae: error: {trained / 'model'}: no {reads} here; {command} takes the run folder it is in, {trained}"


def test_recipes_of_two_tasks_are_refused(tmp_path, capsys):
    line = fails(["train", "ptb/vae", "--config", "dailydialog/cvae"], capsys)
    assert line.endswith("dailydialog/cvae.yaml is a dialogue recipe, and the first one "
                         f"({packaged_file('recipe', 'ptb/vae')}) a sentences one; a run has one task")
    overlay = tmp_path / "overlay.yaml"  # an overlay that names no task takes the first recipe's
    overlay.write_text("train: {max_steps: 5}\n")
    cfg, _ = parse_run_config(["dailydialog/cvae", "--config", str(overlay)])
    assert isinstance(cfg, CVAERunConfig) and cfg.train.max_steps == 5
    overlay.write_text("train: {max_steps: 5\n")  # and a broken one is named as such
    assert "not valid YAML" in fails(["train", "dailydialog/cvae", "--config", str(overlay)], capsys)


def test_a_recipe_may_spell_its_keys_dotted(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model.latent_dim: 3\nmodel.encoder.hidden_dim: 5\n")
    cfg, _ = parse_run_config([str(recipe)])
    assert (cfg.model.latent_dim, cfg.model.encoder.hidden_dim) == (3, 5)
    recipe.write_text("model.latnt_dim: 3\n")
    with pytest.raises(TextVAEError, match=r"unknown key model.latnt_dim \(did you mean model.latent_dim\?\)"):
        parse_run_config([str(recipe)])


@pytest.mark.parametrize("text,expected", [
    ("model:\n  latnt_dim: 4\n", "recipe {recipe}: unknown key model.latnt_dim (did you mean model.latent_dim?); "
                                   "valid in model: emb_dim, latent_dim, encoder,"),
    ("model:\n  encoder: {hidden: 4}\n", "recipe {recipe}: unknown key model.encoder.hidden; valid in model.encoder: "
                                          "type, hidden_dim,"),
    ("modle:\n  latent_dim: 4\n", "recipe {recipe}: unknown key modle (did you mean model?); valid: name, out_dir,"),
    ("model:\n  latent_dim: four\n", "model.latent_dim must be an integer, got 'four'"),
    ("model: [1, 2\n", "recipe {recipe}: not valid YAML at line 2, column 1: expected ',' or ']'"),
    ("", "recipe {recipe} is empty; a recipe sets some of the sections data, model, objective, optim, train"),
    ("- a\n- b\n", "recipe {recipe}: a recipe is a mapping of sections to settings (model: {{latent_dim: 32}}), not a list"),
])
def test_bad_recipe_files(tmp_path, capsys, text, expected):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    assert expected.format(recipe=recipe) in fails(["train", str(recipe), "--out_dir", str(tmp_path)], capsys)


def numeric_fields(cls: type, prefix: str = "") -> list[tuple[type, str]]:
    """(section class, dotted key) of every int / float setting of a configuration, nested ones too."""
    found = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            found += numeric_fields(hint, f"{prefix}{name}.")
        elif name != "RANGES" and {int, float} & set(typing.get_args(hint) or (hint,)):
            found.append((cls, prefix + name))
    return found


@pytest.mark.parametrize("config", [RunConfig, CVAERunConfig])
def test_every_numeric_setting_declares_its_range(config):
    fields = numeric_fields(config)
    assert ("model.latent_dim" in [k for _, k in fields]) and any(k == "optim.betas" for _, k in fields)
    undeclared = [key for cls, key in fields if key.rsplit(".", 1)[-1] not in cls.RANGES]
    assert not undeclared


def test_dataset_that_does_not_exist(tmp_path, capsys):
    line = fails(train_on(tmp_path, "ptbb"), capsys)
    assert "data.name 'ptbb' is not a corpus (dailydialog, ptb, snli, yahoo, yelp, yelp_short), a synthetic one (synthetic, synthetic_z)" in line


def test_evaluate_names_the_data_the_user_gave(trained, capsys):
    line = fails(["evaluate", str(trained), "--data", "/no/such.txt", "--no-generation"], capsys)
    assert line.startswith("textvae: error: --data /no/such.txt is not a corpus (dailydialog, ptb,")


@pytest.mark.parametrize("remedy", ["aggressive", "bn_vae", "delta_vae", "bow", "zforcing", "free_bits_li2019"])
def test_latent_remedy_on_a_language_model(tmp_path, corpus, capsys, remedy):
    line = fails([*train_on(tmp_path, corpus), "--model.latent_dim", "0",
                  "--objective.remedies", f'[{{"name": "{remedy}"}}]'], capsys)
    assert f"remedy '{remedy}' acts on the latent z, but model.latent_dim 0 is the language model" in line


def test_input_remedy_on_a_language_model(tmp_path, corpus):
    main([*train_on(tmp_path, corpus), "--model.latent_dim", "0", "--objective.remedies", '[{"name": "word_dropout"}]'])
    assert (tmp_path / "runs/x/model/model.safetensors").is_file()


@pytest.mark.parametrize("argv,expected", [
    (["sample", "{model}", "--n", "-3"], "--n must be at least 1, got -3"),
    (["sample", "{model}", "--temperature", "0"], "--temperature must be > 0, got 0.0"),
    (["reconstruct", "{model}", "w1", "--top-p", "0.5"],
     "--top-p is an option of --method sample, and --method greedy would ignore it"),
    (["sample", "{model}", "--beam-size", "3"], "--beam-size is an option of --method beam, and --method sample would"),
    (["respond", "{model}", "--context", "hi", "--temperature", "0.5"],
     "--temperature is an option of --method sample, and --method greedy would ignore it"),
    (["respond", "{model}", "--context", "hi", "--max-len", "0"], "--max-len must be at least 1, got 0"),
    (["respond", "{model}", "--context", "hi", "--n", "0"], "--n must be at least 1, got 0"),
    (["interpolate", "{model}", "w1", "w2", "--method", "beam", "--temperature", "2"],
     "--temperature is an option of --method sample, and --method beam would ignore it"),
    (["interpolate", "{model}", "w1", "w2", "--steps", "1"], "--steps must be at least 2, got 1"),
    (["reconstruct", "{model}", "w1", " "], "sentence 2 of the arguments is blank; give words (or drop the empty argument)"),
    (["interpolate", "{model}", "", "w2"], "sentence 1 of the arguments is blank"),
    (["evaluate", "{model}", "--iw-samples", "-1"], "--iw-samples must be at least 0, got -1"),
    (["evaluate", "{model}", "--device", "gpu"], "unknown --device 'gpu'; valid: auto, cpu, cuda, cuda:N"),
    (["sample", "{model}", "--seed", "99999999999999999999"], "--seed must be < 9.22337e+18, got 99999999999999999999"),
    (["train", "--train.seed", "-1"], "train.seed must be at least 0, got -1"),
])
def test_bad_command_flags(trained, capsys, argv, expected):
    assert expected in fails([a.format(model=trained / "model") for a in argv], capsys)


@pytest.mark.parametrize("command", [["evaluate"], ["sample"], ["reconstruct", "hi there"], ["interpolate", "a", "b"]])
def test_sentence_commands_on_a_dialogue_model(tmp_path, capsys, command):
    from tests.test_dialogue import tiny

    tiny().save_pretrained(tmp_path / "model")
    line = fails([command[0], str(tmp_path / "model"), *command[1:]], capsys)
    if command[0] == "evaluate":  # its report is the run's: the run folder is needed, and said so
        assert line == (f"textvae: error: {tmp_path / 'model'}: a dialogue CVAE's model folder on its own; `textvae "
                        f"evaluate` takes its run folder, whose recipe's eval section decides the report (`textvae "
                        f"respond` answers a context with the model folder alone)")
    else:
        assert f"{tmp_path / 'model'}: this is a dialogue CVAE, which sample, reconstruct and interpolate" in line
        assert "use `textvae respond" in line


def test_a_dialogue_report_setting_on_a_sentence_model(trained, capsys):
    line = fails(["evaluate", str(trained), "--eval.max_pairs", "3"], capsys)
    assert line == ("textvae: error: --eval.max_pairs: a setting of a dialogue run's report (its recipe's eval section); "
                    "a sentence model's evaluation takes the options that textvae evaluate --help lists")


def test_respond_on_a_sentence_model(trained, capsys):
    line = fails(["respond", str(trained / "model"), "--context", "hi"], capsys)
    assert line == (f"textvae: error: {trained / 'model'}: not a dialogue CVAE but a sentence VAE or language model, "
                    f"which `textvae sample`, `reconstruct` and `evaluate` read")


def test_output_folder_that_cannot_be_written(tmp_path, corpus, capsys):
    """A path under a regular file stands for a read-only file system (both are an OSError on
    mkdir; root ignores permission bits, so this is the case a test can make anywhere)."""
    (tmp_path / "file").write_text("")
    argv = ["train", *tiny_args(tmp_path / "file" / "runs", "x", corpus, "--train.max_steps", "2")]
    line = fails(argv, capsys)
    assert f"cannot write the run folder {tmp_path / 'file/runs/x'}: Not a directory" in line


def test_disk_full_while_writing_a_checkpoint(tmp_path, trained, corpus, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    shutil.copytree(trained, tmp_path / "runs/x")
    ckpt = tmp_path / "runs/x/checkpoint.safetensors"
    before = ckpt.read_bytes()

    def full_disk(tensors, filename, metadata=None):  # what safetensors raises on ENOSPC, half a file left
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    line = fails([*train_on(tmp_path, corpus), "--train.max_steps", "3", "--train.checkpoint_every", "1", "--resume"],
                 capsys)
    assert (f"cannot write checkpoint {ckpt}.tmp: Error while serializing: I/O error: No space left on device "
            f"(os error 28); the previous checkpoint {ckpt} is intact; free space (or fix the cause) and resume: "
            f"textvae train {tmp_path / 'runs/x/config.yaml'} --resume") in line
    assert ckpt.read_bytes() == before and not Path(f"{ckpt}.tmp").exists()
    monkeypatch.undo()
    main(["train", str(tmp_path / "runs/x/config.yaml"), "--resume", "--train.max_steps", "3"])  # the command works
    assert ckpt.read_bytes() != before
    # the first checkpoint of a new run: nothing to resume, so the command given starts the run again
    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("textvae.training.checkpoint.write_safetensors", no_space)
    new = tmp_path / "new"
    line = fails([*train_on(new, corpus), "--train.max_steps", "3", "--train.checkpoint_every", "1"], capsys)
    assert line.endswith(f"there is no earlier checkpoint ({new / 'runs/x/checkpoint.safetensors'}); free space (or "
                         f"fix the cause) and start it again: textvae train {new / 'runs/x/config.yaml'}")
    monkeypatch.undo()
    main(["train", str(new / "runs/x/config.yaml"), "--train.max_steps", "3"])  # the command works


def test_resumed_run_says_from_which_step(tmp_path, trained, corpus, caplog):
    shutil.copytree(trained, tmp_path / "runs/x")
    with caplog.at_level(logging.INFO, logger="textvae"):
        main([*train_on(tmp_path, corpus), "--train.max_steps", "3", "--resume"])
    assert f"resuming {tmp_path / 'runs/x/checkpoint.safetensors'} after step 2 (epoch 2, batch 1 next)" in caplog.text


def test_reconstruct_names_unknown_words(trained, caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="textvae"):
        main(["reconstruct", str(trained / "model"), "w1 zebra w2 yak", "w3 <unk> w4"])
    # <unk> itself (PTB's text has it) is the vocabulary's own token, not a word it lacks
    assert "2 word(s) are not in the model's vocabulary and are read as <unk>: yak, zebra" in caplog.text
    assert capsys.readouterr().out.count("->") == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="textvae"):
        main(["interpolate", str(trained / "model"), "w1 w2", "w3 w4"])
    assert "vocabulary" not in caplog.text


def test_end_of_training_says_where_and_suggests_a_remedy_on_collapse(tmp_path, corpus, capsys):
    main(train_on(tmp_path, corpus))  # two steps of a tiny VAE: no active unit
    out = capsys.readouterr().out
    run = tmp_path / "runs/x"
    assert f"run saved in {run}: best model {run / 'model'}" in out
    command = re.search(r"the latent space collapsed \(0 active units\); to try a remedy: (.*)", out).group(1)
    assert command.startswith(f"textvae train {run / 'config.yaml'} --name x-bn_vae --objective.remedies ")
    assert command.endswith(" --model.encoder_init torch")  # the default he2019 init leaves BN-VAE no variance
    main(shlex.split(command)[1:])  # the command runs
    assert (tmp_path / "runs/x-bn_vae/model/model.safetensors").is_file()


def test_the_suggested_remedy_is_added_to_those_the_run_has():
    from textvae.training.epilogue import run_epilogue

    cfg = RunConfig()
    cfg.objective.remedies, cfg.model.encoder_init = [{"name": "bn_vae", "gamma": 0.5}], "torch"
    lines = run_epilogue(Path("runs/x"), {"au": 0, "latent_dim": 4, "train_steps": 9}, cfg).splitlines()
    assert lines[1].startswith("the latent space collapsed (0 active units); ")  # no budget cut it short
    cfg.train.max_steps = 9  # a budget stopped it after whole epochs: no caveat either; before the first, one
    assert run_epilogue(Path("runs/x"), {"au": 0, "latent_dim": 4, "train_steps": 9, "train_epochs": 2},
                        cfg).splitlines()[1].startswith("the latent space collapsed (0 active units); ")
    assert run_epilogue(Path("runs/x"), {"au": 0, "latent_dim": 4, "train_steps": 9, "train_epochs": 0},
                        cfg).splitlines()[1].startswith(
        "the latent space collapsed (0 active units after 9 steps, before its first epoch ended, where train.max_steps "
        "stopped it: it may not have started encoding yet); to try a remedy: ")
    cfg.train.max_steps = None
    assert shlex.split(lines[1].split("to try a remedy: ")[1]) == [
        "textvae", "train", "runs/x/config.yaml", "--name", "x-delta_vae", "--objective.remedies",
        '[{"name": "bn_vae", "gamma": 0.5}, {"name": "delta_vae"}]']
    assert len(run_epilogue(Path("runs/x"), {"au": 1, "latent_dim": 4, "train_steps": 9}, cfg).splitlines()) == 1
    # free bits would be a second owner of the KL term beside encoder pretraining: no suggestion then
    cfg.objective.remedies = [{"name": "bn_vae"}, {"name": "delta_vae"}, {"name": "encoder_pretraining"}]
    assert len(run_epilogue(Path("runs/x"), {"au": 0, "latent_dim": 4, "train_steps": 9}, cfg).splitlines()) == 1
    # a vMF posterior: neither posterior transform applies, free bits does
    cfg.objective.remedies, cfg.model.posterior, cfg.model.prior = [], "vmf", "vmf_uniform"
    lines = run_epilogue(Path("runs/x"), {"au": 0, "latent_dim": 4, "train_steps": 9}, cfg).splitlines()
    assert '--name x-free_bits_li2019 --objective.remedies \'[{"name": "free_bits_li2019"}]\'' in lines[1]


def test_corpus_unknown_token_is_read_as_unk(tmp_path, caplog):
    data = write_corpus(tmp_path / "yahoo_like", n_train=60, n_eval=20)
    for name in ("train", "valid", "test"):
        lines = (data / f"{name}.txt").read_text().splitlines()
        (data / f"{name}.txt").write_text("\n".join(f"_UNK {line}" for line in lines) + "\n")
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(train_on(tmp_path, data))
    assert "'_UNK' looks like the corpus's own unknown-word token" in caplog.text
    assert "set data.unk_token: _UNK" in caplog.text and "unk rate train 0.00%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="textvae"):
        main([*train_on(tmp_path, data), "--name", "mapped", "--data.unk_token", "_UNK"])
    assert "looks like" not in caplog.text
    rate = float(re.search(r"unk rate train (\d+\.\d+)%", caplog.text).group(1))
    assert rate > 10  # one word in 2-12 is now <unk>


def test_untokenised_text_is_detected_and_pretokenised(tmp_path, caplog):
    data = tmp_path / "raw"
    data.mkdir()
    words = ["dog", "cat", "tree", "house", "river"]
    for name, n in (("train", 60), ("valid", 20), ("test", 20)):  # "the dog, the cat." and the like
        lines = [" ".join(f"the {words[(i + k) % 5]}{',' if k == 0 else ''}" for k in range(2)) + "." for i in range(n)]
        (data / f"{name}.txt").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(train_on(tmp_path, data))
    assert re.search(r"raw train: 60 of 60 lines have punctuation glued to words \('\w+,'\): the text looks "
                     r"untokenised", caplog.text) and "set data.pretokenize: bert" in caplog.text
    assert "vocabulary 15;" in caplog.text  # the, dog, dog, and dog. ... apart, and the 4 special tokens
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="textvae"):
        main([*train_on(tmp_path, data), "--name", "split", "--data.pretokenize", "bert"])
    assert "glued" not in caplog.text
    assert "vocabulary 12;" in caplog.text  # the, 5 words, "," and "."


def test_unknown_pretokenizer(tmp_path, corpus, capsys):
    line = fails([*train_on(tmp_path, corpus), "--data.pretokenize", "spacy"], capsys)
    assert "unknown data.pretokenize 'spacy'; valid: bert, whitespace" in line


def test_disk_full_while_writing_the_best_model(tmp_path, trained, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from textvae.models.textvae import TextVAE

    shutil.copytree(trained / "model", tmp_path / "model")
    weights = tmp_path / "model/model.safetensors"
    before = weights.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    model = TextVAE.from_pretrained(tmp_path / "model")
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(TextVAEError, match=rf"cannot write {re.escape(str(weights))}.tmp: .*No space left on device "
                                           r".*; any earlier model.safetensors there is intact"):
        model.save_weights(tmp_path / "model")
    assert weights.read_bytes() == before and not Path(f"{weights}.tmp").exists()


def test_training_into_a_folder_another_process_writes(tmp_path, corpus, capsys):
    from tests.test_study import held_elsewhere

    with held_elsewhere(tmp_path / "runs" / "x") as child:
        line = fails(train_on(tmp_path, corpus), capsys)
    assert f"{tmp_path / 'runs/x'} is being written by another process (pid {child.pid})" in line
    assert not (tmp_path / "runs" / "x").exists()


def test_a_range_takes_any_int_and_refuses_nan_and_infinity():
    from textvae.config import COUNT, SEED

    assert SEED.violation(10 ** 400) == f"must be < {2 ** 63:g}"  # an int too large for a float: no OverflowError
    assert COUNT.violation(10 ** 400) is None
    assert COUNT.violation(float("nan")) == COUNT.violation(float("inf")) == "must be a finite number"
