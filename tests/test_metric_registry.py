"""A new metric is one registered function: it appears in ``evaluate_model``, in the training log
(the stages it is registered for) and in a study's table (the columns it declares)."""
import json
import math
from types import SimpleNamespace

import pytest

import textvae.study as st
from textvae.cli import main
from textvae.errors import TextVAEError
from textvae.metrics import METRICS, evaluate_model, list_metrics, register_metric
from textvae.tasks.runconfig import parse_run_config
from tests.test_remedies import random_batch, tiny
from tests.test_train import tiny_args


@pytest.fixture
def toy_metric(monkeypatch):
    """Registers ``toy`` (tokens per sentence) for this test only."""
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))

    @register_metric("toy", stages=("periodic", "test"), study_columns=(("toy", "Toy", "{:.3f}"),))
    def toy(p):
        return {"toy": p.counts.n_tokens / p.counts.n_sentences}

    return "toy"


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


def test_a_registered_metric_reaches_the_training_log_and_the_study_table(toy_metric, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "cache"))
    args = tiny_args(tmp_path / "runs", "toy", "synthetic", "--data.max_sentences", "200", "--train.max_steps", "4",
                     "--train.metrics_every", "2", "--train.iw_samples_final", "0")
    main(["train", *args])
    run_dir = tmp_path / "runs" / "toy"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records if "toy" in r] == ["valid_metrics", "valid_metrics", "test"]
    assert all(math.isfinite(r["toy"]) for r in records if "toy" in r)

    study = SimpleNamespace(name="s", path=tmp_path, base=tmp_path, seeds=[1], budget={}, variants={"plain": {}})
    results = st.aggregate(study, [st.Run("plain", 1, run_dir, parse_run_config(args)[0])])
    header, _, row = st.markdown_table(results).splitlines()
    assert header.split(" | ")[-1] == "Toy |"
    assert row.split(" | ")[-1] == f"{records[-1]['toy']:.3f} |"
