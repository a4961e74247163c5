"""A new metric is one registered function: it appears in ``evaluate_model``, in the training log
(the stages it is registered for) of every task, the dialogue CVAE's included, in ``textvae evaluate``'s
table (the rows it declares) and in a study's table (the columns it declares). A new text metric likewise
appears in ``textvae evaluate`` and in the dialogue CVAE's test report."""
import json
import math
import re
from types import SimpleNamespace

import pytest

import textvae.study as st
from textvae.cli import main
from textvae.config import TrainConfig
from textvae.dialogue.config import CVAERunConfig, DialogueDataConfig, DialogueEvalConfig
from textvae.dialogue.data import load_dialogue_data
from textvae.errors import TextVAEError
from textvae.metrics import (METRICS, TEXT_METRICS, GeneratedTexts, Row, evaluate_model, format_table, list_metrics,
                             list_text_metrics, register_metric, register_text_metric, score_texts)
from textvae.metrics.table import table_rows
from textvae.tasks import run_training
from textvae.tasks.runconfig import parse_run_config
from textvae.training.logger import read_jsonl
from tests.test_dialogue import tiny as tiny_cvae, write_dialogues
from tests.test_remedies import random_batch, tiny
from tests.test_train import tiny_args


@pytest.fixture
def toy_metric(monkeypatch):
    """Registers ``toy`` (tokens per sentence) for this test only."""
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))

    @register_metric("toy", stages=("periodic", "test"), study_columns=(("toy", "Toy", "{:.3f}"),),
                     rows=(Row("toy", "tokens per sentence (toy, N={N})", "{:.3f}"),))
    def toy(p):
        return {"toy": p.counts.n_tokens / p.counts.n_sentences}

    return "toy"


@pytest.fixture
def toy_text_metric(monkeypatch):
    """Registers the text metric ``toy_text`` (how many samples) for this test only."""
    monkeypatch.setattr(TEXT_METRICS, "_entries", dict(TEXT_METRICS._entries))

    @register_text_metric("toy_text", reads="samples", rows=(Row("toy_text", "samples counted ({G})", "{:.0f}"),))
    def toy_text(texts):
        return {"toy_text": float(len(texts.samples))}

    return "toy_text"


def test_registering_a_text_metric(toy_text_metric):
    assert toy_text_metric in list_text_metrics()
    texts = GeneratedTexts(reconstructions=[("a b c d e", "a b c d e")], samples=["a", "b c"])
    assert score_texts(texts, [toy_text_metric]) == {"toy_text": 2.0, "gen_sentences": 2.0}
    assert score_texts(texts)["recon_bleu"] == pytest.approx(100.0)
    assert toy_text_metric not in score_texts(GeneratedTexts(reconstructions=texts.reconstructions))  # no samples
    assert "self_bleu" not in score_texts(GeneratedTexts(samples=["a"]))  # it needs two
    with pytest.raises(TextVAEError, match="unknown texts 'words'; valid: reconstructions, samples, responses"):
        register_text_metric("other", reads="words")
    with pytest.raises(TextVAEError, match="unknown text metric 'nope'; valid: .*toy_text"):
        score_texts(texts, ["nope"])


def test_registering_a_metric(toy_metric):
    assert toy_metric in list_metrics() and toy_metric in list_metrics("test") and toy_metric not in list_metrics("epoch")
    batch = random_batch()
    figures = evaluate_model(tiny(), [batch], n_samples=2)
    assert figures["toy"] == pytest.approx(float(batch.n_tokens.sum()) / len(batch))
    assert set(evaluate_model(tiny(), [batch], metrics=["toy"])) == {"n_sentences", "n_tokens", "toy"}
    with pytest.raises(TextVAEError, match="unknown stages"):
        register_metric("other", stages=("always",))
    with pytest.raises(TextVAEError, match="unknown metrics \\['nope'\\]; valid: au, .*toy"):
        evaluate_model(tiny(), [batch], metrics=["nope"])


def test_a_registered_metric_reaches_the_training_log_and_the_study_table(toy_metric, toy_text_metric, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "cache"))

    # a metric that declares no study column: its figure reaches results.csv all the same
    @register_metric("toy_quiet", stages=("test",), rows=(Row("toy_quiet", "sentences (toy, no column)", "{:.0f}"),))
    def toy_quiet(p):
        return {"toy_quiet": float(p.counts.n_sentences)}

    args = tiny_args(tmp_path / "runs", "toy", "synthetic", "--data.max_sentences", "200", "--train.max_steps", "4",
                     "--train.metrics_every", "2", "--train.iw_samples_final", "0")
    main(["train", *args])
    run_dir = tmp_path / "runs" / "toy"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records if "toy" in r] == ["valid_metrics", "valid_metrics", "test"]
    assert all(math.isfinite(r["toy"]) for r in records if "toy" in r)
    main(["evaluate", str(run_dir), "--iw-samples", "0", "--max-sentences", "10", "--gen-sentences", "4",
          "--json", str(tmp_path / "eval.json")])
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["toy_text"] == 4
    table = capsys.readouterr().out
    assert re.search(rf"^tokens per sentence \(toy, N=10\) +{evaluated['toy']:.3f}$", table, re.M)
    assert re.search(r"^samples counted \(4 prior samples\) +4$", table, re.M)

    study = SimpleNamespace(name="s", path=tmp_path, base=tmp_path, seeds=[1], budget={}, variants={"plain": {}})
    results = st.aggregate(study, [st.Run("plain", 1, run_dir, parse_run_config(args)[0])])
    header, _, row = st.markdown_table(results).splitlines()
    assert header.split(" | ")[-1] == "Toy |"
    assert row.split(" | ")[-1] == f"{records[-1]['toy']:.3f} |"
    from textvae.study.report import write_csv

    write_csv(results, tmp_path / "results.csv")
    csv_header, csv_row = (tmp_path / "results.csv").read_text().splitlines()
    figures = dict(zip(csv_header.split(","), csv_row.split(",")))
    assert float(figures["toy_quiet_mean"]) == records[-1]["toy_quiet"] and "toy_mean" in figures


def test_a_registered_metric_reaches_the_dialogue_cvae_log_and_report(toy_metric, toy_text_metric, tmp_path,
                                                                     monkeypatch):
    """The CVAE is evaluated through the same registry, given each pair's context: the toy metric
    counts the responses' tokens per pair; the toy text metric, the responses generated."""
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "cache"))
    write_dialogues(tmp_path)
    cfg = CVAERunConfig(name="cvae", out_dir=str(tmp_path / "runs"),
                        data=DialogueDataConfig(name=str(tmp_path), context_turns=2, batch_size=8, eval_batch_size=4),
                        model=tiny_cvae().cfg,
                        train=TrainConfig(epochs=1, progress=False, tensorboard=False, metrics_every=2,
                                          iw_samples_final=2, threads=1, device="cpu"),
                        eval=DialogueEvalConfig(n_responses=2, max_contexts=1, max_len=3))
    report = run_training(cfg)
    records = read_jsonl(tmp_path / "runs" / "cvae" / "metrics.jsonl")
    assert [r["split"] for r in records if "toy" in r] == ["valid_metrics"] * 2 + ["test"]
    assert report["toy"] == records[-1]["toy"] and report["toy_text"] == 2
    test = load_dialogue_data(cfg.data).splits["test"]
    assert report["toy"] == pytest.approx(float(sum(int(n) - 1 for n in test.lengths)) / len(test))


def test_every_figure_of_the_registered_metrics_has_its_row():
    """Each number ``evaluate_model`` and ``score_texts`` return is declared by a row of the table: a labelled
    one, or one shown within another (K within the IW-NLL's), so none falls back to its bare key."""
    declared = {row.figure for row in table_rows()}
    batch = random_batch()
    figures = evaluate_model(tiny(), [batch], n_samples=2, per_dim=True)
    texts = GeneratedTexts(reconstructions=[("a b c", "a b d")], samples=["a b", "b c", "c a"],
                           responses=[(["a b", "b c"], ["a c", "b b"])])
    figures.update(score_texts(texts))
    numbers = {key for key, value in figures.items() if isinstance(value, (int, float))}
    assert numbers and numbers <= declared, sorted(numbers - declared)
    table = format_table(figures)
    assert not any(line.split()[0] in numbers for line in table.splitlines())  # no bare key
    assert re.search(r"^BLEU-2 recall, 0-1 \(3 responses to 1 contexts\) +[0-9.]+$", table, re.M)


def test_a_figure_two_metrics_compute_has_one_row_and_the_truth_follows_its_figure(monkeypatch):
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))
    register_metric("au_again", rows=(Row("au", "AU, the later metric's row"),))(lambda p: {})
    table = format_table({"n_sentences": 4.0, "iw_nll": 10.0, "iw_samples": 5.0, "true_nll": 9.5, "au": 2.0,
                          "latent_dim": 4.0, "au_threshold": 0.01, "dims_too_noisy": 1.0, "true_mi": 0.7})
    labels = [line.split("  ")[0] for line in table.splitlines()]
    assert labels == ["sentences", "NLL (IW, K=5)", "NLL (true, synthetic corpus)", "MI (true I(x; latent))",
                      "AU (Var >= 0.01)", "inactive dims: too noisy", "latent space"]
