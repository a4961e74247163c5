"""A stopped IW pass resumes from the batches it finished, with the figures of a pass never stopped:
in ``evaluate_model`` (a file of finished batches) and in a training run killed during its test report."""
import hashlib
import json
import logging
import os
import signal

import pytest
import torch

import textvae.metrics.likelihood as likelihood
from textvae.cli import main
from textvae.metrics import IWProgress, evaluate_model
from textvae.study.archive import test_seconds as report_seconds
from textvae.training.logger import read_jsonl
from textvae.training.train import IW_PROGRESS_FILE
from tests.test_remedies import random_batch, tiny
from tests.test_train import tiny_args

# 12 batches: with the redraw every 10th (the 5th) and the first, two of them are estimated twice
BATCHES = [random_batch(n=3, seed=s) for s in range(12)]


REAL_IW_BATCH = likelihood.iw_batch


class Stop(Exception):
    pass


def counting_iw_batch(monkeypatch, stop_after=None, stop=None):
    """Count the batches the IW pass computes (their first draw; the redraw goes through
    ``iw_log_marginal``); when ``stop_after`` of them are done, call ``stop`` (default: raise Stop)."""
    calls, real = [], REAL_IW_BATCH
    monkeypatch.setattr(likelihood, "iw_log_marginal", lambda *args, **kwargs: real(*args, **kwargs).log_p)

    def raise_stop():
        raise Stop

    def iw_batch(*args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            (stop or raise_stop)()
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(likelihood, "iw_batch", iw_batch)
    return calls


def evaluate(model, progress=None, batches=BATCHES):
    return evaluate_model(model, batches, n_samples=7, generator=torch.Generator().manual_seed(3),
                          iw_progress=progress)


@pytest.mark.parametrize("stop_after", [1, 5, 11])
def test_a_stopped_pass_resumes_with_the_same_figures(tmp_path, monkeypatch, stop_after):
    torch.manual_seed(0)
    model, path = tiny(), tmp_path / "progress.safetensors"
    whole = evaluate(model)
    assert whole["iw_se_sentences"] == 3, "the redraw of the 5th batch is in the figures"
    calls = counting_iw_batch(monkeypatch, stop_after)
    with pytest.raises(Stop):
        evaluate(model, IWProgress(path, "k"))
    assert len(IWProgress(path, "k").batches) == stop_after
    calls = counting_iw_batch(monkeypatch)
    resumed = evaluate(model, IWProgress(path, "k"))
    assert len(calls) == len(BATCHES) - stop_after, "the finished batches are not computed again"
    assert resumed == whole  # every figure, the IW pass's and the others' (whose draws follow it), to the bit


def test_progress_for_another_key_or_other_batches_is_not_used(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, path = tiny(), tmp_path / "progress.safetensors"
    whole = evaluate(model)
    counting_iw_batch(monkeypatch, stop_after=6)
    with pytest.raises(Stop):
        evaluate(model, IWProgress(path, "k"))
    calls = counting_iw_batch(monkeypatch)
    assert evaluate(model, IWProgress(path, "another model")) == whole and len(calls) == len(BATCHES)
    # the file now holds "another model"'s whole pass; for "k" nothing of it is used
    assert len(IWProgress(path, "k").batches) == 0 and len(IWProgress(path, "another model").batches) == 12
    # other batches than the file's: taken up to the first that differs, computed from there on
    counting_iw_batch(monkeypatch, stop_after=6)
    with pytest.raises(Stop):
        evaluate(model, IWProgress(path, "k"))
    other = [*BATCHES[:3], random_batch(n=3, seed=99), *BATCHES[4:]]
    calls, progress = counting_iw_batch(monkeypatch), IWProgress(path, "k")
    changed = evaluate(model, progress, other)
    assert len(calls) == len(other) - 3 and len(progress.batches) == len(other)
    assert changed["n_tokens"] == sum(float(b.n_tokens.sum()) for b in other)
    assert changed == evaluate(model, batches=other), "the same figures as a pass of these batches from the start"


def test_a_progress_file_that_cannot_be_written_costs_only_the_resume(tmp_path, caplog):
    torch.manual_seed(0)
    model = tiny()
    whole = evaluate(model)
    progress = IWProgress(tmp_path / "no such folder" / "progress.safetensors", "k")
    assert evaluate(model, progress) == whole
    assert caplog.text.count("cannot keep the IW pass's progress") == 1 and progress.unwritable


@pytest.mark.parametrize("how", ["killed", "sigterm", "sigint"])
def test_a_run_stopped_in_its_test_report_resumes_its_iw_pass(tmp_path, monkeypatch, capsys, caplog, how):
    """The run's test report, stopped after 2 IW batches (killed; or by SIGTERM or Ctrl-C, which stop it there
    at once rather than after the pass), resumes (``--resume``) with the others only, and reports what an
    uninterrupted run does; the progress file is gone once the report is logged."""
    extra = ("--data.max_sentences", "200", "--data.eval_batch_size", "8", "--train.max_steps", "6",
             "--train.metrics_every", "0", "--train.iw_samples_final", "5")
    main(["train", *tiny_args(tmp_path, "whole", "synthetic", *extra)])
    if how == "killed":
        calls = counting_iw_batch(monkeypatch, stop_after=2)
        with pytest.raises(Stop):
            main(["train", *tiny_args(tmp_path, "cut", "synthetic", *extra)])
    else:
        sig = signal.SIGTERM if how == "sigterm" else signal.SIGINT
        calls = counting_iw_batch(monkeypatch, stop_after=2, stop=lambda: os.kill(os.getpid(), sig))
        with pytest.raises(SystemExit) as stop:
            main(["train", *tiny_args(tmp_path, "cut", "synthetic", *extra)])
        # the third batch was never finished; the exit status is the shell's for the signal (128 + its number)
        assert stop.value.code == 128 + sig and len(calls) == 2
        assert (f"textvae: interrupted; continue with: textvae train {tmp_path / 'cut' / 'config.yaml'} --resume"
                in capsys.readouterr().err)
        assert IWProgress.batches_in(tmp_path / "cut" / IW_PROGRESS_FILE) == 2
    # the stopped attempt's time on the batches the resumed one takes over counts in the report's time:
    # here, as if its second batch had ended 100 s after its test_start
    (start,) = [r for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl") if r["split"] == "test_start"]
    os.utime(tmp_path / "cut" / IW_PROGRESS_FILE, (start["time"] + 100, start["time"] + 100))
    assert (tmp_path / "cut" / IW_PROGRESS_FILE).is_file()
    calls = counting_iw_batch(monkeypatch)
    with caplog.at_level(logging.INFO, logger="textvae.train"):
        main(["train", *tiny_args(tmp_path, "cut", "synthetic", *extra), "--resume"])
    assert "test report: 2 IW batches kept by an earlier, stopped attempt" in caplog.text
    tests = {name: [r for r in read_jsonl(tmp_path / name / "metrics.jsonl") if r["split"] == "test"]
             for name in ("whole", "cut")}
    assert len(tests["cut"]) == 1
    n_batches = -(-int(tests["whole"][0]["n_sentences"]) // 8)
    assert len(calls) == n_batches - 2
    timing = {"time", "train_seconds", "train_tokens_per_s"}
    assert ({k: v for k, v in tests["cut"][0].items() if k not in timing}
            == {k: v for k, v in tests["whole"][0].items() if k not in timing})
    assert not (tmp_path / "cut" / IW_PROGRESS_FILE).exists()
    records = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    (resumed_start,) = [r for r in records if r["split"] == "test_start"]
    assert resumed_start["earlier_seconds"] == pytest.approx(100, abs=0.01)
    assert report_seconds(records) == pytest.approx(tests["cut"][0]["time"] - resumed_start["time"] + 100, abs=0.01)


def test_a_report_without_an_iw_pass_keeps_no_progress(tmp_path):
    """With ``train.iw_samples_final: 0`` the test report has no IW pass: no progress (and no weights
    file to hash, which here does not exist); with K > 0 the key names the weights' digest."""
    from textvae.config import RunConfig, TrainConfig
    from textvae.tasks import create_task

    def task(k):
        return create_task(RunConfig(train=TrainConfig(iw_samples_final=k)))

    path, cpu = tmp_path / IW_PROGRESS_FILE, torch.device("cpu")
    assert task(0).iw_progress(path, tmp_path / "no model", cpu) is None
    with pytest.raises(FileNotFoundError):
        task(5).iw_progress(path, tmp_path / "no model", cpu)
    model = tmp_path / "model"
    model.mkdir()
    tiny().save_weights(model)
    first = task(5).iw_progress(path, model, cpu).key
    assert json.loads(first)["weights_sha256"] == hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert first != task(6).iw_progress(path, model, cpu).key  # K is part of it
    torch.manual_seed(1)
    tiny().save_weights(model)  # other weights, another key
    assert task(5).iw_progress(path, model, cpu).key != first


def test_a_stopped_evaluate_resumes_its_iw_pass(tmp_path, monkeypatch, capsys):
    """``textvae evaluate`` stopped after 2 IW batches: the same command computes only the others and
    writes the figures of an evaluation never stopped; the progress file (beside the results) is then
    gone. Another K does not take the file's batches."""
    main(["train", *tiny_args(tmp_path, "run", "synthetic", "--data.max_sentences", "200",
                              "--train.max_steps", "4", "--train.iw_samples_final", "0")])
    run = tmp_path / "run"
    argv = ["evaluate", str(run), "--batch-size", "8", "--iw-samples", "5", "--no-generation"]
    main([*argv, "--json", str(tmp_path / "whole.json")])
    counting_iw_batch(monkeypatch, stop_after=2)
    with pytest.raises(Stop):
        main([*argv, "--json", str(tmp_path / "cut.json")])
    progress = tmp_path / "cut.iw_progress.safetensors"
    assert IWProgress.batches_in(progress) == 2
    calls = counting_iw_batch(monkeypatch)
    main([*argv, "--iw-samples", "4", "--json", str(tmp_path / "other.json")])  # another key: starts afresh
    n_batches = len(calls)
    assert IWProgress.batches_in(progress) == 2 and n_batches > 2
    calls = counting_iw_batch(monkeypatch)
    main([*argv, "--json", str(tmp_path / "cut.json")])
    assert len(calls) == n_batches - 2 and "batches done" in capsys.readouterr().out
    whole, cut = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("whole", "cut"))
    assert whole == cut and not progress.exists() and not (tmp_path / "whole.iw_progress.safetensors").exists()


def test_an_earlier_attempt_s_time_counts_where_the_report_takes_over_its_batches(tmp_path):
    """A stopped attempt's time on its kept IW batches is the report's when the report's pass takes them over:
    resumed into that report, or trained on since without a better model (the same weights, the same key). Not
    when the pass starts afresh (another best model: another key), nor without an IW pass."""
    from textvae.training.train import earlier_report_seconds

    path = tmp_path / IW_PROGRESS_FILE
    kept = IWProgress(path, "weights A")
    kept.put(0, {"n_tokens": torch.tensor([3, 4])})
    kept.put(1, {"n_tokens": torch.tensor([5, 6])})
    os.utime(path, (1100.0, 1100.0))
    cut = [{"split": "valid", "step": 10, "time": 990.0},
           {"split": "test_start", "step": 10, "time": 1000.0, "earlier_seconds": 7.0}]
    assert earlier_report_seconds(cut, IWProgress(path, "weights A")) == pytest.approx(107.0)
    assert earlier_report_seconds(cut, IWProgress(path, "weights B")) == 0.0
    assert earlier_report_seconds(cut, None) == 0.0
    assert earlier_report_seconds(cut[:1], IWProgress(path, "weights A")) == 0.0  # no attempt was cut
