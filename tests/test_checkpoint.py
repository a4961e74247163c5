"""Checkpoints: exact round trip of model, optimiser and RNG; clear errors for bad files."""
import pytest
import torch

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.errors import TextVAEError
from textvae.models.textvae import TextVAE
from textvae.training.checkpoint import load_checkpoint, save_checkpoint
from tests.test_model import random_batch


def make(vocab: int = 30, latent: int = 4) -> TextVAE:
    cfg = ModelConfig(emb_dim=8, latent_dim=latent, encoder=EncoderConfig(hidden_dim=8),
                      decoder=DecoderConfig(hidden_dim=8))
    return TextVAE(cfg, vocab)


def steps(model, optimizer, n):
    losses = []
    for i in range(n):
        out = model(random_batch(seed=i))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("opt", ["adam", "sgd_momentum"])
def test_round_trip_continues_identically(tmp_path, opt):
    """save -> load into fresh objects -> continue gives bit-identical losses and parameters."""
    def build(model):
        if opt == "adam":
            return torch.optim.Adam(model.parameters(), lr=1e-2)
        return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    torch.manual_seed(0)
    a = make()
    oa = build(a)
    steps(a, oa, 3)
    save_checkpoint(tmp_path / "c.safetensors", a, oa, {"step": 3})
    ref = steps(a, oa, 3)

    b = make()
    ob = build(b)
    meta = load_checkpoint(tmp_path / "c.safetensors", b, ob)
    assert meta == {"step": 3}
    assert steps(b, ob, 3) == ref  # dropout masks and z samples come from the restored RNG
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_other_vocabulary_is_a_clear_error(tmp_path):
    a = make(vocab=30)
    save_checkpoint(tmp_path / "c.safetensors", a, torch.optim.SGD(a.parameters(), lr=1), {})
    b = make(vocab=31)
    with pytest.raises(TextVAEError, match="does not fit this model"):
        load_checkpoint(tmp_path / "c.safetensors", b, None)


@pytest.mark.parametrize("damage", ["truncate", "garble", "missing"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    a = make()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, a, torch.optim.SGD(a.parameters(), lr=1), {})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        path.write_bytes(b"\x00\xff" * 100 + data[200:])
    else:
        path.unlink()
    with pytest.raises(TextVAEError, match="checkpoint"):
        load_checkpoint(path, make(), None)


def test_write_is_atomic(tmp_path, monkeypatch):
    """A failure during the write leaves the previous checkpoint loadable."""
    import safetensors.torch as st

    a = make()
    opt = torch.optim.SGD(a.parameters(), lr=1)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, a, opt, {"version": 1})

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, a, opt, {"version": 2})
    monkeypatch.undo()
    assert load_checkpoint(path, make(), None)["version"] == 1
