"""Data-parallel training (CPU, gloo, 2 processes launched by torchrun through the CLI) follows the
optimisation of a one-process run with the same global batch.

For the runs to be comparable, every random number must belong to a sentence, not to a rank:
dropout is off, and z ~ q(z|x) uses the deterministic "noise" eps = sin(1000 mu) (patched into
both runs), so each sentence's z is the same whichever rank holds it. Batches of 7 split 4/3
between the ranks and the last global batch holds 1 sentence (rank 1 gets an empty, weight-0
share), which a plain mean of per-rank means would get wrong; encoder pretraining re-draws the
decoder after epoch 1 from per-rank random streams, which rank 0's copy must overwrite.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import textvae
from textvae.cli import main
from textvae.models.distributions import DiagGaussian
from textvae.training.checkpoint import read_checkpoint
from textvae.training.distributed import World
from textvae.training.logger import read_jsonl
from tests.test_train import REPO, state_of, tiny_args, write_corpus

SETTINGS = ("--data.batch_size", "7", "--train.epochs", "2", "--train.log_every", "1",
            "--train.metrics_every", "5", "--train.checkpoint_every", "4", "--train.iw_samples_final", "3",
            "--optim.name", "sgd", "--optim.lr", "1.0",
            "--objective.remedies", '[{"name": "encoder_pretraining", "pretrain_epochs": 1, "warmup_steps": 5}]')
WORKER = """
import sys
from textvae.models.distributions import DiagGaussian
from tests.test_ddp import deterministic_rsample
DiagGaussian.rsample = deterministic_rsample
from textvae.cli import main
main(sys.argv[1:])
"""


def deterministic_rsample(self, n: int = 1, generator=None) -> torch.Tensor:
    """z = mu + sin(1000 mu) * sigma: a function of the sentence alone, still reparameterised."""
    eps = torch.sin(1000.0 * self.mu.detach())
    return self.mu + eps.expand(n, *self.mu.shape) * self.std


def torchrun(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process run, two-process run) of the same configuration."""
    tmp = tmp_path_factory.mktemp("ddp")
    corpus = write_corpus(tmp / "corpus", n_train=71, n_eval=20)
    done = torchrun(["train", *tiny_args(tmp, "two", corpus, *SETTINGS)], tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp / "two.stderr").write_text(done.stderr)
    mp = pytest.MonkeyPatch()
    mp.setattr(DiagGaussian, "rsample", deterministic_rsample)
    try:
        main(["train", *tiny_args(tmp, "one", corpus, *SETTINGS)])
    finally:
        mp.undo()
    return tmp / "one", tmp / "two"


def test_two_processes_follow_the_one_process_trajectory(runs):
    one, two = runs
    logs = [read_jsonl(run / "metrics.jsonl") for run in runs]
    splits = [[r["split"] for r in log] for log in logs]
    assert splits[0] == splits[1]  # rank 0 alone logs: no duplicates, same events
    train = [[r for r in log if r["split"] == "train"] for log in logs]
    assert [r["step"] for r in train[1]] == list(range(1, 23))  # 11 global batches per epoch
    for a, b in zip(*train):
        for key in ("loss", "rec", "kl", "kl_term", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["step"], key)
    for a, b in zip(*logs):  # validation, metrics, test report: rank 0's evaluation of the same weights
        if a["split"] in ("valid", "valid_metrics", "test"):
            for key in ("neg_elbo", "rec", "kl", "mi_batch", "mi_dataset", "au", "iw_nll"):
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (a["split"], a["step"], key)
    assert any(r.get("decoder_reinitialised") for r in logs[1] if r["split"] == "valid")

    got, want = state_of(two / "checkpoint.safetensors"), state_of(one / "checkpoint.safetensors")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=name)
    assert len(read_checkpoint(two / "checkpoint.safetensors").rng_states) == 2  # every rank's stream saved
    assert next(r for r in logs[1] if r["split"] == "data")["world_size"] == 2


def test_no_unused_parameter_search_where_none_can_go_unused(runs):
    """Encoder pretraining with the standard normal prior (no parameters): DDP is not told to
    search for unused parameters, so no rank warns that the search found none."""
    assert "find_unused_parameters" not in (runs[1].parent / "two.stderr").read_text()


@pytest.mark.parametrize("prior,remedy,expected", [("standard_normal", "encoder_pretraining", False),
                                                   ("mog", "encoder_pretraining", True), ("mog", "bn_vae", False)])
def test_parameters_may_go_unused(prior, remedy, expected):
    from textvae.config import ModelConfig, ObjectiveConfig
    from textvae.models.textvae import TextVAE
    from textvae.training.distributed import parameters_may_go_unused

    model = TextVAE(ModelConfig(emb_dim=8, latent_dim=3, prior=prior), 20, ObjectiveConfig(remedies=[{"name": remedy}]))
    assert parameters_may_go_unused(model) is expected


def test_the_cvae_s_prior_network_may_go_unused():
    """Its prior p(z|c) is a network (a method of the model, not a module): encoder pretraining leaves it out."""
    from textvae.training.distributed import parameters_may_go_unused
    from tests.test_dialogue import tiny

    assert parameters_may_go_unused(tiny([{"name": "encoder_pretraining"}])) is True
    assert parameters_may_go_unused(tiny([{"name": "bow"}])) is False


def test_procedure_remedies_are_refused(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_train=40, n_eval=20)
    done = torchrun(["train", *tiny_args(tmp_path, "agg", corpus, "--objective.remedies", '[{"name": "aggressive"}]')],
                    tmp_path)
    assert done.returncode != 0
    assert "textvae: error: remedy 'aggressive' takes optimiser steps of its own" in done.stderr
    # the workers print the one-line message; torchrun's own traceback (ChildFailedError) follows,
    # so a textvae traceback is a frame in the package's own files -- the checkout's or the venv's
    # path may contain "textvae" too
    assert not package_frames(done.stderr)


def package_frames(stderr: str) -> list[str]:
    """The traceback frames of ``stderr`` that lie in the textvae package's source files."""
    package = Path(textvae.__file__).resolve().parent
    frames = re.findall(r'^\s*File "([^"]+)", line \d+', stderr, flags=re.MULTILINE)
    return [f for f in frames if Path(f).resolve().is_relative_to(package)]


def test_package_frames_finds_textvae_frames_only():
    package = Path(textvae.__file__).resolve().parent
    elsewhere = "/home/ci/textvae-clone/.venv/lib/python3/site-packages/torch/distributed/run.py"
    stderr = (f'Traceback (most recent call last):\n  File "{elsewhere}", line 9, in main\n'
              f'  File "{package / "cli.py"}", line 3, in main\nValueError: x\n')
    assert package_frames(stderr) == [str(package / "cli.py")]


@pytest.mark.parametrize("size,n", [(2, 7), (2, 1), (3, 8), (4, 2)])
def test_weighted_shares_give_the_global_mean_gradient(size, n):
    """Σ_r w_r ∇mean_r / R (what DDP computes) equals ∇ of the global batch mean, shares uneven or empty."""
    x = torch.randn(n, 3, dtype=torch.float64)
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def loss(rows: np.ndarray) -> torch.Tensor:
        return torch.log1p((x[torch.as_tensor(rows)] @ theta) ** 2).mean()

    (want,) = torch.autograd.grad(loss(np.arange(n)), theta)
    index = np.arange(n)
    total = torch.zeros(3, dtype=torch.float64)
    seen = []
    for rank in range(size):
        share, weight = World(rank, size).shard(index)
        (g,) = torch.autograd.grad(loss(share) * weight, theta)
        total += g / size
        seen += list(share) if weight else []
    assert seen == list(range(n))  # contiguous, disjoint, complete
    torch.testing.assert_close(total, want)


def test_the_dialogue_cvae_trains_data_parallel_as_in_one_process(tmp_path):
    """The dialogue task runs in the same loop, so DDP comes with it: two processes follow one (for
    two steps: the tiny CVAE amplifies the ranks' other rounding of the same sums within a few more)."""
    import yaml

    from tests.test_dialogue import write_dialogues

    write_dialogues(tmp_path)
    model = {"emb_dim": 8, "utterance_hidden": 6, "context_hidden": 10, "latent_dim": 3, "prior_hidden": 12,
             "decoder_hidden": 9, "use_acts": True, "act_emb_dim": 4, "act_hidden": 7}
    recipe = {"task": "dialogue", "out_dir": str(tmp_path / "runs"), "model": model,
              "data": {"name": str(tmp_path), "context_turns": 2, "batch_size": 7, "eval_batch_size": 4},
              "objective": {"remedies": [{"name": "bow", "mlp_dim": 5}]},
              "optim": {"name": "sgd", "lr": 0.1},
              "train": {"epochs": 1, "max_steps": 2, "log_every": 1, "metrics_every": 0, "iw_samples_final": 0, "progress": False,
                        "tensorboard": False, "threads": 1, "device": "cpu"},
              "eval": {"n_responses": 1, "max_contexts": 1, "max_len": 3}}
    (tmp_path / "cvae.yaml").write_text(yaml.safe_dump(recipe))
    done = torchrun(["train", str(tmp_path / "cvae.yaml"), "--name", "two"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    mp = pytest.MonkeyPatch()
    mp.setattr(DiagGaussian, "rsample", deterministic_rsample)
    try:
        main(["train", str(tmp_path / "cvae.yaml"), "--name", "one"])
    finally:
        mp.undo()
    runs = [tmp_path / "runs" / name for name in ("one", "two")]
    train = [[r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "train"] for run in runs]
    assert [r["step"] for r in train[1]] == [1, 2]
    assert next(r for r in read_jsonl(runs[1] / "metrics.jsonl") if r["split"] == "data")["world_size"] == 2
    for a, b in zip(*train):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5), a["step"]
    got, want = (state_of(run / "checkpoint.safetensors") for run in reversed(runs))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=name)
