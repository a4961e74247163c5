"""Li et al. (2019)'s two runs: an autoencoder selected by its reconstruction
(``optim.plateau_kl_weight: 0``), then a VAE whose encoder starts from it (``model.encoder_from``),
and a study that chains the two (``{run:VARIANT}``)."""
import pytest
import torch
import yaml

from tests.test_train import tiny_args, write_corpus
from textvae import study as st
from textvae.cli import main
from textvae.errors import TextVAEError
from textvae.models.textvae import TextVAE
from textvae.tasks import create_task
from textvae.tasks.runconfig import parse_run_config
from textvae.training.logger import read_jsonl

AE = ("--objective.kl_schedule", "{name: constant, value: 0.0}", "--optim.plateau_kl_weight", "0")


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    """A tiny autoencoder (KL weight 0) trained 6 epochs, selected by validation rec; its KL grows
    from 0.04 to 4 nats while its rec falls every epoch."""
    tmp = tmp_path_factory.mktemp("ae")
    corpus = write_corpus(tmp / "corpus", n_train=60, n_eval=20)
    main(["train", *tiny_args(tmp / "runs", "ae", corpus, *AE, "--train.epochs", "6", "--optim.lr", "0.03",
                              "--model.encoder_init", "torch", "--train.metrics_every", "0")])
    return corpus, tmp / "runs" / "ae"


def test_autoencoder_is_selected_by_reconstruction(autoencoder):
    """With w = 0 an epoch counts as better when its validation rec is lower, whatever its KL
    (which grows freely under KL weight 0, so the -ELBO would have chosen otherwise)."""
    _, run = autoencoder
    valid = [r for r in read_jsonl(run / "metrics.jsonl") if r["split"] == "valid"]
    assert len(valid) == 6
    by_rec = [r["rec"] < min([v["rec"] for v in valid[:i]], default=float("inf")) for i, r in enumerate(valid)]
    by_elbo = [r["neg_elbo"] < min([v["neg_elbo"] for v in valid[:i]], default=float("inf"))
               for i, r in enumerate(valid)]
    assert [r["improved"] for r in valid] == by_rec
    assert by_rec != by_elbo  # the two criteria disagree on this run, so the flags tell them apart


def test_encoder_from_loads_the_inference_network_and_keeps_a_fresh_decoder(autoencoder, tmp_path):
    corpus, run = autoencoder
    args = tiny_args(tmp_path / "runs", "vae", corpus)
    fresh_cfg, _ = parse_run_config(args)
    warm_cfg, _ = parse_run_config([*args, "--model.encoder_from", str(run / "model")])
    task = create_task(warm_cfg)
    data = task.load_data()
    torch.manual_seed(5)
    warm = task.build_model(data)
    task.warm_start(warm, data)
    torch.manual_seed(5)
    fresh = create_task(fresh_cfg).build_model(data)
    source = TextVAE.from_pretrained(run / "model")
    for part in ("encoder", "posterior"):
        for name, tensor in getattr(warm, part).state_dict().items():
            assert torch.equal(tensor, getattr(source, part).state_dict()[name]), (part, name)
            assert not torch.equal(tensor, getattr(fresh, part).state_dict()[name]), (part, name)
    for part in ("decoder", "projection"):  # the draw a run without encoder_from gets
        for name, tensor in getattr(warm, part).state_dict().items():
            assert torch.equal(tensor, getattr(fresh, part).state_dict()[name]), (part, name)


@pytest.mark.parametrize("change, message", [
    (("--model.encoder.hidden_dim", "6"), "the encoder in .* has other parameters"),
    (("--model.latent_dim", "0"), "a language model .* has no encoder to load"),
])
def test_encoder_from_refuses_what_does_not_fit(autoencoder, tmp_path, change, message):
    corpus, run = autoencoder
    cfg, _ = parse_run_config([*tiny_args(tmp_path / "runs", "vae", corpus), *change,
                               "--model.encoder_from", str(run / "model")])
    task = create_task(cfg)
    data = task.load_data()
    with pytest.raises(TextVAEError, match=message):
        task.warm_start(task.build_model(data), data)


def test_encoder_from_refuses_another_vocabulary_and_a_missing_folder(autoencoder, tmp_path):
    _, run = autoencoder
    other = write_corpus(tmp_path / "other", n_train=60, n_eval=20, vocab=31, seed=3)
    for source, message in ((run / "model", "another vocabulary"), (tmp_path / "nothing", "encoder_from: not a saved")):
        cfg, _ = parse_run_config([*tiny_args(tmp_path / "runs", "vae", other), "--model.encoder_from", str(source)])
        task = create_task(cfg)
        data = task.load_data()
        with pytest.raises(TextVAEError, match=message):
            task.warm_start(task.build_model(data), data)


def test_a_run_from_another_runs_encoder_resumes_without_it(autoencoder, tmp_path):
    """The encoder is loaded when the run starts; a resumed run has it in its checkpoint, so the
    autoencoder's folder may be gone by then."""
    import shutil

    corpus, run = autoencoder
    source = tmp_path / "ae_model"
    shutil.copytree(run / "model", source)
    args = tiny_args(tmp_path / "runs", "vae", corpus, "--model.encoder_from", str(source), "--train.epochs", "2")
    main(["train", *args, "--train.max_steps", "3"])
    shutil.rmtree(source)
    main(["train", *args, "--resume"])
    assert [r["split"] for r in read_jsonl(tmp_path / "runs" / "vae" / "metrics.jsonl")].count("test") == 1


def test_posterior_remedies_come_along_when_both_models_have_them(tmp_path):
    def model(seed, remedies):
        from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, ObjectiveConfig

        torch.manual_seed(seed)
        cfg = ModelConfig(emb_dim=8, latent_dim=4, encoder=EncoderConfig(hidden_dim=8),
                          decoder=DecoderConfig(hidden_dim=8))
        return TextVAE(cfg, 20, ObjectiveConfig(remedies=remedies))

    bn = [{"name": "bn_vae", "gamma": 0.5}]
    source = model(1, bn)
    with torch.no_grad():
        source.objective.posterior_remedies()[0].shift.add_(1.0)  # differs from any fresh draw
    source.save_pretrained(tmp_path / "src")
    same, plain = model(2, bn), model(2, [])
    same.load_inference_network(tmp_path / "src")
    plain.load_inference_network(tmp_path / "src")  # no BN here: encoder and head only
    for name, tensor in same.objective.posterior_remedies()[0].state_dict().items():
        assert torch.equal(tensor, source.objective.posterior_remedies()[0].state_dict()[name]), name
    assert torch.equal(plain.encoder.state_dict()["rnn.weight_hh_l0"], source.encoder.state_dict()["rnn.weight_hh_l0"])
    # The other way round (the composite row): BN-VAE on a model whose autoencoder had none keeps its fresh BN.
    plain.save_pretrained(tmp_path / "plain")
    bn_from_plain, drawn = model(3, bn), model(3, bn)
    bn_from_plain.load_inference_network(tmp_path / "plain")
    assert torch.equal(bn_from_plain.posterior.linear.weight, plain.posterior.linear.weight)
    for name, tensor in bn_from_plain.objective.posterior_remedies()[0].state_dict().items():
        assert torch.equal(tensor, drawn.objective.posterior_remedies()[0].state_dict()[name]), name


def chained_study(tmp_path, corpus):
    """The VAE listed first: the study must still train the autoencoder before it."""
    spec = {"seeds": [1], "budget": {"epochs": 1},
            "data": {"name": str(corpus), "batch_size": 20, "eval_batch_size": 20},
            "overrides": {"model": {"emb_dim": 8, "latent_dim": 4, "encoder.hidden_dim": 8, "decoder.hidden_dim": 8},
                          "train": {"metrics_every": 0, "iw_samples_final": 0, "tensorboard": False, "threads": 1}},
            "variants": {"fb": {"model.encoder_from": "{run:ae}/model"},
                         "ae": {"objective.kl_schedule": {"name": "constant", "value": 0.0},
                                "optim.plateau_kl_weight": 0.0}}}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_study_trains_a_named_run_before_the_run_that_needs_it(autoencoder, tmp_path, monkeypatch):
    corpus, _ = autoencoder
    path = chained_study(tmp_path, corpus)
    runs = {r.label: r for r in st.plan(st.load_study(path, str(tmp_path / "out")))}
    assert runs["fb/seed1"].needs == ("ae/seed1",) and runs["ae/seed1"].needs == ()
    assert runs["fb/seed1"].config.model.encoder_from == str(tmp_path / "out" / "ae" / "seed1" / "model")

    # --only fb with the autoencoder unfinished: fb fails without training
    assert [r.label for r in st.execute(st.load_study(path, str(tmp_path / "out")), list(runs.values()),
                                        only=["fb"])] == ["fb/seed1"]
    assert st.run_state(runs["fb/seed1"]) == "new" and not runs["fb/seed1"].dir.exists()

    import textvae.tasks as tasks_module
    real_train, calls = tasks_module.run_training, []
    monkeypatch.setattr(tasks_module, "run_training", lambda cfg, resume=False: (calls.append(cfg.out_dir.split("/")[-1]),
                                                                                 real_train(cfg, resume))[1])
    st.run_study(path, out=str(tmp_path / "out"))
    assert calls == ["ae", "fb"]

    # The study folder moved: fb's encoder_from moved with it, so its finished run is still this study's.
    (tmp_path / "out").rename(tmp_path / "moved")
    st.run_study(path, out=str(tmp_path / "moved"))
    assert calls == ["ae", "fb"]


def test_study_reference_to_an_unknown_variant_is_an_error(autoencoder, tmp_path):
    corpus, _ = autoencoder
    spec = yaml.safe_load(chained_study(tmp_path, corpus).read_text())
    spec["variants"]["fb"]["model.encoder_from"] = "{run:autoencoder}/model"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(TextVAEError, match=r"\{run:autoencoder\} names no variant of the study; valid: fb, ae"):
        st.plan(st.load_study(path))


@pytest.mark.parametrize("loop", [{"fb": "ae", "ae": "fb"}, {"fb": "fb"}])
def test_runs_that_need_each_other_are_an_error(autoencoder, tmp_path, loop):
    corpus, _ = autoencoder
    spec = yaml.safe_load(chained_study(tmp_path, corpus).read_text())
    for variant, needed in loop.items():
        spec["variants"][variant]["model.encoder_from"] = f"{{run:{needed}}}/model"
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(TextVAEError, match=r"runs that need each other .* can never start: fb/seed1 -> "):
        st.plan(st.load_study(path))
