"""Never losing work: runs really killed (SIGKILL) mid-epoch, at an epoch end or in the middle of a
checkpoint write resume to the parameters, best model and log of an uninterrupted run; a
non-finite loss stops with a diagnostic, keeps the last checkpoint and its resume command works.
"""
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from textvae.cli import main
from textvae.config import RunConfig
from textvae.errors import TextVAEError
from textvae.models.textvae import TextVAE
from textvae.remedies import REMEDIES
from textvae.tasks.runconfig import parse_run_config
from textvae.training.checkpoint import read_checkpoint
from textvae.training import signals
from textvae.training.logger import read_jsonl
from textvae.training.signals import PARENT_ENV
from tests.test_train import REPO, state_of, tiny_args, write_corpus

# 13 batches per epoch, 4 epochs; dropout and word dropout draw from the RNG; lr 0.1 makes
# epoch 3 fail to improve, so the run also decays the lr and reloads the best model.
SETTINGS = ("--data.batch_size", "16", "--train.epochs", "4", "--train.checkpoint_every", "4",
            "--train.metrics_every", "5", "--train.log_every", "3", "--model.decoder.input_dropout", "0.3",
            "--objective.remedies", '[{"name": "word_dropout", "p": 0.2}]', "--optim.lr", "0.1",
            "--optim.decay_start_epoch", "1", "--optim.decay_patience", "1")
FINAL_STEP = 52
VOLATILE = {"time", "tokens_per_s", "train_seconds", "train_tokens_per_s"}  # wall-clock figures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    main(["train", *tiny_args(out, "ref", corpus, *SETTINGS)])
    run = out / "ref"
    valid = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "valid"]
    assert [r["improved"] for r in valid] == [True, True, False, True]  # the decay path is exercised
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    """Same final parameters (bit for bit), best model, loop state and log (but for wall-clock)."""
    got, want = state_of(run / "checkpoint.safetensors"), state_of(reference / "checkpoint.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    best, best_ref = load_file(run / "model/model.safetensors"), load_file(reference / "model/model.safetensors")
    assert all(torch.equal(best[k], best_ref[k]) for k in best_ref)
    loop, loop_ref = (read_checkpoint(r / "checkpoint.safetensors").meta["loop"] for r in (run, reference))
    assert steady(loop) == steady(loop_ref)
    assert [steady(r) for r in read_jsonl(run / "metrics.jsonl") if r["split"] != "source"] == \
        [steady(r) for r in read_jsonl(reference / "metrics.jsonl") if r["split"] != "source"]
    # each start of the run says which code it ran: the resumed run has one record more
    starts = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "source"]
    assert len(starts) == 2 and starts[0] == 0


def steady(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def checkpoint_step(path: Path) -> int:
    """The step of the checkpoint at ``path`` (-1 while there is none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["textvae"])["meta"]["loop"]["step"]
    except Exception:  # not written yet
        return -1


def start(argv: list[str], log: Path, code: str = "from textvae.cli import main; main(sys.argv[1:])"):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", f"import sys; {code}", *argv], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 1200.0) -> None:
    # the deadline only catches a run that hangs: niced beside two training runs on two cores, a run's
    # start (torch's import, the data, the kernels' cache) has taken over 300 s of wall clock
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "the run never got to the kill point"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


@pytest.mark.parametrize("after_step", [1, 13, 37])  # just after the first checkpoint, an epoch end, late
def test_killed_run_resumes_exactly(corpus, reference, tmp_path, after_step):
    args = tiny_args(tmp_path, "run", corpus, *SETTINGS)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    proc = start(["train", *args], tmp_path / "log.txt")
    kill_when(proc, lambda: checkpoint_step(ckpt) >= after_step)
    assert checkpoint_step(ckpt) < FINAL_STEP
    main(["train", *args, "--resume"])
    assert_same_run(tmp_path / "run", reference)


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(corpus, reference, tmp_path):
    """The 3rd checkpoint write (step 8) stops half-way through its file; the run is killed then."""
    marker = tmp_path / "writing"
    code = f"""
import pathlib, time, safetensors.torch as st
original, calls = st.save_file, []
def save_file(tensors, filename, metadata=None):
    original(tensors, filename, metadata=metadata)
    if filename.endswith("checkpoint.safetensors.tmp"):
        calls.append(filename)
        if len(calls) == 3:
            data = pathlib.Path(filename).read_bytes()
            pathlib.Path(filename).write_bytes(data[: len(data) // 2])
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(600)
st.save_file = save_file
from textvae.cli import main
main(sys.argv[1:])
"""
    args = tiny_args(tmp_path, "run", corpus, *SETTINGS)
    proc = start(["train", *args], tmp_path / "log.txt", code)
    kill_when(proc, marker.exists)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    with pytest.raises(TextVAEError, match="corrupted checkpoint"):
        read_checkpoint(ckpt.with_name(ckpt.name + ".tmp"))  # the half-written file
    assert read_checkpoint(ckpt).meta["loop"]["step"] == 4  # the previous checkpoint, intact
    main(["train", *args, "--resume"])
    assert_same_run(tmp_path / "run", reference)


@pytest.mark.parametrize("stop_step", [6, 13])  # mid-epoch (no periodic checkpoint there), an epoch's last step
def test_sigterm_stops_after_the_step_with_its_checkpoint_and_resumes_exactly(corpus, reference, tmp_path, stop_step):
    """The run signals itself right after step ``stop_step``: it stops there (exit 143, 128 + SIGTERM)
    with a checkpoint of that very step, and resuming gives the uninterrupted run."""
    code = f"""
import os, signal, textvae.training.train as loop
original = loop.train_step
def train_step(run, index):
    result = original(run, index)
    if run.state.step == {stop_step}:
        os.kill(os.getpid(), signal.SIGTERM)
    return result
loop.train_step = train_step
from textvae.cli import main
main(sys.argv[1:])
"""
    args = tiny_args(tmp_path, "run", corpus, *SETTINGS)
    proc = start(["train", *args], tmp_path / "log.txt", code)
    assert proc.wait(timeout=300) == 143
    log = (tmp_path / "log.txt").read_text()
    assert "SIGTERM: training stops after the current step, with a checkpoint" in log
    # the run's own command: its config.yaml holds the overrides it was started with
    assert f"textvae: interrupted; continue with: textvae train {tmp_path / 'run' / 'config.yaml'} --resume" in log
    assert "Traceback" not in log
    assert checkpoint_step(tmp_path / "run" / "checkpoint.safetensors") == stop_step
    main(["train", *args, "--resume"])
    assert_same_run(tmp_path / "run", reference)


def test_signal_handlers_ask_to_stop_then_a_second_ctrl_c_stops_at_once():
    from textvae.training.signals import stop_on_signals, stop_requested

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the process goes on
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # after a request, Ctrl-C is "now"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not stop_requested()


def nan_after(monkeypatch, owner: type, method: str, calls: int) -> None:
    """Make ``owner.method`` return NaN from its ``calls``-th call in training mode on."""
    original, seen = getattr(owner, method), []

    def patched(self, *args, **kwargs):
        value = original(self, *args, **kwargs)
        if self.training:
            seen.append(1)
            if len(seen) >= calls:
                return value * math.nan
        return value

    monkeypatch.setattr(owner, method, patched)


@pytest.mark.parametrize("term", ["rec", "bow", "aggressive", "huge_lr"])
def test_nonfinite_loss_stops_with_a_diagnostic(corpus, tmp_path, monkeypatch, capsys, term):
    extra = ["--data.batch_size", "16", "--train.checkpoint_every", "4", "--train.max_steps", "12",
             "--train.log_every", "1"]
    if term == "rec":
        nan_after(monkeypatch, TextVAE, "token_nll", 7)
        expected = r"non-finite reconstruction term \(rec\) at step 7 "
    elif term == "bow":
        extra += ["--objective.remedies", '[{"name": "bow"}]']
        nan_after(monkeypatch, REMEDIES.get("bow"), "extra_loss", 7)
        expected = r"non-finite extra loss of remedy 'bow' at step 7 "
    elif term == "aggressive":  # in an encoder update of the remedy, before the step's own
        extra += ["--objective.remedies", '[{"name": "aggressive", "max_inner_steps": 2, "check_every": 5}]']
        nan_after(monkeypatch, TextVAE, "token_nll", 19)  # 3 forwards a step: 2 inner, 1 outer
        expected = r"non-finite loss or gradient in an inner update of remedy 'aggressive' at step 7 "
    else:  # a real divergence: SGD with an absurd step size and no clipping
        extra += ["--optim.name", "sgd", "--optim.lr", "1e30", "--optim.clip", "0"]
        expected = r"non-finite .* at step [2-9] "
    args = tiny_args(tmp_path, "run", corpus, *extra)
    with pytest.raises(SystemExit) as stop:
        main(["train", *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("textvae: error:")]
    assert re.search(expected, line), line
    run = tmp_path / "run"
    failed_at = int(re.search(r"at step (\d+)", line).group(1))
    kept = read_checkpoint(run / "checkpoint.safetensors")
    assert kept.meta["loop"]["step"] == (failed_at - 1) // 4 * 4  # the last checkpoint before the failure
    assert f"{run / 'checkpoint.safetensors'} (step {kept.meta['loop']['step']})" in line
    assert all(torch.isfinite(v).all() for k, v in kept.tensors.items()
               if k.startswith("model.") and not k.endswith(".last_mi"))  # aggressive's: NaN until an epoch ends

    # the command the message gives resumes with half the learning rate and finishes
    command = line.split("resume it with a lower learning rate: ")[1].split()
    assert command[:2] == ["textvae", "train"] and "--resume" in command
    new_lr = float(command[command.index("--optim.lr") + 1])
    monkeypatch.undo()
    if term == "huge_lr":
        return  # halving 1e30 does not rescue it; the rest is covered by the other cases
    main(command[1:])
    records = read_jsonl(run / "metrics.jsonl")
    (resumed,) = [r for r in records if r["split"] == "resume"]
    assert resumed["changed"] == {"optim.lr": [0.001, new_lr]} and new_lr == 0.0005
    assert [r["lr"] for r in records if r["split"] == "train"][-1] == new_lr
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 13))  # no duplicates
    assert [r["split"] for r in records].count("nonfinite") == 0  # cut with the rest after the checkpoint
    assert read_checkpoint(run / "checkpoint.safetensors").meta["config"]["optim"]["lr"] == new_lr


def test_a_run_stopped_within_an_epoch_resumed_with_a_budget_that_ends_there_is_validated_there(
        corpus, tmp_path, monkeypatch):
    """A signal stops it after step 6 of 13 (no validation there); resumed with train.max_steps 6, it trains no
    step, but a run of that budget is validated at its last step: so is this one, to the same test report."""
    import textvae.training.train as loop

    original, stop = loop.train_step, []

    def train_step(run, index):
        result = original(run, index)
        stop.append(run.state.step == 6)
        return result

    monkeypatch.setattr(loop, "train_step", train_step)
    monkeypatch.setattr(loop, "stop_requested", lambda: bool(stop) and stop[-1])
    args = tiny_args(tmp_path, "run", corpus, *SETTINGS)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        main(["train", *args])
    assert checkpoint_step(tmp_path / "run" / "checkpoint.safetensors") == 6
    monkeypatch.setattr(loop, "stop_requested", lambda: False)
    main(["train", *args, "--train.max_steps", "6", "--resume"])
    main(["train", *tiny_args(tmp_path, "fresh", corpus, *SETTINGS, "--train.max_steps", "6")])
    records = {name: read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("run", "fresh")}
    for name in records:
        assert [r["step"] for r in records[name] if r["split"] == "valid"] == [6]
    (resumed, fresh) = ({k: v for k, v in r.items() if k not in VOLATILE}
                        for r in (records[name][-1] for name in ("run", "fresh")))
    assert resumed["split"] == "test" and resumed == fresh


def test_a_run_stopped_before_its_first_checkpoint_is_told_to_start_again(corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C while a run starts (its data, a first build of the C++ kernels): there is nothing to resume."""
    import textvae.training.train as loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    original = loop.native_kernels_used
    monkeypatch.setattr(loop, "native_kernels_used", interrupted)
    args = tiny_args(tmp_path, "run", corpus, "--train.max_steps", "2")
    with pytest.raises(SystemExit) as stop:
        main(["train", *args])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().endswith(
        "textvae: interrupted; no checkpoint was written yet: start it again, without --resume")
    monkeypatch.setattr(loop, "native_kernels_used", original)
    main(["train", *args])  # as it says
    assert checkpoint_step(tmp_path / "run" / "checkpoint.safetensors") == 2
    # a checkpoint of a newer textvae (a loop state this one does not know) is a one-line error, not a traceback
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    from textvae.training.train import LoopState

    with pytest.raises(TextVAEError, match=r"a checkpoint written by a newer textvae \(its loop state has "
                                           r"future_key\); resume or read it with that version"):
        LoopState.from_meta({**ckpt.meta["loop"], "future_key": 1})


def test_a_finished_run_resumed_unchanged_is_not_evaluated_again(corpus, tmp_path, caplog, capsys):
    """Its test report stands: the log is untouched and the command prints it; with a larger budget the
    same --resume trains on."""
    args = tiny_args(tmp_path, "x", corpus, "--train.max_steps", "2", "--train.iw_samples_final", "2")
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["train", *args])
    assert "training ends at step 2: train.max_steps reached" in caplog.text
    caplog.clear()
    log = (tmp_path / "x" / "metrics.jsonl").read_bytes()
    first = capsys.readouterr().out
    # made by a textvae without train.retain_memory (read as its default), resumed with another thread count
    saved = yaml.safe_load((tmp_path / "x" / "config.yaml").read_text())
    del saved["train"]["retain_memory"]
    (tmp_path / "x" / "config.yaml").write_text(yaml.safe_dump(saved))
    with caplog.at_level(logging.INFO, logger="textvae"):
        main(["train", *args, "--resume", "--train.threads", "2"])
    assert (tmp_path / "x" / "metrics.jsonl").read_bytes() == log
    assert ("is finished and its settings are unchanged: its test report stands (metrics.jsonl); train.max_steps "
            "reached: --resume with a larger one trains it on") in caplog.text
    assert "training ends at step 2: train.max_steps reached" not in caplog.text  # said when it trained
    assert capsys.readouterr().out == first
    # a change that trains no further step is refused, not written into config.yaml unused
    config = (tmp_path / "x" / "config.yaml").read_bytes()
    with pytest.raises(SystemExit):
        main(["train", *args, "--resume", "--optim.lr", "0.5"])
    assert capsys.readouterr().err.strip() == (
        f"textvae: error: {tmp_path / 'x'} is finished (step 2): resumed, it trains no further step, so optim.lr "
        f"0.001 -> 0.5 would be written into its config.yaml unused; evaluate it again with `textvae "
        f"evaluate {tmp_path / 'x'}` (or resume it with settings of its test report alone), train a new run "
        f"(another --name), or raise train.max_steps to train on")
    assert (tmp_path / "x" / "metrics.jsonl").read_bytes() == log
    assert (tmp_path / "x" / "config.yaml").read_bytes() == config
    # a setting of its test report alone is taken: it reports again (in place of the last report), training nothing
    main(["train", *args, "--resume", "--train.iw_samples_final", "3"])
    records = read_jsonl(tmp_path / "x" / "metrics.jsonl")
    assert [(r["step"], r["iw_samples"]) for r in records if r["split"] == "test"] == [(2, 3)]
    assert yaml.safe_load((tmp_path / "x" / "config.yaml").read_text())["train"]["iw_samples_final"] == 3
    main(["train", *args, "--resume", "--train.max_steps", "3", "--train.iw_samples_final", "3"])
    records = read_jsonl(tmp_path / "x" / "metrics.jsonl")
    assert [r["split"] for r in records].count("test") == 1 and records[-1]["split"] == "test"
    assert records[-1]["step"] == 3


@pytest.mark.parametrize("state,train,advice", [
    ({"done": True, "epoch": 30}, {"epochs": 100}, r"\(step 9, its lr schedule ended\): resumed, .* or no budget trains it on$"),
    ({"train_seconds": 60.0}, {"max_seconds": 60.0}, r"\(step 9\): resumed, .* or raise train.max_seconds to train on$"),
    ({"epoch": 3}, {"epochs": 3, "max_steps": 9}, "or raise train.epochs and train.max_steps to train on$"),
])
def test_a_finished_run_is_told_what_would_train_it_on(tmp_path, state, train, advice):
    from textvae.training.train import LoopState, check_changes_train

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 9}) + "\n"
                                            + json.dumps({"split": "test", "step": 9}) + "\n")
    cfg = RunConfig()
    for key, value in train.items():
        setattr(cfg.train, key, value)
    changes = {"optim.lr": (1.0, 0.5)}
    with pytest.raises(TextVAEError, match=advice):
        check_changes_train(tmp_path, cfg, LoopState(step=9, **state), changes)
    check_changes_train(tmp_path, cfg, LoopState(step=9, **state), {"train.threads": (1, 2)})  # changes nothing
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 9}) + "\n")  # killed in its report
    check_changes_train(tmp_path, cfg, LoopState(step=9, **state), changes)


def test_a_copied_run_folder_resumes_itself_not_the_original(corpus, tmp_path, monkeypatch):
    """``textvae train COPY/config.yaml --resume``: the run is the folder its config.yaml is in, not the
    out_dir and name saved in it (where the run was made)."""
    main(["train", *tiny_args(tmp_path, "x", corpus, "--train.max_steps", "2", "--train.iw_samples_final", "0")])
    original = (tmp_path / "x" / "metrics.jsonl").read_bytes()
    shutil.copytree(tmp_path / "x", tmp_path / "elsewhere" / "copy")
    main(["train", str(tmp_path / "elsewhere" / "copy" / "config.yaml"), "--resume", "--train.max_steps", "3"])
    assert (tmp_path / "x" / "metrics.jsonl").read_bytes() == original
    assert read_jsonl(tmp_path / "elsewhere" / "copy" / "metrics.jsonl")[-1]["step"] == 3
    monkeypatch.chdir(tmp_path / "elsewhere" / "copy")  # given from inside the folder: the folder's own name
    cfg, _ = parse_run_config(["config.yaml", "--resume"])
    assert (cfg.out_dir, cfg.name) == (str(tmp_path / "elsewhere"), "copy")


def test_optimiser_settings_changed_on_resume_take_effect(corpus, tmp_path, caplog):
    """The checkpoint's param_groups come back with the optimiser's state, but a setting changed with
    --resume (momentum here) is the one the resumed run uses, as it is for every other setting; the
    console says which changed."""
    args = tiny_args(tmp_path, "x", corpus, "--optim.name", "sgd", "--optim.momentum", "0.9", "--train.max_steps", "2",
                     "--train.iw_samples_final", "0")
    main(["train", *args])
    with caplog.at_level(logging.WARNING, logger="textvae"):
        main(["train", *args, "--resume", "--optim.momentum", "0", "--optim.weight_decay", "0.01",
              "--train.max_steps", "4"])
    assert ("resuming with settings changed since the checkpoint, which take effect (and go into its config.yaml): "
            "optim.momentum 0.9 -> 0.0, optim.weight_decay 0.0 -> 0.01, train.max_steps 2 -> 4") in caplog.text
    (group,) = read_checkpoint(tmp_path / "x" / "checkpoint.safetensors").document["optimizer"]["param_groups"]
    assert group["momentum"] == 0 and group["weight_decay"] == 0.01
    (resumed,) = [r for r in read_jsonl(tmp_path / "x" / "metrics.jsonl") if r["split"] == "resume"]
    assert resumed["changed"] == {"optim.momentum": [0.9, 0], "optim.weight_decay": [0.0, 0.01],
                                  "train.max_steps": [2, 4]}


def test_a_budget_lowered_below_where_a_stopped_run_is_is_refused():
    """Resumed at step 62 (epoch 3) with train.max_steps 60 or train.epochs 2, a run would report 62 steps under a
    config.yaml naming 60: refused; raised, or unchanged, it resumes."""
    from textvae.config import TrainConfig
    from textvae.training.train import LoopState, check_budget_not_passed

    state = LoopState(lr=1.0, step=62, epoch=3)
    with pytest.raises(TextVAEError, match=r"^train.max_steps 60: the run is past it \(steps 62\), so a run of that "
                                           r"budget would have stopped earlier; resume it with a budget of at least 62"):
        check_budget_not_passed(state, TrainConfig(max_steps=60), {"train.max_steps": (400, 60)})
    with pytest.raises(TextVAEError, match=r"^train.epochs 2: the run is past it \(epochs 3\)"):
        check_budget_not_passed(state, TrainConfig(epochs=2), {"train.epochs": (40, 2)})
    check_budget_not_passed(state, TrainConfig(max_steps=62), {"train.max_steps": (400, 62)})
    within = LoopState(lr=1.0, step=62, epoch=2, batch_in_epoch=50)  # 50 batches into its third epoch
    with pytest.raises(TextVAEError, match=r"^train.epochs 2: the run is past it \(epochs 3\)"):
        check_budget_not_passed(within, TrainConfig(epochs=2), {"train.epochs": (40, 2)})
    check_budget_not_passed(within, TrainConfig(epochs=3), {"train.epochs": (40, 3)})
    check_budget_not_passed(state, TrainConfig(max_steps=60), {})  # not changed on resuming: the loop's own stop


def test_a_study_run_stopped_is_told_the_study_resumes_it(corpus, tmp_path, monkeypatch, capsys):
    """A study's run, stopped: its log is read beside the study's, which resumes its runs itself (no --resume)."""
    import textvae.training.train as loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "native_kernels_used", interrupted)
    monkeypatch.setenv(PARENT_ENV, str(os.getpid()))  # as a study sets it for its subprocesses
    monkeypatch.setattr(signals, "stop_with_parent", lambda: None)  # this process is not the study's child
    with pytest.raises(SystemExit) as stop:
        main(["train", *tiny_args(tmp_path, "run", corpus, "--train.max_steps", "2")])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().endswith(
        "textvae: interrupted; the study resumes it: run the same textvae study command again")
