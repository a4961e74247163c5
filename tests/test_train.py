"""The training loop end to end through the CLI: the synthetic default and the LM recipe write a
complete run folder whose records agree with the objective's definitions.

Also the helpers the other loop tests share: a tiny folder corpus and tiny-model overrides.
"""
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from textvae.cli import main
from textvae.data.synthetic import load_truth
from textvae.tasks.runconfig import parse_run_config
from textvae.models.textvae import TextVAE
from textvae.training.checkpoint import read_checkpoint
from textvae.models.native import native_status
from textvae.training.denormals import calling_thread_flushes
from textvae.training.logger import read_jsonl
from textvae.training.train import bf16_supported, source_digest
from tests.conftest import needs_cpu_bf16

REPO = Path(__file__).resolve().parents[1]


def write_corpus(folder: Path, n_train: int = 200, n_eval: int = 40, vocab: int = 30, seed: int = 0) -> Path:
    """``train/valid/test.txt`` of random sentences (2-11 words) over ``vocab`` words."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        lines = [" ".join(rng.choice(words, size=int(rng.integers(2, 12)))) for _ in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def tiny_args(out_dir: Path, name: str, data: str | Path, *extra: str) -> list[str]:
    """Overrides of the default recipe for a run of a few seconds on one CPU thread (the lr is
    pinned so tests do not follow changes of the recipe)."""
    return ["--name", name, "--out_dir", str(out_dir), "--data.name", str(data),
            "--model.emb_dim", "8", "--model.latent_dim", "4", "--model.encoder.hidden_dim", "8",
            "--model.decoder.hidden_dim", "8", "--train.progress", "false", "--train.tensorboard", "false",
            "--train.iw_samples_final", "4", "--train.threads", "1", "--train.device", "cpu",
            "--optim.lr", "0.001", *extra]


def state_of(path: Path) -> dict[str, torch.Tensor]:
    """Model tensors of a checkpoint."""
    return {k: v for k, v in read_checkpoint(path).tensors.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """The embedded synthetic default, shrunk: 8 steps, metrics every 4 (own corpus cache)."""
    tmp = tmp_path_factory.mktemp("synthetic")
    mp = pytest.MonkeyPatch()
    mp.setenv("TEXTVAE_CACHE", str(tmp / "cache"))
    try:
        args = tiny_args(tmp / "runs", "syn", "synthetic", "--data.max_sentences", "200", "--train.max_steps", "8",
                         "--train.metrics_every", "4", "--train.log_every", "2")
        main(["train", *args])
    finally:
        mp.undo()
    return tmp / "runs" / "syn", args


def test_synthetic_default_writes_a_complete_run(synthetic_run, capsys):
    run, args = synthetic_run
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.safetensors", "config.yaml", "metrics.jsonl", "model"]
    # config.yaml is the resolved configuration, and itself a valid recipe
    saved = parse_run_config([str(run / "config.yaml")])[0]
    assert saved == parse_run_config(args)[0]
    assert saved.model.latent_dim == 4 and saved.objective.kl_schedule["name"] == "linear"  # from the recipe

    records = read_jsonl(run / "metrics.jsonl")
    by_split: dict = {}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    assert [r["step"] for r in by_split["train"]] == [2, 4, 6, 8]
    assert [r["step"] for r in by_split["valid_metrics"]] == [4, 8]
    for r in by_split["train"]:  # loss = mean(rec + beta * KL) for the plain objective
        assert r["loss"] == pytest.approx(r["rec"] + r["kl_term"], rel=1e-5)
        assert r["kl_term"] == pytest.approx(r["beta"] * r["kl"], rel=1e-4, abs=1e-7)
        assert r["loss_per_token"] == pytest.approx(r["loss"] * r["sentences"] / r["tokens"], rel=1e-6)
    for r in by_split["valid_metrics"] + by_split["valid"]:
        assert {"kl", "mi_batch", "au"} <= set(r)
        assert r["neg_elbo"] == pytest.approx(r["rec"] + r["kl"], rel=1e-6)
        assert 0 <= r["au"] <= 4
    assert {"mi_dataset"} <= set(by_split["valid_metrics"][0])
    (test,) = by_split["test"]
    assert test["n_sentences"] == 200 and {"iw_nll", "au", "true_nll", "true_mi"} <= set(test)
    # the true NLL of the 200 sentences evaluated (data.max_sentences keeps the first), not of the whole split
    truth = load_truth(run.parent.parent / "cache" / "synthetic" / "synthetic-seed0")
    assert truth["splits"]["test"]["n_sentences"] > 200
    assert test["true_nll"] == pytest.approx(-np.mean(truth["splits"]["test"]["log_px"][:200]))

    model = TextVAE.from_pretrained(run / "model")
    assert sorted(p.name for p in (run / "model").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert model.latent_dim == 4
    ckpt = read_checkpoint(run / "checkpoint.safetensors")
    assert ckpt.meta["loop"]["step"] == 8 and ckpt.meta["log_bytes"] < (run / "metrics.jsonl").stat().st_size
    # the one validation improved on +inf, so the best model is the final one
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ckpt.tensors[f"model.{name}"], rtol=0, atol=0)


def test_report_is_printed(tmp_path, capsys, caplog):
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["train", *tiny_args(tmp_path / "runs", "p", corpus, "--train.max_steps", "2")])
    out = capsys.readouterr().out
    assert "-ELBO (bound on NLL)" in out and "NLL (IW, K=4)" in out and "latent space" in out
    # without progress bars (tiny_args), the epoch's validation line goes to the log: a study run's only sign of life
    assert any(re.fullmatch(r"epoch 1: valid -ELBO \d+\.\d+ .* tok/s", m) for m in caplog.messages)


def lm_check(run: Path) -> None:
    records = read_jsonl(run / "metrics.jsonl")
    assert TextVAE.from_pretrained(run / "model").is_lm
    train = [r for r in records if r["split"] == "train"]
    assert train and all(r["kl"] == 0 and r["loss"] == pytest.approx(r["rec"], rel=1e-6) for r in train)
    (test,) = [r for r in records if r["split"] == "test"]
    assert test["kl"] == 0 and test["neg_elbo"] == pytest.approx(test["rec"])
    assert "au" not in test and math.isfinite(test["elbo_ppl"])


def test_lm_recipe_trains(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    main(["train", str(REPO / "textvae/recipes/ptb/lm.yaml"), "--name", "lm", "--out_dir", str(tmp_path / "runs"),
          "--data.name", str(corpus), "--model.emb_dim", "8", "--model.decoder.hidden_dim", "8",
          "--train.max_steps", "3", "--train.log_every", "1", "--train.progress", "false",
          "--train.tensorboard", "false", "--train.threads", "1", "--train.device", "cpu"])
    lm_check(tmp_path / "runs" / "lm")


def test_lm_recipe_on_ptb(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TEXTVAE_DATA_DIR", data_dir)
    main(["train", str(REPO / "textvae/recipes/ptb/lm.yaml"), "--name", "lm", "--out_dir", str(tmp_path / "runs"),
          "--data.max_sentences", "300", "--train.max_steps", "2", "--train.log_every", "1",
          "--train.progress", "false", "--train.tensorboard", "false", "--train.threads", "1",
          "--train.device", "cpu"])
    lm_check(tmp_path / "runs" / "lm")


def test_wall_time_budget_stops_the_run(tmp_path, monkeypatch):
    """train.max_seconds is checked after every step (not only at the log steps): a spent budget
    ends training after one step, and the run still ends with its validation and test report."""
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "cache"))
    args = tiny_args(tmp_path / "runs", "timed", "synthetic", "--data.max_sentences", "200",
                     "--train.max_seconds", "1e-9", "--train.log_every", "3", "--train.metrics_every", "0")
    main(["train", *args])
    records = read_jsonl(tmp_path / "runs" / "timed" / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in records if r["split"] not in ("data", "source")] == \
        [("valid", 1), ("test_start", 1), ("test", 1)]


def test_a_checkpoint_within_an_epoch_counts_the_time_before_it(tmp_path, monkeypatch):
    """A ``train.checkpoint_every`` checkpoint holds the training time of its epoch so far: a run resumed
    from it does not redo those steps, so without it their time would be lost from ``train_seconds``
    (and ``train.max_seconds`` would start afresh)."""
    import textvae.training.train as train_module

    clock = iter(range(0, 10**6, 10))  # every reading of the clock 10 s after the last
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: float(next(clock)))
    saved, real = [], train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, model, optim, meta, **kw: saved.append(meta["loop"]) or real(path, model, optim,
                                                                                              meta, **kw))
    main(["train", *tiny_args(tmp_path, "x", "synthetic", "--data.max_sentences", "200", "--data.batch_size", "8",
                              "--train.checkpoint_every", "2", "--train.max_steps", "4", "--train.metrics_every", "0",
                              "--train.iw_samples_final", "0")])
    within = [loop for loop in saved if 0 < loop["batch_in_epoch"]]
    assert [loop["step"] for loop in within][:2] == [2, 4] and all(loop["train_seconds"] > 0 for loop in within)
    assert within[0]["train_seconds"] < within[1]["train_seconds"]


def test_plateau_update_follows_he2019_schedule():
    """A hand-traced run: patience 2 from epoch 3, factor 0.5, at most 2 decays; partial epochs
    (epoch_complete False) never count as bad."""
    from textvae.config import OptimConfig
    from textvae.training.train import LoopState, plateau_update

    oc = OptimConfig(lr=1.0, decay_factor=0.5, decay_patience=2, decay_start_epoch=3, max_decays=2)
    state = LoopState(lr=1.0)
    calls = []
    trace = []
    # (val loss, epoch complete); the epoch counter advances on complete epochs, as in the loop
    for val, complete in [(10, True), (11, True), (12, True), (13, False), (12, True), (9, True),
                          (9.5, True), (9.7, True), (9.9, True)]:
        if complete:
            state.epoch += 1
        improved, decayed = plateau_update(state, val, complete, oc, save_best=lambda: calls.append("save"),
                                           reload_best=lambda: calls.append("reload"))
        trace.append((state.epoch, improved, decayed, state.bad_epochs, state.lr, state.done))
    assert trace == [
        (1, True, False, 0, 1.0, False),
        (2, False, False, 1, 1.0, False),   # bad, but before decay_start_epoch
        (3, False, True, 0, 0.5, False),    # 2 bad epochs at epoch 3: first decay
        (3, False, False, 0, 0.5, False),   # partial epoch: not counted
        (4, False, False, 1, 0.5, False),
        (5, True, False, 0, 0.5, False),
        (6, False, False, 1, 0.5, False),
        (7, False, True, 0, 0.25, True),    # second decay = max_decays: done
        (8, False, False, 1, 0.25, True),   # (the loop stops at done)
    ]
    assert calls == ["save", "reload", "save", "reload"]
    assert state.best_val == 9 and state.decays == 2
    # max_decays 0: the first plateau ends the run, lr and weights as they were
    oc.max_decays, state, calls = 0, LoopState(lr=1.0, epoch=3), []
    assert [plateau_update(state, val, True, oc, lambda: calls.append("save"), lambda: calls.append("reload"))
            for val in (5, 6, 7)] == [(True, False), (False, False), (False, False)]
    assert state.done and state.lr == 1.0 and state.decays == 0 and calls == ["save"]


def test_progress_loss_is_per_token_and_smoothed():
    """Batches alternating short and long sentences at the same loss per token: per sentence the
    figure would jump 4x between steps; the bar's figure stays at that loss per token."""
    from textvae.training.progress import SmoothedLoss

    smoothed = SmoothedLoss()
    shown = [smoothed.add(2.0 * words, n_sentences=8, n_tokens=8 * words) for words in (5, 20) * 5]
    assert shown == pytest.approx([2.0] * 10)
    assert SmoothedLoss(decay=0.5).add(3.0, 1, 3) == pytest.approx(1.0)
    noisy = SmoothedLoss()
    values = [noisy.add(loss, 1, 1) for loss in (1.0, 5.0) * 20]
    assert max(values[-10:]) - min(values[-10:]) < 1.0  # a raw per-step figure would swing by 4


def test_progress_bar_shows_loss_per_token(tmp_path, capsys):
    """Also the validation lines, numbered as the bar numbers epochs (2 batches each here)."""
    corpus = write_corpus(tmp_path / "corpus", n_train=40, n_eval=10)
    main(["train", *tiny_args(tmp_path, "bar", corpus, "--train.progress", "true", "--train.max_steps", "3",
                                     "--train.log_every", "1")])
    out = capsys.readouterr()
    assert re.search(r"loss/token=\d+\.\d{3}, kl=", out.err)
    # the step budget ends the second epoch after its first batch, and its bar there
    assert re.search(r"epoch 2/\d+, to step 3: +\d+%\|[^|]*\| [01]/1 ", out.err), out.err
    assert re.findall(r"^(epoch [^:]*): valid -ELBO", out.out, re.M) == ["epoch 1", "epoch 2, stopped after batch 1"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_of_a_run_follows_the_umask(tmp_path, umask, mode):
    """One permission policy: checkpoints and weights (which safetensors creates 0600) get the
    mode of any new file, like the configuration, log and tokenizer."""
    corpus = write_corpus(tmp_path / "corpus", n_train=40, n_eval=10)
    old = os.umask(umask)
    try:
        main(["train", *tiny_args(tmp_path / "runs", "perm", corpus, "--train.max_steps", "2")])
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "runs/perm").rglob("*") if p.is_file()]
    assert {"checkpoint.safetensors", "model.safetensors", "config.yaml", "metrics.jsonl"} <= {p.name for p in files}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


def test_each_start_of_a_run_records_the_code_and_the_machine_it_ran_on(tmp_path):
    import subprocess

    import textvae

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    args = tiny_args(tmp_path / "runs", "src", corpus, "--train.iw_samples_final", "0",
                     "--model.decoder.output_dropout", "0.3")
    main(["train", *args, "--train.max_steps", "2"])
    main(["train", *args, "--train.max_steps", "4", "--resume"])
    sources = [r for r in read_jsonl(tmp_path / "runs" / "src" / "metrics.jsonl") if r["split"] == "source"]
    assert [r["step"] for r in sources] == [0, 2]  # the start and the resumed part
    where = Path(textvae.__file__).resolve().parent
    git = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True)
    for r in sources:
        assert r["textvae"] == textvae.__version__ and r["torch"] == torch.__version__
        assert r["commit"] == (git.stdout.strip() if git.returncode == 0 else None)
        assert r["source_sha256"] == source_digest(where) and len(r["source_sha256"]) == 16
        # and the machine: its wall times mean little without it
        assert isinstance(r["cpu"], str) and r["cpu"] and r["cores"] == os.cpu_count() >= 1
        assert r["threads"] == torch.get_num_threads() and "gpu" not in r
        assert r["denormals"] == "flushed"  # train.flush_denormals' default, in every intra-op thread
        # fp32 on the CPU: the dropout mask's kernel alone applies, built before the run's timer starts
        assert r["native_kernels"] == native_status(["dropout"]) != "unused"
        assert r["bf16_weight_copies"] == []  # fp32
    assert not calling_thread_flushes()  # the run left the caller's mode as it found it
    # a model that drops nothing uses no kernel in fp32, and builds none for the record
    main(["train", *tiny_args(tmp_path / "runs", "nodrop", corpus, "--train.iw_samples_final", "0",
                              "--train.max_steps", "1")])
    (source,) = [r for r in read_jsonl(tmp_path / "runs" / "nodrop" / "metrics.jsonl") if r["split"] == "source"]
    assert source["native_kernels"] == "unused"


def test_the_source_digest_names_the_code_wherever_it_lies(tmp_path):
    """An installed copy has no commit: the digest of its files names its code. A copy elsewhere has the
    same digest; an edited file, an added module or a renamed one another; caches and other files none."""
    from textvae.study.archive import provenance

    one, two = tmp_path / "one" / "textvae", tmp_path / "two" / "textvae"
    for root in (one, two):
        (root / "models").mkdir(parents=True)
        (root / "__init__.py").write_text("x = 1\n")
        (root / "models" / "k.cpp").write_text("int f();\n")
    (two / "__pycache__").mkdir()
    (two / "__pycache__" / "a.pyc").write_bytes(b"\0")
    (two / "notes.txt").write_text("not code")
    digest = source_digest(one)
    assert source_digest(two) == digest and len(digest) == 16
    edited = tmp_path / "edited" / "textvae"
    shutil.copytree(one, edited)
    (edited / "models" / "k.cpp").write_text("int g();\n")
    moved = tmp_path / "moved" / "textvae"
    shutil.copytree(one, moved)
    (moved / "models" / "k.cpp").rename(moved / "k.cpp")
    assert len({digest, source_digest(edited), source_digest(moved)}) == 3
    added = tmp_path / "added" / "textvae"
    shutil.copytree(one, added)
    (added / "models" / "extra.py").write_text("")
    assert source_digest(added) not in {digest, source_digest(edited), source_digest(moved)}
    # the archive names such a start's code by it where the commit does not name it
    starts = [{"split": "source", "commit": None, "source_sha256": digest},
              {"split": "source", "commit": "abc", "dirty": False, "source_sha256": digest},
              {"split": "source", "commit": "abc", "dirty": True, "source_sha256": digest},
              {"split": "source", "commit": None}]
    assert provenance(starts)[0] == [f"source {digest}", "abc", f"abc + changes, source {digest}", None]


@needs_cpu_bf16
def test_a_bf16_start_records_its_denormals_kernels_and_weight_copies(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    args = tiny_args(tmp_path / "runs", "src", corpus, "--train.iw_samples_final", "0")
    main(["train", *args, "--train.max_steps", "4"])
    main(["train", *args, "--train.max_steps", "6", "--resume", "--train.flush_denormals", "false",
          "--train.precision", "bf16"])
    last = [r for r in read_jsonl(tmp_path / "runs" / "src" / "metrics.jsonl") if r["split"] == "source"][-1]
    assert last["step"] == 4 and last["denormals"] == "kept"
    assert last["native_kernels"] == native_status()  # bf16 on the CPU: "on" where the kernel builds
    assert last["bf16_weight_copies"] == []  # the recipe's Adam: the copies' update is plain SGD's
    main(["train", *args, "--train.max_steps", "7", "--resume", "--train.precision", "bf16",
          "--train.native_kernels", "false"])
    last = [r for r in read_jsonl(tmp_path / "runs" / "src" / "metrics.jsonl") if r["split"] == "source"][-1]
    assert last["step"] == 6 and last["native_kernels"] == "off" and native_status() != "off"  # and set back
    sgd = tiny_args(tmp_path / "runs", "sgd", corpus, "--train.iw_samples_final", "0", "--optim.name", "sgd",
                    "--train.precision", "bf16")
    main(["train", *sgd, "--train.max_steps", "2"])
    main(["train", *sgd, "--train.max_steps", "3", "--resume", "--train.bf16_weight_copies", "false"])
    copies = [r["bf16_weight_copies"] for r in read_jsonl(tmp_path / "runs" / "sgd" / "metrics.jsonl")
              if r["split"] == "source"]
    assert copies == [["encoder.rnn.weight_ih_l0", "encoder.rnn.weight_hh_l0", "decoder.rnn.weight_ih_l0",
                       "decoder.rnn.weight_hh_l0", "projection.weight"], []]


def test_valid_redraw_draws_validation_anew_each_epoch_and_leaves_training_alone(tmp_path):
    """``train.valid_redraw`` (He et al.'s validation): new z draws each epoch. The training stream
    must not move (identical training records), while every epoch's validation figures differ from
    the fixed-draw run's, of the same model; without it, epoch 1's and a re-run's draws agree."""
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    records = {}
    for name, redraw in (("fixed", "false"), ("redraw", "true"), ("fixed_again", "false")):
        main(["train", *tiny_args(tmp_path / "runs", name, corpus, "--train.iw_samples_final", "0",
                                  "--train.epochs", "2", "--train.metrics_every", "0",
                                  "--train.valid_redraw", redraw)])
        records[name] = read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")

    def split(name, which):
        return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in records[name]
                if r["split"] == which]

    assert split("fixed", "train") == split("redraw", "train")
    fixed, redraw = split("fixed", "valid"), split("redraw", "valid")
    assert len(fixed) == len(redraw) == 2
    for a, b in zip(fixed, redraw):
        assert a["rec"] != b["rec"] and a["mi_batch_he2019"] != b["mi_batch_he2019"]
    assert split("fixed", "valid") == split("fixed_again", "valid")


def test_aggressive_switches_off_on_he_et_al_s_mi_when_asked(tmp_path):
    """The aggressive row's recipe: the switch-off follows the validation ``mi_batch_he2019`` of each
    epoch (new draws each epoch), not textvae's ``mi_batch``: on at epoch 1, off from the first epoch
    whose MI is below the previous epoch's, and never on again."""
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    remedy = '[{"name": "aggressive", "max_inner_steps": 2, "check_every": 1, "mi_key": "mi_batch_he2019"}]'
    main(["train", *tiny_args(tmp_path / "runs", "agg", corpus, "--train.iw_samples_final", "0", "--train.epochs", "5",
                              "--train.metrics_every", "0", "--train.valid_redraw", "true",
                              "--data.eval_batch_size", "8", "--objective.remedies", remedy)])
    valid = [r for r in read_jsonl(tmp_path / "runs" / "agg" / "metrics.jsonl") if r["split"] == "valid"]
    mis = [r["mi_batch_he2019"] for r in valid]
    off = next((i for i in range(1, len(mis)) if mis[i] < mis[i - 1]), None)
    assert off is not None, f"the noisy MI never dropped in 5 epochs: {mis}"
    assert [r.get("aggressive") for r in valid] == [1.0] * off + [0.0] + [None] * (len(valid) - off - 1)


def test_the_bf16_probe_says_whether_onednn_runs_an_lstm_in_bf16():
    """bf16_supported(cpu) is True exactly where an LSTM runs under CPU bf16 autocast (oneDNN refuses
    to create its primitive on an AVX2-only CPU)."""
    lstm = torch.nn.LSTM(8, 16, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.randn(2, 3, 8))
        ran = True
    except RuntimeError as e:
        assert "primitive" in str(e)
        ran = False
    assert bf16_supported(torch.device("cpu")) == ran


def test_bf16_where_the_cpu_has_none_is_refused_before_the_run_folder(tmp_path, capsys, cpu_without_bf16):
    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    with pytest.raises(SystemExit) as stop:
        main(["train", *tiny_args(tmp_path / "runs", "r", corpus), "--train.precision", "bf16"])
    assert stop.value.code == 2
    assert re.fullmatch(r"textvae: error: train.precision bf16: this CPU \(.+\) has no bfloat16 arithmetic "
                        r"\(on x86 it needs AVX-512\); use train.precision fp32", capsys.readouterr().err.strip())
    assert not (tmp_path / "runs" / "r").exists()
    main(["train", *tiny_args(tmp_path / "runs", "r", corpus), "--train.max_steps", "1",
          "--train.iw_samples_final", "0"])  # fp32 is not refused
    assert (tmp_path / "runs" / "r" / "metrics.jsonl").is_file()


def test_evaluate_says_when_the_run_read_fewer_sentences(synthetic_run, tmp_path, caplog):
    """The run (data.max_sentences 200) was tested on its first 200 sentences; evaluate reads them, as the run
    did, and says so; --data the same corpus reads the whole split."""
    run, _ = synthetic_run
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["evaluate", str(run), "--iw-samples", "0", "--no-generation", "--json", str(tmp_path / "e.json")])
    assert int(json.loads((tmp_path / "e.json").read_text())["n_sentences"]) == 200
    assert ("the run read at most 200 sentences of each split (data.max_sentences), and so does this evaluation, as "
            "its test report did (--data synthetic reads each split whole)") in caplog.text
    main(["evaluate", str(run), "--iw-samples", "0", "--no-generation", "--data", "synthetic", "--json",
          str(tmp_path / "w.json")])
    assert int(json.loads((tmp_path / "w.json").read_text())["n_sentences"]) > 200


def test_an_error_before_the_first_step_leaves_no_checkpoint_to_resume(tmp_path, monkeypatch):
    """A remedy of the user's own that fails at its first training step trained nothing: the same command,
    once it is mended, starts the run (no ``--resume`` for a step-0 checkpoint), however often it failed
    there. A run that fails later keeps its checkpoint, which ``--resume`` continues, and so does a
    non-finite loss at the first step (its message gives the command that resumes it)."""
    from textvae.remedies import REMEDIES, Remedy, register_remedy

    monkeypatch.setattr(REMEDIES, "_entries", dict(REMEDIES._entries))
    fails_from = {"step": 0}

    def kl_term(self, kl, beta, step):
        if torch.is_grad_enabled() and step >= fails_from["step"]:  # training, not validation
            raise RuntimeError(f"a bug of the user's at step {step}")
        return beta * kl.sum(-1) * (math.nan if fails_from.get("nan") else 1.0)

    register_remedy("fails_from")(type("FailsFrom", (Remedy,), {"replaces_kl": True, "kl_term": kl_term}))
    corpus = write_corpus(tmp_path / "corpus")

    def train(name, *extra):
        return main(["train", *tiny_args(tmp_path / "runs", name, corpus, "--train.max_steps", "4",
                                         "--objective.remedies", "[{name: fails_from}]"), *extra])

    for _ in range(2):  # the second start finds the first one's folder (its config.yaml, no checkpoint)
        with pytest.raises(RuntimeError, match="at step 0"):
            train("x")
        assert not (tmp_path / "runs" / "x" / "checkpoint.safetensors").exists()
        assert (tmp_path / "runs" / "x" / "config.yaml").is_file()  # what a start's errors may name
    fails_from["step"] = 2
    with pytest.raises(RuntimeError, match="at step 2"):
        train("later")
    assert (tmp_path / "runs" / "later" / "checkpoint.safetensors").is_file()
    fails_from["step"] = 100  # mended
    train("x")
    with pytest.raises(SystemExit):  # "already holds a run; pass --resume"
        train("later")
    train("later", "--resume")
    for name in ("x", "later"):
        assert any(r["split"] == "test" for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl"))
    fails_from["nan"] = True
    with pytest.raises(SystemExit):  # "non-finite ... resume it with a lower learning rate: ..."
        train("nan")
    assert (tmp_path / "runs" / "nan" / "checkpoint.safetensors").is_file()
