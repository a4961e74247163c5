"""``train.sparse_gradients``: row lookups back-propagate sparse gradients, which change the speed
of an SGD step and nothing else. Checked against the dense path: the same gradients (densified),
the same clipping, the same trained weights after several clipped SGD steps with and without the
sampled softmax; and the switch stays off wherever a sparse gradient would change the update."""
from types import SimpleNamespace

import pytest
import torch

from textvae.cli import main
from textvae.config import RunConfig
from textvae.models.sampled_softmax import SampledSoftmax
from textvae.training.logger import read_jsonl
from textvae.training.train import clip_gradients, sparse_gradients_apply
from tests.test_perf_levers import V, ragged_batch, tiny_model
from tests.test_train import state_of, tiny_args, write_corpus

torch.set_num_threads(1)


def gradients(sparse: bool, sampled: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model, batch = tiny_model(), ragged_batch()
    model.train()
    if sampled:
        model.sampled_softmax = SampledSoftmax(torch.arange(1, V + 1).float(), num_samples=6)
    model.set_sparse_gradients(sparse)
    torch.manual_seed(5)  # the same z noise and candidates on both paths
    model(batch).loss.backward()
    return model, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("sampled", [False, True])
def test_sparse_gradients_are_the_dense_ones(sampled):
    _, dense = gradients(False, sampled)
    _, sparse = gradients(True, sampled)
    assert dense.keys() == sparse.keys()
    layouts = {n for n, g in sparse.items() if g.is_sparse}
    want = {"encoder.embedding.weight", "decoder.embedding.weight"} | ({"projection.weight"} if sampled else set())
    assert layouts == want
    for name, g in dense.items():
        torch.testing.assert_close(sparse[name].to_dense(), g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clipping_sparse_gradients_equals_clipping_dense_ones(max_norm):
    """Clipped (max_norm below the norm) and unclipped: the same norm and the same gradients as
    clip_grad_norm_ on the dense gradients, although an embedding's sparse gradient repeats rows."""
    dense_model, _ = gradients(False, True)
    sparse_model, _ = gradients(True, True)
    assert not sparse_model.decoder.embedding.weight.grad.is_coalesced()
    want = torch.nn.utils.clip_grad_norm_(dense_model.parameters(), max_norm)
    got = clip_gradients(sparse_model, max_norm)
    torch.testing.assert_close(got, want)
    for (name, p), q in zip(sparse_model.named_parameters(), dense_model.parameters()):
        torch.testing.assert_close(p.grad.to_dense(), q.grad, rtol=1e-5, atol=1e-9, msg=name)


@pytest.mark.parametrize("sampled", ["0", "8"])
def test_training_with_sparse_gradients_equals_dense_training(tmp_path, sampled):
    """Six SGD steps at lr 1 with clipping active: the weights after them do not depend on the
    gradient layout."""
    corpus = write_corpus(tmp_path / "corpus", n_train=80, n_eval=20)
    states = {}
    for flag in ("false", "true"):
        main(["train", *tiny_args(tmp_path / "runs", flag, corpus, "--optim.name", "sgd", "--optim.lr", "1.0", "--optim.clip", "0.5",
                                  "--train.max_steps", "6", "--train.sampled_softmax", sampled,
                                  "--train.iw_samples_final", "0", "--train.sparse_gradients", flag)])
        states[flag] = state_of(tmp_path / "runs" / flag / "checkpoint.safetensors")
        (data,) = [r for r in read_jsonl(tmp_path / "runs" / flag / "metrics.jsonl") if r["split"] == "data"]
        assert data["sparse_gradients"] is (flag == "true")
    for key, value in states["false"].items():
        torch.testing.assert_close(states["true"][key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("change", [dict(name="adam"), dict(momentum=0.9), dict(weight_decay=1e-4), dict(world=2),
                                    dict(device="cuda")])
def test_sparse_gradients_only_where_the_update_is_the_same_and_pays(change):
    cfg, cpu = RunConfig(), torch.device("cpu")
    world = SimpleNamespace(size=change.pop("world", 1))
    device = torch.device(change.pop("device", "cpu"))
    assert sparse_gradients_apply(cfg, SimpleNamespace(size=1), cpu)
    for key, value in change.items():
        setattr(cfg.optim, key, value)
    assert not sparse_gradients_apply(cfg, world, device)
    cfg = RunConfig()
    cfg.train.sparse_gradients = False
    assert not sparse_gradients_apply(cfg, SimpleNamespace(size=1), cpu)