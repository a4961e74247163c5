"""textvae.pretrained.load: a trained model for use from Python, reading sentences as its run read its corpus,
in eval mode, with one-line errors for what is the caller's mistake."""
import re
import shutil

import pytest
import torch

from textvae.cli import main
from textvae.errors import TextVAEError
from textvae.pretrained import load
from tests.test_train import tiny_args, write_corpus


@pytest.fixture(scope="module")
def lowercased(tmp_path_factory):
    """A tiny run trained on lowercased text."""
    tmp = tmp_path_factory.mktemp("pretrained")
    corpus = write_corpus(tmp / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp, "low", corpus, "--data.lowercase", "true", "--train.max_steps", "2",
                              "--model.decoder.output_dropout", "0.5")])
    return tmp / "low"


def test_a_loaded_run_reads_its_input_as_its_corpus_was_read(lowercased, tmp_path):
    vae = load(lowercased)
    assert not vae.model.training and vae.run_config["data"]["lowercase"] is True
    assert vae.folder == lowercased / "model"
    torch.testing.assert_close(vae.encode(["W1 W2", "w3"]), vae.encode(["w1 w2", "W3"]), rtol=0, atol=0)
    # a model folder on its own has no run configuration: its input is taken as given
    shutil.copytree(lowercased / "model", tmp_path / "alone")
    alone = load(tmp_path / "alone")
    assert alone.run_config is None and alone.prepare(["W1 W2"]) == ["W1 W2"]


def test_a_loaded_model_s_batches_evaluate_as_its_test_report_does(lowercased):
    """The library's path to figures on one's own sentences: the run's test split, in batches of 8, is read as
    the test report read it (its sentences and tokens) and gives its sampling-free figure, the active units."""
    from textvae.metrics import evaluate_model
    from textvae.training.logger import final_report, read_jsonl

    vae = load(lowercased)
    sentences = (lowercased.parent / "corpus" / "test.txt").read_text().splitlines()
    batches = vae.batches(sentences, batch_size=8)
    assert [len(b) for b in batches] == [8, 8, 4]
    figures = evaluate_model(vae.model, batches, metrics=("au",))
    report = final_report(read_jsonl(lowercased))  # a run folder stands for its metrics.jsonl
    assert (figures["n_sentences"], figures["n_tokens"]) == (report["n_sentences"], report["n_tokens"]) == (20, 142)
    assert figures["au"] == report["au"]


def test_encode_and_decode_are_deterministic_and_sampling_follows_its_generator(lowercased):
    vae = load(lowercased)
    mu = vae.encode(["w1 w2 w3", "w4"])
    assert mu.shape == (2, vae.model.latent_dim)
    assert vae.decode(mu) == vae.decode(mu) and len(vae.decode(mu, method="beam", beam_size=2)) == 2
    vae.model.train()  # a caller's training mode is left as it was
    assert torch.equal(vae.encode(["w1 w2 w3", "w4"]), mu) and vae.model.training
    vae.model.eval()
    first = vae.sample(3, generator=torch.Generator().manual_seed(5))
    assert len(first) == 3 and first == vae.sample(3, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("call, message", [
    (lambda vae: vae.encode("w1 w2"), "give a list of sentences, not one string"),
    (lambda vae: vae.encode([]), "no sentences given"),
    (lambda vae: vae.batches(["w1"], batch_size=0), "batch_size must be at least 1, got 0"),
    (lambda vae: vae.decode(None), "this model decodes from z [B, 4]; give z"),
    (lambda vae: vae.decode(torch.zeros(2, 7)), "z must have shape [B, 4], got (2, 7)"),
    (lambda vae: vae.decode(torch.zeros(1, 4), temperature=0.5), "method 'greedy' takes no ['temperature']"),
    (lambda vae: vae.sample(0), "n must be at least 1, got 0"),
    (lambda vae: vae.sample(2, batch_size=3), "sample: n is the number of sentences; it takes no batch_size"),
])
def test_the_caller_s_mistakes_are_one_line_errors(lowercased, call, message):
    with pytest.raises(TextVAEError, match=re.escape(message)):
        call(load(lowercased))
