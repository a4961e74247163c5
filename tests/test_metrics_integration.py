"""The evaluation suite end to end: real models, the synthetic ground-truth corpus, the CLI.

A tiny LSTM-VAE trained for a few seconds on the class-Markov corpus (true log p(x) known per
sentence) must never look better than the truth; ``textvae evaluate`` must print its one table and
write the JSON; the IW estimator must work for a flow posterior without inverting the flow.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from textvae.cli import main
from textvae.config import (DataConfig, DecoderConfig, EncoderConfig, ModelConfig, ObjectiveConfig,
                            OptimConfig, RunConfig, TrainConfig)
from textvae.data.batch import collate
from textvae.data.datasets import load_dataset
from textvae.data.synthetic import model_from_truth
from textvae.data.tokenization import Tokenizer
from textvae.metrics import evaluate_model, format_table, iw_nll, iw_samples_for, latent_probe, reconstruction_bleu
from textvae.metrics.generation import generate_texts, score_texts
from textvae.metrics.likelihood import draw_samples, iw_log_marginal
from textvae.metrics.probe import probe_model
from textvae.models.flows import IAF
from textvae.models.textvae import TextVAE
from textvae.tasks import run_training

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One synthetic corpus for the module, generated into a temporary cache."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("TEXTVAE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-dimensional LSTM-VAE trained ~15 s on the synthetic corpus. Free bits keep KL at 3 nats,
    so q(z|x) is not the prior and the importance weights differ."""
    out = tmp_path_factory.mktemp("runs")
    cfg = RunConfig(
        name="tiny", out_dir=str(out),
        data=DataConfig(name="synthetic", batch_size=64, eval_batch_size=250),
        model=ModelConfig(emb_dim=16, latent_dim=2, encoder=EncoderConfig(hidden_dim=32),
                          decoder=DecoderConfig(hidden_dim=64, input_dropout=0.0, output_dropout=0.0)),
        objective=ObjectiveConfig(kl_schedule={"name": "linear", "start": 0.1, "warmup_steps": 200},
                                  remedies=[{"name": "free_bits_li2019", "target_kl": 3.0}]),
        optim=OptimConfig(name="adam", lr=1e-2),
        train=TrainConfig(epochs=4, device="cpu", threads=1, metrics_every=0, iw_samples_final=0,
                          progress=False, tensorboard=False))
    run_training(cfg)
    return out / "tiny"


def load_run(run_dir, max_sentences=None):
    model = TextVAE.from_pretrained(run_dir / "model").eval()
    tokenizer = Tokenizer.load(run_dir / "model" / "tokenizer.json")
    data = load_dataset(DataConfig(name="synthetic", max_sentences=max_sentences), tokenizer=tokenizer)
    return model, tokenizer, data


# ---- the ground truth lines up with the split ---------------------------------------------------
def test_truth_is_aligned_with_split_order_and_max_sentences_keeps_the_first():
    full = load_dataset(DataConfig(name="synthetic"))
    capped = load_dataset(DataConfig(name="synthetic", max_sentences=50))
    for split in ("train", "test"):
        assert capped.splits[split].lines == full.splits[split].lines[:50]
    truth = full.truth["splits"]["test"]
    test = full.splits["test"]
    assert truth["n_sentences"] == len(test)
    source = model_from_truth(full.truth)
    recomputed = source.log_prob([line.split() for line in test.lines[:40]])
    np.testing.assert_allclose(recomputed, truth["log_px"][:40], rtol=0, atol=1e-9)
    tokens = test.lengths - 1  # words + </s>
    assert int(tokens.sum()) == truth["n_tokens"]


# ---- a trained model never beats the truth ---------------------------------------------------------
def test_iw_nll_is_not_below_the_true_nll(run_dir):
    model, _, data = load_run(run_dir, max_sentences=300)
    test = data.splits["test"]
    batches = list(test.batches(300))
    result = iw_nll(model, batches, n_samples=100, generator=torch.Generator().manual_seed(0))
    index = torch.cat([b.index for b in batches])
    true_nll = -torch.tensor(data.truth["splits"]["test"]["log_px"], dtype=torch.float64)[index]
    diff = result.nll.double() - true_nll  # paired: the same sentences
    stderr = float(diff.std() / math.sqrt(len(diff)))
    assert float(diff.mean()) >= -3 * stderr, (float(diff.mean()), stderr)
    # the check has power: the model is within a few nats of the truth, and z is in use
    assert float(diff.mean()) < 6.0
    figures = evaluate_model(model, batches, metrics=("elbo", "au"), generator=torch.Generator().manual_seed(0))
    assert figures["au"] >= 1 and figures["kl"] > 1.0
    assert result.nll_mean < figures["neg_elbo"]


# ---- textvae evaluate ---------------------------------------------------------------------------------
def test_evaluate_cli_prints_one_table_and_writes_json(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    main(["evaluate", str(run_dir), "--max-sentences", "200", "--iw-samples", "50",
          "--gen-sentences", "40", "--json", str(out)])
    printed = capsys.readouterr().out
    table = printed.strip().splitlines()
    for label in ("NLL (IW, K=50)", "NLL (true, synthetic corpus)", "KL per dim, largest",
                  "MI (whole set, N=200)", "MI (true I(x; latent))", "BLEU, 0-100 (greedy from posterior mean)",
                  "distinct-2 (40 prior samples)", "self-BLEU, 0-100 (40 prior samples)"):
        assert label in printed, label
    assert table[-1] == f"results written to {out}" and table[-2].startswith("latent space")
    record = json.loads(out.read_text())
    assert record["n_sentences"] == 200 and record["iw_samples"] == 50
    assert len(record["kl_per_dim"]) == 2 == len(record["var_mu_per_dim"])
    assert sum(record["kl_per_dim"]) == pytest.approx(record["kl"])
    assert record["iw_nll"] <= record["neg_elbo"] + 0.5
    assert 0 < record["iw_nll_mc_se"] < 0.5 and 1 <= record["iw_ess"] <= 50  # printed beside the NLL
    assert record["iw_se_sentences"] > 0
    assert (f"(Monte Carlo se {record['iw_nll_mc_se']:.3f}, from a second draw of {record['iw_se_sentences']:.0f} "
            f"sentences; ESS {record['iw_ess']:.1f} of 50)") in printed
    assert 0 <= record["recon_bleu"] <= 100 and 0 < record["distinct_1"] <= 1
    assert len(record["examples"]["samples"]) == 20
    # the true figures are those of the evaluated sentences (an even subset of the split)
    _, _, data = load_run(run_dir)
    test = data.splits["test"]
    chosen = test.subset(200)
    log_px = np.asarray(data.truth["splits"]["test"]["log_px"])[chosen]
    assert record["true_nll"] == pytest.approx(-log_px.mean())
    assert record["true_ppl"] == pytest.approx(math.exp(-log_px.sum() / (test.lengths[chosen] - 1).sum()))

    main(["evaluate", str(run_dir), "--max-sentences", "100", "--iw-samples", "0", "--no-generation",
          "--json", str(out)])
    record = json.loads(out.read_text())
    assert "iw_nll" not in record and "recon_bleu" not in record and "NLL (IW" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(run_dir), "--max-sentences", "50", "--probe", "5", "--json", str(out)])
    assert stop.value.code == 2 and "labelled corpus" in capsys.readouterr().err


def test_generated_texts_are_seeded_and_clean(run_dir):
    model, tokenizer, data = load_run(run_dir, max_sentences=60)
    batches = list(data.splits["test"].batches(25))
    first = generate_texts(model, tokenizer, batches, n_samples=30, max_len=21, seed=0, batch_size=8)
    again = generate_texts(model, tokenizer, batches, n_samples=30, max_len=21, seed=0, batch_size=8)
    other = generate_texts(model, tokenizer, batches, n_samples=30, max_len=21, seed=1, batch_size=8)
    assert first.samples == again.samples and first.samples != other.samples
    lines = data.splits["test"].lines  # every synthetic word is in the vocabulary
    inputs, outputs = zip(*first.reconstructions)
    assert list(inputs) == [lines[i] for b in batches for i in b.index.tolist()]
    assert len(first.reconstructions) == 60 and len(first.samples) == 30 and not first.responses
    figures = score_texts(first)
    assert figures["recon_bleu"] == pytest.approx(reconstruction_bleu(inputs, outputs))
    assert figures["gen_sentences"] == 30 and not {"bleu1_precision", "intra_dist1", "n_contexts"} & set(figures)
    words = {w for s in first.samples + list(outputs) for w in s.split()}
    assert not words & {"<s>", "<pad>", "</s>"}


# ---- the latent probe on a model ----------------------------------------------------------------------
class TableEncoder(torch.nn.Module):
    """Posterior means looked up by split position; counts the sentences it encodes."""

    latent_dim = 3

    def __init__(self, feats):
        super().__init__()
        self.feats = feats
        self.encoded = 0

    def encode(self, batch):
        self.encoded += len(batch)
        return type("Q", (), {"mean": self.feats[batch.index]})()


def test_probe_model_matches_latent_probe_and_encodes_only_the_draws():
    g = torch.Generator().manual_seed(0)
    n_train, n_test = 400, 100
    labels = torch.arange(n_train + n_test) % 2
    feats = torch.randn(n_train + n_test, 3, generator=g) + 1.2 * labels[:, None]
    model = TableEncoder(feats)

    def batches(positions, extra=0):
        for i in range(0, len(positions), 32):
            idx = [int(p) + extra for p in positions[i:i + 32]]
            b = collate([[1, 5, 2]] * len(idx), idx)
            b.extras["labels"] = labels[idx]
            yield b

    test_batches = list(batches(np.arange(n_test), extra=n_train))
    got = probe_model(model, labels[:n_train].numpy(), lambda p: batches(p[::-1]), test_batches,
                      n_per_class=6, n_repeats=4, seed=3)
    want = latent_probe(feats[:n_train], labels[:n_train], feats[n_train:], labels[n_train:],
                        n_per_class=6, seed=3, n_repeats=4)
    assert got.accuracies == want.accuracies and 0.6 < got.mean <= 1.0
    assert model.encoded <= 4 * 12 + n_test


# ---- IW with a flow posterior, the LM, and the skip switch ---------------------------------------------
def tiny_model(posterior="gaussian", latent=3):
    cfg = ModelConfig(emb_dim=8, latent_dim=latent, encoder=EncoderConfig(hidden_dim=8),
                      decoder=DecoderConfig(hidden_dim=8, input_dropout=0.0, output_dropout=0.0),
                      posterior=posterior, init="torch")
    return TextVAE(cfg, 12).eval()


def random_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return collate([[1] + torch.randint(4, 12, (int(torch.randint(1, 7, (1,), generator=g)),),
                                        generator=g).tolist() + [2] for _ in range(n)], list(range(n)))


def test_iaf_iw_is_chunk_independent_and_never_inverts_the_flow(monkeypatch):
    model, batch = tiny_model("iaf"), random_batch()
    with torch.no_grad():
        q = model.encode(batch)
        torch.manual_seed(1)
        z, log_q = draw_samples(q, 5)
        inverted = q.log_prob(z.clone())  # a new tensor: log q by inverting the flow
        torch.testing.assert_close(log_q, inverted, rtol=0, atol=1e-4)

        def no_inversion(*args):
            raise AssertionError("the flow was inverted")

        monkeypatch.setattr(IAF, "inverse", no_inversion)
        estimates = []
        for budget in (1, 3 * batch.tokens.numel(), 10**6):  # 1, 3 and all samples per decoder call
            torch.manual_seed(2)
            estimates.append(iw_log_marginal(model, batch, q, n_samples=11, max_tokens=budget))
    torch.testing.assert_close(estimates[0], estimates[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(estimates[0], estimates[2], rtol=0, atol=1e-5)


def test_language_model_iw_is_its_exact_nll_and_zero_samples_skip_iw():
    lm, batch = tiny_model(latent=0), random_batch()
    assert [iw_samples_for(lm, k) for k in (0, 1, 500)] == [0, 1, 1]
    assert [iw_samples_for(tiny_model(), k) for k in (0, 1, 500)] == [0, 1, 500]
    figures = evaluate_model(lm, [batch], n_samples=50)
    assert figures["iw_samples"] == 1 and figures["iw_nll"] == pytest.approx(figures["neg_elbo"], abs=1e-5)
    assert figures["iw_nll_mc_se"] == 0.0 and figures["iw_se_sentences"] == 0  # exact: nothing to redraw
    table = format_table(figures)
    assert re.search(r"^NLL \(exact\) +[0-9.]+ \(a language model's likelihood needs no sampling\)$", table, re.M)
    assert "Monte Carlo" not in table and "KL per dim" not in table
    vae = tiny_model()
    skipped = evaluate_model(vae, [batch], n_samples=0, per_dim=True)
    assert "iw_nll" not in skipped and len(skipped["kl_per_dim"]) == 3
    assert set(skipped["dim_modes"]) <= {"active", "too noisy", "signal too weak"}
    table = format_table(skipped)
    assert "KL per dim, largest" in table and "NLL (IW" not in table
    assert table.splitlines()[-1].startswith("latent space")


@pytest.mark.parametrize("device, budget", [("cpu", 16384), ("cuda", 65536), ("mps", 16384)])
def test_iw_decoder_budget_defaults_to_the_devices(device, budget):
    from textvae.metrics.likelihood import default_max_tokens

    assert default_max_tokens(device) == budget


def test_iw_without_a_budget_takes_the_cpu_default_per_decoder_call(monkeypatch):
    """None resolves to the batch device's default: the decoder then scores at most
    16384 // (B·T) samples per call on the CPU."""
    model, batch = tiny_model(), random_batch()
    per_call = []
    real = type(model).log_likelihood

    def counted(self, b, z):
        per_call.append(z.shape[0])
        return real(self, b, z)

    monkeypatch.setattr(type(model), "log_likelihood", counted)
    with torch.no_grad():
        iw_log_marginal(model, batch, model.encode(batch), n_samples=500)
    assert max(per_call) == 16384 // batch.tokens.numel() and sum(per_call) == 500
