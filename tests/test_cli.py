"""The ``textvae`` commands on a tiny trained run: a saved config.yaml re-creates the run bit for
bit, ``evaluate`` reproduces the run's own test report, and the decoding commands print one
clean line per output."""
import json
import logging
import re
import shutil
import subprocess
import sys

import pytest
import torch

from textvae.cli import main
from textvae.config import setting_names
from textvae.tasks.base import TASKS
from textvae.tasks.runconfig import train_parser
from textvae.training.denormals import calling_thread_flushes
from textvae.training.logger import read_jsonl
from tests.conftest import needs_cpu_bf16
from tests.test_train import state_of, tiny_args, write_corpus


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(tmp / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp / "runs", "run", corpus, "--train.max_steps", "3")])
    return tmp / "runs" / "run"


def test_usage_errors(capsys):
    main(["--help"])
    assert "textvae train [RECIPE]" in capsys.readouterr().out
    for argv, given in (([], ""), (["fly"], "unknown command 'fly'; ")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip() == f"textvae: error: {given}choose a command: train, evaluate, " \
                                                  "sample, reconstruct, interpolate, respond, study, list, plot, " \
                                                  "compare (see textvae --help)"
    main(["--version"])
    assert re.fullmatch(r"textvae \d+\.\d+\.\d+\n", capsys.readouterr().out)
    # a command's bad option: one line naming the command, not argparse's usage block
    for argv, message in ((["evaluate", "run", "--split", "dev"], "textvae evaluate: argument --split: invalid choice: "
                                                                   "'dev' (choose from 'train', 'valid', 'test')"),
                          (["respond", "run"], "textvae respond: the following arguments are required: --context")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        command = " ".join(argv[:1])
        assert stop.value.code == 2
        assert capsys.readouterr().err == f"textvae: error: {message} (see textvae {command} --help)\n"


def test_a_reader_that_stops_early_is_no_error():
    """``textvae ... | head``: the closed pipe ends the command quietly, as a SIGPIPE would."""
    code = ("from textvae import cli; cli.cmd_list = lambda argv: [print('x' * 1000) for _ in range(10000)]; "
            "cli.main(['list'])")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in proc.stderr.read().decode()


def test_saved_config_recreates_the_run(run, tmp_path):
    main(["train", str(run / "config.yaml"), "--name", "again", "--out_dir", str(tmp_path)])
    again, original = state_of(tmp_path / "again/checkpoint.safetensors"), state_of(run / "checkpoint.safetensors")
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)


def test_evaluate_reproduces_the_test_report(run, capsys):
    main(["evaluate", str(run), "--batch-size", "128", "--iw-samples", "4"])  # the run's eval_batch_size, K
    out = capsys.readouterr().out
    assert "NLL (IW, K=4)" in out and f"results written to {run / 'eval_test.json'}" in out
    results = json.loads((run / "eval_test.json").read_text())
    (report,) = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "test"]
    for key in ("neg_elbo", "rec", "kl", "iw_nll", "mi_batch", "mi_dataset", "au", "n_tokens"):
        assert results[key] == pytest.approx(report[key], rel=1e-6, abs=1e-9), key
    assert not calling_thread_flushes()  # the run's denormal mode (flushed) held only while it evaluated


def test_evaluate_bf16_where_the_cpu_has_none_is_a_one_line_error(run, tmp_path, capsys, cpu_without_bf16):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(run), "--precision", "bf16", "--json", str(tmp_path / "e.json")])
    assert stop.value.code == 2
    assert re.fullmatch(r"textvae: error: --precision bf16: this CPU \(.+\) has no bfloat16 arithmetic "
                        r"\(on x86 it needs AVX-512\); use --precision fp32", capsys.readouterr().err.strip())
    assert not (tmp_path / "e.json").exists()


@needs_cpu_bf16
def test_evaluate_bf16_is_labelled_and_close_to_fp32(run, tmp_path, capsys):
    """--precision bf16 changes rounding only: the same seeded figures to bf16's ~3 digits, and the
    JSON says which precision produced them."""
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        main(["evaluate", str(run), "--iw-samples", "4", "--no-generation", "--precision", precision,
              "--json", str(out)])
        results[precision] = json.loads(out.read_text())
    capsys.readouterr()
    assert results["bf16"]["precision"] == "bf16" and results["fp32"]["precision"] == "fp32"
    for key in ("neg_elbo", "rec", "iw_nll"):
        assert results["bf16"][key] != results["fp32"][key], key  # bf16 really ran
        assert results["bf16"][key] == pytest.approx(results["fp32"][key], rel=5e-3), key
    assert results["bf16"]["kl"] == pytest.approx(results["fp32"]["kl"], rel=5e-3, abs=1e-6)


@needs_cpu_bf16
def test_evaluate_of_a_bf16_run_computes_in_bf16_as_its_test_report_did(tmp_path, capsys):
    """Without --precision, the run's train.precision: its test report's figures to the last digit."""
    from textvae.training.logger import final_report

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp_path, "b", corpus, "--train.max_steps", "2", "--train.iw_samples_final", "3",
                              "--train.precision", "bf16")])
    report = final_report(read_jsonl(tmp_path / "b" / "metrics.jsonl"))
    main(["evaluate", str(tmp_path / "b"), "--no-generation", "--json", str(tmp_path / "e.json")])
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["precision"] == "bf16"
    for key in ("iw_nll", "neg_elbo", "kl", "mi_dataset", "au"):
        assert figures[key] == pytest.approx(report[key], rel=1e-12, abs=1e-12), key


def test_evaluate_of_a_bf16_run_where_the_cpu_has_none_says_how(run, tmp_path, capsys, cpu_without_bf16):
    copy = tmp_path / "bf16run"
    shutil.copytree(run, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("precision: fp32", "precision: bf16"))
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(copy), "--no-generation"])
    assert stop.value.code == 2
    assert re.fullmatch(r"textvae: error: .*bf16run trained in bf16 \(train.precision\), which cpu here cannot "
                        r"compute \(no bfloat16 arithmetic\); evaluate it with --precision fp32 \(figures that "
                        r"differ from its test report by rounding\)", capsys.readouterr().err.strip())
    main(["evaluate", str(copy), "--no-generation", "--precision", "fp32", "--iw-samples", "2"])
    assert json.loads((copy / "eval_test.json").read_text())["precision"] == "fp32"


def test_sample_is_clean_and_seeded(run, capsys):
    main(["sample", str(run / "model"), "--n", "3", "--seed", "1"])
    first = capsys.readouterr().out.splitlines()
    main(["sample", str(run / "model"), "--n", "3", "--seed", "1"])
    assert capsys.readouterr().out.splitlines() == first and len(first) == 3
    assert not any(tok in line for line in first for tok in ("<s>", "<pad>", "</s>"))
    # each sentence its own stream: fewer at the same seed are the first ones, another seed others
    for n in (1, 2):
        main(["sample", str(run / "model"), "--n", str(n), "--seed", "1"])
        assert capsys.readouterr().out.splitlines() == first[:n]
    main(["sample", str(run / "model"), "--n", "3", "--seed", "2"])
    assert capsys.readouterr().out.splitlines() != first


@pytest.mark.parametrize("flags,method", [([], "sample"), (["--method", "greedy"], "greedy"),
                                          (["--method=greedy"], "greedy"), (["--meth", "beam"], "beam")])
def test_sample_decodes_by_sampling_unless_told(run, monkeypatch, capsys, flags, method):
    import textvae.models.decoding as decoding

    used, real = [], decoding.decode_sentences
    monkeypatch.setattr(decoding, "decode_sentences", lambda *a, **kw: used.append(kw["method"]) or real(*a, **kw))
    main(["sample", str(run / "model"), "--n", "2", *flags])
    assert used == [method]


def test_reconstruct_and_interpolate(run, capsys, tmp_path):
    main(["reconstruct", str(run / "model"), "w1 w2 w3", "w4 w5"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["w1 w2 w3", "->"], ["w4 w5", "->"]]
    (tmp_path / "more.txt").write_text("w6 w7\n")
    # sentences after --file F too: the arguments' first, then the file's
    main(["reconstruct", str(run / "model"), "w1 w2 w3", "--file", str(tmp_path / "more.txt"), "w4 w5"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["w1 w2 w3", "w4 w5", "w6 w7"]
    main(["interpolate", str(run / "model"), "w1 w2 w3", "w4 w5", "--steps", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["0.00", "0.50", "1.00"]


def test_evaluate_reproduces_the_runs_test_report(tmp_path, capsys):
    """Of a run capped by data.max_sentences, with its own K and evaluation batch: the same sentences and
    the same random numbers, so the same figures; ``--data`` another corpus (here the same one) reads each
    split whole, and one text file is evaluated whole."""
    from textvae.training.logger import final_report

    corpus = write_corpus(tmp_path / "corpus", n_train=80, n_eval=30)
    main(["train", *tiny_args(tmp_path, "r", corpus, "--train.max_steps", "2", "--data.max_sentences", "20",
                              "--train.iw_samples_final", "3", "--data.eval_batch_size", "7")])
    report = final_report(read_jsonl(tmp_path / "r" / "metrics.jsonl"))
    main(["evaluate", str(tmp_path / "r"), "--no-generation", "--json", str(tmp_path / "e.json")])
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["n_sentences"] == report["n_sentences"] == 20 and figures["iw_samples"] == 3
    for key in ("iw_nll", "neg_elbo", "kl", "mi_dataset", "au"):
        assert figures[key] == pytest.approx(report[key], rel=1e-12, abs=1e-12), key
    main(["evaluate", str(tmp_path / "r"), "--no-generation", "--max-sentences", "500"])  # more than there are
    assert json.loads((tmp_path / "r" / "eval_test.json").read_text())["iw_nll"] == figures["iw_nll"]
    main(["evaluate", str(tmp_path / "r"), "--no-generation", "--data", str(corpus), "--json", str(tmp_path / "w.json")])
    assert json.loads((tmp_path / "w.json").read_text())["n_sentences"] == 30
    text = tmp_path / "mine.txt"
    text.write_text("w1 w2 w3\nw4 w5\nw6 w7 w8 w9\n")
    main(["evaluate", str(tmp_path / "r"), "--no-generation", "--data", str(text), "--json", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text())["n_sentences"] == 3
    with pytest.raises(SystemExit):  # a file has no splits to choose from
        main(["evaluate", str(tmp_path / "r"), "--data", str(text), "--split", "valid"])
    assert capsys.readouterr().err.strip().endswith(
        f"--split valid: --data {text} is one text file, evaluated whole; --split chooses a split of a corpus")
    text.write_text("w1 w2 w3\n")
    with pytest.raises(SystemExit):  # before the IW pass, not after it
        main(["evaluate", str(tmp_path / "r"), "--data", str(text)])
    assert capsys.readouterr().err.strip().endswith(
        f"1 sentence(s) to evaluate (test of {text}): the latent figures (AU, MI) need at least 2")


def test_a_runs_model_folder_is_evaluated_as_its_run(tmp_path):
    """``evaluate RUN/model`` finds the run around it: its corpus without ``--data``, and the figures of
    ``evaluate RUN``."""
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp_path, "r", corpus, "--train.max_steps", "1")])
    figures = []
    for folder in (tmp_path / "r", tmp_path / "r/model"):  # the results of both where the run's are
        main(["evaluate", str(folder), "--iw-samples", "2", "--no-generation"])
        figures.append(json.loads((tmp_path / "r" / "eval_test.json").read_text()))
    assert not (tmp_path / "r/model/eval_test.json").exists()
    assert figures[0].pop("model") != figures[1].pop("model") and figures[0] == figures[1]
    assert figures[0]["data"] == str(corpus) and figures[0]["train_steps"] == 1
    # a model folder copied beside another config.yaml (no run's log or checkpoint there) is a model folder
    shutil.copytree(tmp_path / "r/model", tmp_path / "copy/model")
    (tmp_path / "copy/config.yaml").write_text("- not a run's settings\n")
    main(["evaluate", str(tmp_path / "copy/model"), "--iw-samples", "2", "--no-generation", "--data", str(corpus)])
    assert (tmp_path / "copy/model" / f"eval_{corpus.name}_test.json").is_file()


def test_inputs_are_read_as_the_run_read_its_corpus(tmp_path, caplog):
    """A run trained with ``data.lowercase`` reads "W1 W2" as "w1 w2", from its run folder or its model
    folder; a model folder on its own takes the text as given."""
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp_path, "low", corpus, "--data.lowercase", "true", "--train.max_steps", "1")])
    for folder in (tmp_path / "low", tmp_path / "low/model"):
        caplog.clear()
        main(["reconstruct", str(folder), "W1 W2"])
        assert "read as <unk>" not in caplog.text, folder
    shutil.copytree(tmp_path / "low/model", tmp_path / "alone")
    main(["reconstruct", str(tmp_path / "alone"), "W1 W2"])
    assert "2 word(s) are not in the model's vocabulary and are read as <unk>: W1, W2" in caplog.text


def test_language_model_has_no_latent_space(tmp_path, capsys, caplog):
    """Its figures are the registry's that need no latent: the test report's IW-NLL is its exact NLL
    (one sample; equal to its -ELBO, KL 0), the same figure textvae evaluate gives."""
    from textvae.training.logger import final_report

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp_path, "lm", corpus, "--model.latent_dim", "0", "--train.max_steps", "1",
                              "--train.iw_samples_final", "50")])
    report = final_report(read_jsonl(tmp_path / "lm" / "metrics.jsonl"))
    assert report["iw_samples"] == 1 and report["iw_nll"] == pytest.approx(report["neg_elbo"], abs=1e-9)
    assert not {"au", "mi_dataset", "mi_batch", "kl_per_dim"} & set(report)
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["evaluate", str(tmp_path / "lm"), "--no-generation", "--json", str(tmp_path / "eval.json")])
    # what the pass costs: one sample, not 50; and the figures named as exact
    assert "the exact NLL (a language model: no sampling) decodes" in caplog.text
    table = capsys.readouterr().out
    assert "NLL (exact)" in table and "PPL (exact)" in table and "(IW" not in table
    assert json.loads((tmp_path / "eval.json").read_text())["iw_nll"] == pytest.approx(report["iw_nll"], abs=1e-9)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["reconstruct", str(tmp_path / "lm/model"), "w1 w2"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "textvae: error: this model is a language model: it has no latent space"


@pytest.mark.parametrize("recipe,latent_dim", [([], "8"), (["recipes/ptb/vae.yaml"], "32")])
def test_train_help_shows_the_defaults_a_run_uses(capsys, monkeypatch, recipe, latent_dim):
    """A bare ``textvae train`` runs the embedded synthetic recipe (latent 8, embeddings 64)."""
    from tests.test_train import REPO

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as stop:
        main(["train", *recipe, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    # the setting's own default, after its description and before the next setting's option
    assert re.search(rf"--model\.latent_dim LATENT_DIM (?:(?!--).)*\(type: int, default: {latent_dim}\)", help_text)


@pytest.mark.parametrize("task", TASKS.names())
def test_every_train_setting_has_a_description(task):
    """``textvae train --help`` describes every setting of every task: its help is the docstring under
    its field in the configuration dataclasses (jsonargparse adds the type and the default)."""
    config_class = TASKS.get(task).config_class
    helps = {option: action.help for action in train_parser(config_class)._actions for option in action.option_strings}
    type_and_default = re.compile(r"\s*\(type: .*, default: .*\)\s*$", re.DOTALL)
    undescribed = [name for name in setting_names(config_class)
                   if not type_and_default.sub("", helps.get(f"--{name}") or "").strip()]
    assert setting_names(config_class) and not undescribed, f"{task}: settings without a docstring: {undescribed}"


def test_plot_draws_each_runs_logged_curves(run, tmp_path, capsys, monkeypatch):
    """Two runs of the same folder name are told apart by their paths; each line is its log's."""
    import shutil

    import textvae.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_figure", lambda *size, new=plots._figure: figures.append(new(*size)) or figures[-1])
    twin = tmp_path / "elsewhere" / run.name
    shutil.copytree(run, twin)
    main(["plot", str(run), str(twin), "--out", str(tmp_path / "c.png")])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'c.png'}"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    fig = figures[-1]
    assert fig._suptitle.get_text() == "validation figures during training"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [str(run), str(twin)]
    expected = plots.run_curves(read_jsonl(run / "metrics.jsonl"))["-ELBO (nats, NLL bound)"]
    line = fig.axes[3].get_lines()[0]
    assert expected and list(line.get_xdata()) == sorted(expected)
    assert list(line.get_ydata()) == [expected[s] for s in sorted(expected)]
    # a folder of runs (a study's variant: its seeds) is its runs
    main(["plot", str(twin.parent), str(run), "--out", str(tmp_path / "d.png")])
    assert [t.get_text() for t in figures[-1].legends[0].get_texts()] == [str(twin), str(run)]


@pytest.mark.parametrize("argv, message", [
    (["{tmp}"], "{tmp}: no metrics.jsonl here or in its folders; plot takes run folders (runs/NAME)"),
    (["{tmp}/study"], "{tmp}/study is a study's folder: its figures are in {tmp}/study/plots (curves.png; "
                      "`textvae study ... --report` draws them again); plot takes run folders, such as "
                      "{tmp}/study/VARIANT or {tmp}/study/VARIANT/seed1"),
    (["{run}", "--out", "{tmp}/no/such/c.png"], "cannot write {tmp}/no/such/c.png: No such file or directory"),
])
def test_plot_errors(run, tmp_path, capsys, argv, message):
    (tmp_path / "study" / "plots").mkdir(parents=True)
    (tmp_path / "study" / "results.json").write_text("{}")
    (tmp_path / "study" / "plots" / "curves.png").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        main(["plot", *(a.format(tmp=tmp_path, run=run) for a in argv)])
    assert stop.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


def test_compare_tables_runs_with_the_settings_that_differ(tmp_path, capsys, caplog):
    """Each row is the run's own test record; the last column names exactly what differs from the
    first run (not its name, folder or threads, nor a setting added since a run was made)."""
    import yaml

    from textvae.study import finished_report, run_figures

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp_path, "run", corpus, "--train.max_steps", "3")])
    main(["train", *tiny_args(tmp_path, "fb", corpus, "--train.max_steps", "3", "--train.threads", "2",
                              "--objective.remedies", '[{"name": "free_bits_li2019", "target_kl": 1}]')])
    main(["train", *tiny_args(tmp_path, "cut", corpus, "--train.max_steps", "2")])
    metrics = tmp_path / "cut" / "metrics.jsonl"  # unfinished: no test record
    metrics.write_text("".join(l for l in metrics.read_text().splitlines(True) if '"split": "test"' not in l))
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["optim"]["cycle_lr_stairs"]  # as if made before the setting existed
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    main(["compare", str(old), str(tmp_path / "fb"), str(tmp_path / "cut")])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    figs = run_figures(finished_report(tmp_path / "fb"))
    # the first run's own values of what the others change, so that each row reads against them
    assert rows[0][-1] == "objective.remedies []; train.max_steps 3 |"
    assert rows[0][1] == f"{run_figures(finished_report(run))['nll']:.2f}"
    assert rows[1][1:4] == [f"{figs['nll']:.2f}", f"{figs['kl']:.2f}", f"{figs['mi']:.2f}"]
    assert rows[1][-1] == 'objective.remedies [{"name": "free_bits_li2019", "target_kl": 1}] |'
    assert rows[2][1] == "not finished" and rows[2][-1] == "train.max_steps 2 |"
    main(["compare", str(tmp_path)])  # a folder of runs (a study's variant folder: its seeds) is its runs
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [f"| {tmp_path / name}" for name in ("cut", "fb", "old", "run")]
    # a run made with a plugin not loaded here: its parts' figures would be missing without a word
    with open(tmp_path / "fb" / "metrics.jsonl", "a") as log:
        log.write(json.dumps({"split": "source", "step": 0, "epoch": 0, "plugins": ["my_metrics"]}) + "\n")
    with caplog.at_level("WARNING", logger="textvae"):
        main(["compare", str(old), str(tmp_path / "fb")])
    # the run that used it is named, not every run compared
    assert (f"{tmp_path / 'fb'} was made with plugin(s) not loaded here: my_metrics; the figures their parts give (a "
            f"metric's column) are left out (TEXTVAE_PLUGINS=my_metrics)") in caplog.text
    with pytest.raises(SystemExit) as stop:
        main(["compare", str(tmp_path / "corpus")])
    assert stop.value.code == 2 and "no config.yaml here or in its folders; compare takes run folders" in \
        capsys.readouterr().err


def test_plot_labels_ticks_with_the_figures_themselves(run, tmp_path, monkeypatch):
    """No offset (+3.4572e1) on a nearly flat curve; active units counted from 0 on whole ticks, with an
    axis to see when every count is 0."""
    import textvae.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_figure", lambda *size, new=plots._figure: figures.append(new(*size)) or figures[-1])
    main(["plot", str(run), "--out", str(tmp_path / "c.png")])
    axes = figures[-1].axes[:4]
    for ax in axes:
        assert ax.yaxis.get_major_formatter().get_useOffset() is False
    low, high = axes[2].get_ylim()  # active units
    assert low == 0 and high >= 1
    assert all(float(t).is_integer() for t in axes[2].get_yticks())


def test_evaluate_of_a_run_whose_data_dir_is_not_here(run, tmp_path, caplog):
    """A run made on another machine: its data.data_dir is left out, with a warning, not an error (a data_dir
    given for a new run is one: tests/test_data.py)."""
    import shutil

    import yaml

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["data"]["data_dir"] = "/home/someone/corpora"
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="textvae"):
        main(["evaluate", str(moved), "--no-generation", "--iw-samples", "2"])
    assert "the run's data.data_dir /home/someone/corpora is not here" in caplog.text
    assert (moved / "eval_test.json").is_file()
