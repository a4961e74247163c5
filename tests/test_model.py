"""TextVAE invariants: causality, no mixing of examples, token counts, persistence."""
import json

import pytest
import torch

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, ObjectiveConfig
from textvae.data.batch import collate
from textvae.data.special import EOS_ID
from textvae.models.decoders import DECODERS
from textvae.models.encoders import ENCODERS
from textvae.models.textvae import TextVAE

V = 30


def tiny(rnn: str = "lstm", layers: int = 2, bidirectional: bool = True, latent: int = 4, **kw) -> TextVAE:
    # a part registered only as a decoder (or encoder) is paired with an LSTM on the other side
    encoder = rnn if rnn in ENCODERS else "lstm"
    cfg = ModelConfig(emb_dim=12, latent_dim=latent,
                      encoder=EncoderConfig(type=encoder, hidden_dim=12, num_layers=layers,
                                            bidirectional=bidirectional and ENCODERS.takes(encoder, "bidirectional")),
                      decoder=DecoderConfig(type=rnn if rnn in DECODERS else "lstm", hidden_dim=12,
                                            num_layers=layers, input_dropout=0.0, output_dropout=0.0),
                      init="torch", **kw)
    return TextVAE(cfg, V).eval()


def random_batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        length = int(torch.randint(1, 9, (1,), generator=g))
        words = torch.randint(4, V, (length,), generator=g).tolist()
        seqs.append([1] + words + [EOS_ID])
    return collate(seqs, index=list(range(n)))


def token_logprobs(model: TextVAE, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t, z) at every position [B, T-1], from the full-sequence decoder pass."""
    hidden, _ = model.decoder(tokens[:, :-1], z)
    return torch.log_softmax(model.projection(hidden), -1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("decoder", DECODERS.names())
def test_decoder_is_causal(decoder):
    """Changing token t+1 leaves log p(x_s | x_<s) for s <= t unchanged (a decoder that peeks at the
    future reports impossible NLLs)."""
    model = tiny(rnn=decoder)
    batch = random_batch()
    tokens = batch.tokens.clone()
    z = torch.randn(len(batch), 4)
    base = token_logprobs(model, tokens, z)
    for t in range(1, tokens.shape[1] - 2):  # token t+1 must also be a decoder input
        changed = tokens.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % V
        out = token_logprobs(model, changed, z)
        # output position j predicts token j+1 from inputs <= j: tokens 1..t are positions 0..t-1
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:]), "later positions must see the change"


@pytest.mark.parametrize("encoder", ENCODERS.names())
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True), (3, True)])
def test_batch_permutation_equivariance(encoder, layers, bidirectional):
    """Permuting the batch permutes every per-sentence output: hidden states of different
    sentences never mix in the (layers*directions, B, H) -> (B, ...) reshape."""
    model = tiny(rnn=encoder, layers=layers, bidirectional=bidirectional)
    batch = random_batch(7)
    perm = torch.randperm(7)
    with torch.no_grad():
        mu = model.encode(batch).mean
        mu_perm = model.encode(batch.select(perm)).mean
        z = torch.randn(3, 7, 4)
        ll = model.log_likelihood(batch, z)
        ll_perm = model.log_likelihood(batch.select(perm), z[:, perm])
    torch.testing.assert_close(mu_perm, mu[perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(ll_perm, ll[:, perm], rtol=0, atol=1e-5)


def test_encoder_ignores_padding():
    """A sentence encodes the same alone and padded inside a batch of longer sentences."""
    model = tiny()
    batch = random_batch(5)
    with torch.no_grad():
        together = model.encode(batch).mean
        alone = torch.cat([model.encode(batch.select(torch.tensor([i]))).mean for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


def test_reconstruction_is_sum_of_token_nll_and_counts_eos():
    model = tiny()
    batch = random_batch()
    z = torch.randn(len(batch), 4)
    with torch.no_grad():
        rec = model.token_nll(batch, z)
        lp = token_logprobs(model, batch.tokens, z)
    mask = batch.targets != 0
    torch.testing.assert_close(rec, -(lp * mask).sum(1), rtol=1e-6, atol=1e-5)
    words = (batch.tokens > EOS_ID).sum(1)  # real words only
    assert torch.equal(batch.n_tokens, words + 1), "</s> counts, <s> does not"
    assert torch.equal(mask.sum(1), batch.n_tokens)


def test_log_likelihood_sample_major_matches_single_calls():
    model = tiny()
    batch = random_batch(4)
    z = torch.randn(5, 4, 4)
    with torch.no_grad():
        ll = model.log_likelihood(batch, z)
        rows = torch.stack([-model.token_nll(batch, z[s]) for s in range(5)])
    torch.testing.assert_close(ll, rows, rtol=0, atol=1e-5)


def test_forward_terms_and_kl_closed_form():
    model = tiny().train()
    batch = random_batch()
    out = model(batch)
    q = model.encode(batch)
    expected = 0.5 * (q.mu**2 + q.logvar.exp() - 1 - q.logvar)
    torch.testing.assert_close(out.kl, expected, rtol=1e-5, atol=1e-6)
    assert out.rec.shape == (len(batch),) and out.kl.shape == (len(batch), 4)
    torch.testing.assert_close(out.loss, (out.rec + out.kl.sum(-1)).mean())
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "init_proj" in n or "posterior" in n)


def test_language_model_has_no_latent():
    lm = tiny(latent=0)
    assert not hasattr(lm, "encoder")
    out = lm(random_batch())
    assert out.kl.shape[1] == 0
    torch.testing.assert_close(out.loss, out.rec.mean())


@pytest.mark.parametrize("latent", [0, 4])
def test_save_load_round_trip(tmp_path, latent):
    model = tiny(latent=latent, tie_weights=False)
    model.save_pretrained(tmp_path)
    loaded = TextVAE.from_pretrained(tmp_path)
    assert not loaded.training  # loaded for use: no dropout, BN-VAE's running statistics left as saved
    model.eval()
    batch = random_batch()
    z = None if latent == 0 else torch.randn(len(batch), latent)
    with torch.no_grad():
        torch.testing.assert_close(loaded.token_nll(batch, z), model.token_nll(batch, z), rtol=0, atol=0)
    if latent:
        torch.testing.assert_close(loaded.encode(batch).mu, model.encode(batch).mu, rtol=0, atol=0)


def test_tied_weights_round_trip(tmp_path):
    cfg = ModelConfig(emb_dim=12, latent_dim=3, encoder=EncoderConfig(hidden_dim=8),
                      decoder=DecoderConfig(hidden_dim=12), tie_weights=True)
    model = TextVAE(cfg, V)
    assert model.projection.weight is model.decoder.embedding.weight
    model.save_pretrained(tmp_path)
    loaded = TextVAE.from_pretrained(tmp_path)
    assert loaded.projection.weight is loaded.decoder.embedding.weight
    torch.testing.assert_close(loaded.projection.weight, model.projection.weight)


def test_from_pretrained_errors(tmp_path):
    from textvae.errors import TextVAEError

    with pytest.raises(TextVAEError, match="missing"):
        TextVAE.from_pretrained(tmp_path)
    tiny().save_pretrained(tmp_path / "run" / "model")
    with pytest.raises(TextVAEError, match=f"^{tmp_path / 'run'} is a run folder; its model is {tmp_path / 'run/model'} "):
        TextVAE.from_pretrained(tmp_path / "run")
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(TextVAEError, match="cannot load weights"):
        TextVAE.from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for written in ({**config, "model": {**config["model"], "future_key": 1}}, [], {"vocab_size": 5}):
        (tmp_path / "config.json").write_text(json.dumps(written))
        with pytest.raises(TextVAEError, match="is not a model configuration this textvae reads"):
            TextVAE.from_pretrained(tmp_path)


def test_he2019_init_ranges():
    cfg = ModelConfig(emb_dim=12, latent_dim=3, encoder=EncoderConfig(hidden_dim=8), decoder=DecoderConfig(hidden_dim=8))
    model = TextVAE(cfg, V, ObjectiveConfig())
    for name, p in model.named_parameters():
        bound = 0.1 if "embedding" in name else 0.01
        assert p.abs().max() <= bound, name


def test_encoder_init_separate_from_decoder_init():
    """BN-VAE's set-up: He et al.'s U(-0.01, 0.01) on the decoder, PyTorch defaults on the encoder."""
    cfg = ModelConfig(emb_dim=12, latent_dim=3, encoder=EncoderConfig(hidden_dim=8), decoder=DecoderConfig(hidden_dim=8),
                      encoder_init="torch")
    model = TextVAE(cfg, V)
    assert all(p.abs().max() <= 0.1 for n, p in model.named_parameters() if n.startswith(("decoder.", "projection.")))
    assert model.posterior.linear.weight.abs().max() > 0.05  # default init of a Linear with 8 inputs: U(±0.35)
    assert model.encoder.rnn.weight_hh_l0.abs().max() > 0.05
