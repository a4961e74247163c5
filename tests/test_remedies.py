"""Remedies against closed forms, slow reference loops and invariants; training-procedure hooks
against a tiny fake trainer."""
import math
import pickle
from types import SimpleNamespace

import pytest

import torch
from torch import nn

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, ObjectiveConfig, RunConfig
from textvae.data.batch import collate
from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from textvae.errors import TextVAEError
from textvae.models.textvae import TextVAE
from textvae.remedies import REMEDIES, Remedy, create_remedy, list_remedies, register_remedy
from textvae.remedies.delta_vae import sigma_upper
from textvae.remedies.kl_constraint import KLConstraint
from textvae.sweeps import rate_sweep

V, D = 30, 4
CONTEXT = dict(latent_dim=D, vocab_size=V, hidden_dim=12, emb_dim=12)


def tiny(remedies=(), schedule=None, init="torch") -> TextVAE:
    cfg = ModelConfig(emb_dim=12, latent_dim=D, encoder=EncoderConfig(hidden_dim=12),
                      decoder=DecoderConfig(hidden_dim=12, input_dropout=0.0, output_dropout=0.0), init=init)
    objective = ObjectiveConfig(kl_schedule=schedule or {"name": "constant", "value": 1.0}, remedies=list(remedies))
    return TextVAE(cfg, V, objective)


def random_batch(n: int = 6, seed: int = 0, max_words: int = 8):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        length = int(torch.randint(1, max_words + 1, (1,), generator=g))
        seqs.append([BOS_ID] + torch.randint(4, V, (length,), generator=g).tolist() + [EOS_ID])
    return collate(seqs, index=list(range(n)))


class FakeTrainer:
    """The Trainer protocol over a model and a fixed pool of batches."""

    def __init__(self, model, batches, lr=0.1, encoder_params=None):
        self.model, self.batches, self.step, self.reinits = model, batches, 0, 0
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self._encoder_params = encoder_params

    def random_batch(self):
        return self.batches[int(torch.randint(len(self.batches), ()))]

    def clip_gradients(self):
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)

    def forward(self, batch):
        return self.model(batch, step=self.step)

    def optimizer_step(self):
        self.optimizer.step()

    def encoder_parameters(self):
        return self._encoder_params if self._encoder_params is not None else self.model.inference_parameters()

    def drop_gradients(self, params):
        for p in params:
            p.grad = None

    def reinit_decoder(self):
        self.model.reinit_decoder(self.optimizer)
        self.reinits += 1


# ---- every registered remedy, in both models ----------------------------------------------------
def sentence_vae(remedies):
    return tiny(remedies), [random_batch(seed=s) for s in range(4)]


def cvae(remedies):
    from tests.test_dialogue import random_batch as dialogue_batch, tiny as tiny_cvae

    return tiny_cvae(remedies, use_acts=True), [dialogue_batch(seed=s, acts=True) for s in range(4)]


MODELS = {"sentence_vae": sentence_vae, "cvae": cvae}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", list_remedies())
def test_every_remedy_trains_and_round_trips(name, kind, tmp_path):
    model, (batch, *others) = MODELS[kind]([{"name": name}])
    model.train()
    trainer = FakeTrainer(model, others)
    trainer.step = 3
    remedy = model.objective.remedies[0]
    remedy.before_update(trainer, batch)
    out = model(batch, step=trainer.step)
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    trainer.optimizer.zero_grad()
    out.loss.backward()
    trainer.clip_gradients()
    remedy.before_step(trainer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # (the CVAE's decoder embedding is also the utterance encoder's: an inference parameter)
    inference = {id(p) for p in model.inference_parameters()}
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad and id(p) not in inference)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in remedy.parameters())
    trainer.optimizer.step()
    assert isinstance(remedy.after_epoch(trainer, 1, {"mi_batch": 0.5}), dict)
    model.save_pretrained(tmp_path)  # remedy buffers and parameters persist without pickle
    # and with it (torch.save(model)), its KL schedule read: a closure, built again where the copy reads it
    assert "schedule" in vars(model.objective)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.objective.beta(trainer.step) == model.objective.beta(trainer.step)
    loaded = type(model).from_pretrained(tmp_path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_the_cvae_refuses_to_redraw_its_decoder():
    """Encoder pretraining trains in the CVAE, but its decoder re-draw at the end of pretraining is
    refused: the CVAE's decoder shares its embedding with the utterance encoder."""
    model, batches = cvae([{"name": "encoder_pretraining", "pretrain_epochs": 1}])
    with pytest.raises(TextVAEError, match="not supported for the dialogue CVAE"):
        model.objective.remedies[0].after_epoch(FakeTrainer(model, batches), 1, {})


@pytest.mark.parametrize("name", list_remedies())
def test_a_remedy_carries_its_registered_name_however_it_is_built(name):
    """Logged terms and errors name a remedy as a recipe does, built through create_remedy or not."""
    assert REMEDIES.get(name).name == name


def test_unknown_remedy_and_parameter_are_user_errors():
    with pytest.raises(TextVAEError, match="valid"):
        create_remedy({"name": "free_bits"}, **CONTEXT)
    with pytest.raises(TextVAEError, match="lambda_"):
        create_remedy({"name": "free_bits_kingma2016", "lamda": 1.0}, **CONTEXT)
    with pytest.raises(TextVAEError, match="replace the KL"):
        tiny([{"name": "free_bits_li2019"}, {"name": "kl_constraint"}])
    with pytest.raises(TextVAEError, match=r"remedies \['bow'\] are listed more than once"):
        tiny([{"name": "bow", "weight": 1.0}, {"name": "word_dropout"}, {"name": "bow", "weight": 2.0}])


@pytest.mark.parametrize("prior", ["flow", "mog"])
def test_delta_vae_needs_the_fixed_standard_normal_prior(prior):
    """Razavi et al.'s committed rate is a bound against N(0, I): a learned prior can move to the
    constrained posterior, so a run with both is refused before it starts; BN-VAE, a transform alike,
    is not. A model saved with both (before the rule) still builds, so it can be loaded."""
    from textvae.training.train import check_config

    cfg = RunConfig()
    cfg.model.prior = prior
    cfg.objective.remedies = [{"name": "delta_vae"}]
    message = rf"remedy 'delta_vae' bounds the KL against the fixed N\(0, I\) prior, which prior '{prior}' is not"
    with pytest.raises(TextVAEError, match=message):
        check_config(cfg)
    cfg.objective.remedies = [{"name": "bn_vae"}]
    check_config(cfg)
    model = ModelConfig(emb_dim=12, latent_dim=D, encoder=EncoderConfig(hidden_dim=12), prior=prior,
                        decoder=DecoderConfig(hidden_dim=12))
    TextVAE(model, V, ObjectiveConfig(remedies=[{"name": "delta_vae"}]))


@pytest.mark.parametrize("remedies,model,message", [
    ([{"name": "bow"}, {"name": "bow"}], {}, r"remedies \['bow'\] are listed more than once"),
    ([{"name": "free_bits_li2019"}, {"name": "kl_constraint"}], {},
     r"remedies \['free_bits_li2019', 'kl_constraint'\] each replace the KL term"),
    ([{"name": "word_dropout"}, {"name": "bn_vae"}], {"latent_dim": 0}, "remedy 'bn_vae' acts on the latent z"),
    ([{"name": "bn_vae"}], {"posterior": "iaf"}, r"remedies \['bn_vae'\] transform a Gaussian posterior"),
    ([{"name": "delta_vae"}], {"prior": "flow"}, "remedy 'delta_vae' bounds the KL against the fixed"),
])
def test_a_run_checks_how_its_remedies_combine_before_it_loads_data(remedies, model, message):
    """check_remedies is the one place of the combination rules; a run applies them in check_config,
    before its data (the corpus here does not exist)."""
    from textvae.training.train import check_config

    cfg = RunConfig()
    cfg.data.name = "/no/such/corpus"
    cfg.objective.remedies = remedies
    for key, value in model.items():
        setattr(cfg.model, key, value)
    with pytest.raises(TextVAEError, match=message):
        check_config(cfg)
    cfg.objective.remedies = []  # the same run without them passes
    check_config(cfg)


def test_free_bits_bn_vae_cyclical_compose_from_objective_config():
    schedule = {"name": "cyclical", "total_steps": 40, "n_cycles": 2, "ratio": 0.5}
    model = tiny([{"name": "free_bits_li2019", "target_kl": 2.0}, {"name": "bn_vae", "gamma": 0.6}],
                 schedule).train()
    batch = random_batch(8)
    step = 25  # cycle 2, 5 steps into a 10-step rise: beta = 0.5
    torch.manual_seed(1)
    out = model(batch, step=step)
    torch.manual_seed(1)
    q = model.encode(batch)
    torch.testing.assert_close(q.mu.mean(0), torch.zeros(D), rtol=0, atol=1e-5)  # shift starts at 0
    raw, _ = model.posterior(model.encoder(batch.tokens, batch.lengths))
    v = raw.var(0, unbiased=False)  # batch norm divides by sqrt(v + eps), eps = 1e-10 by default
    torch.testing.assert_close(q.mu.var(0, unbiased=False), 0.36 * v / (v + 1e-10), rtol=1e-4, atol=0)
    expected = (out.rec + 0.5 * out.kl.clamp(min=2.0 / D).sum(-1)).mean()
    torch.testing.assert_close(out.loss, expected)
    assert float(out.terms["beta"]) == 0.5


# ---- word dropout and data noising ------------------------------------------------------------
def test_word_dropout_replaces_only_words():
    batch = random_batch(50, max_words=12)
    inputs = batch.inputs
    words = (inputs != PAD_ID) & (inputs != BOS_ID) & (inputs != EOS_ID)
    all_dropped = create_remedy({"name": "word_dropout", "p": 1.0}, **CONTEXT).corrupt_inputs(inputs)
    assert torch.equal(all_dropped[words], torch.full_like(inputs[words], UNK_ID))
    assert torch.equal(all_dropped[~words], inputs[~words])
    assert torch.equal(create_remedy({"name": "word_dropout", "p": 0.0}, **CONTEXT).corrupt_inputs(inputs), inputs)
    half = create_remedy({"name": "word_dropout", "p": 0.3}, **CONTEXT)
    torch.manual_seed(5)
    a = half.corrupt_inputs(inputs)
    torch.manual_seed(5)
    assert torch.equal(a, half.corrupt_inputs(inputs)), "global RNG: same seed, same corruption"
    rate = float((a[words] == UNK_ID).float().mean())
    assert abs(rate - 0.3) < 0.06, rate  # ~350 words: 4 standard deviations
    with pytest.raises(TextVAEError):
        create_remedy({"name": "word_dropout", "p": 1.5}, **CONTEXT)


def test_word_blank_uses_its_placeholder():
    inputs = random_batch(10).inputs
    words = (inputs != PAD_ID) & (inputs != BOS_ID) & (inputs != EOS_ID)
    out = create_remedy({"name": "word_blank", "p": 1.0, "blank_id": 7}, **CONTEXT).corrupt_inputs(inputs)
    assert bool((out[words] == 7).all()) and torch.equal(out[~words], inputs[~words])
    with pytest.raises(TextVAEError, match="blank_id"):
        create_remedy({"name": "word_blank", "blank_id": V}, **CONTEXT)


def test_unigram_noise_draws_from_the_given_distribution():
    inputs = random_batch(60, max_words=12).inputs
    words = (inputs != PAD_ID) & (inputs != BOS_ID) & (inputs != EOS_ID)
    unigram = [0.0] * V
    unigram[9], unigram[11] = 1.0, 3.0
    unigram[BOS_ID] = 100.0  # never a replacement, whatever its count
    noise = create_remedy({"name": "unigram_noise", "p": 1.0, "unigram": unigram}, **CONTEXT)
    out = noise.corrupt_inputs(inputs)
    drawn = out[words]
    assert set(drawn.tolist()) == {9, 11} and torch.equal(out[~words], inputs[~words])
    share = float((drawn == 11).float().mean())
    assert abs(share - 0.75) < 0.06, share
    with pytest.raises(TextVAEError, match="unigram"):
        create_remedy({"name": "unigram_noise", "unigram": [1.0] * (V - 1)}, **CONTEXT)


def test_unigram_noise_counts_lazily_until_given_corpus_statistics():
    noise = create_remedy({"name": "unigram_noise", "p": 0.0}, **CONTEXT)
    batch = random_batch(5)
    noise.corrupt_inputs(batch.inputs)
    words = batch.inputs[(batch.inputs > EOS_ID)]
    torch.testing.assert_close(noise.counts, torch.bincount(words, minlength=V).double())
    corpus = torch.zeros(V)
    corpus[13] = 4.0
    noise.set_corpus_statistics(corpus)
    noise.corrupt_inputs(batch.inputs)  # no longer counting
    assert float(noise.counts.sum()) == 4.0 and not bool(noise.running)
    noise.p = 1.0
    out = noise.corrupt_inputs(batch.inputs)
    assert set(out[batch.inputs > EOS_ID].tolist()) == {13}


# ---- free bits, KL constraint ------------------------------------------------------------------
KL = torch.tensor([[0.05, 0.60, 0.02, 0.30],
                   [0.50, 0.01, 0.03, 0.10],
                   [0.40, 0.20, 0.01, 0.40],
                   [0.30, 0.35, 0.04, 0.05]])


def kl_term_and_grad(spec, beta=0.5, step=0):
    kl = KL.clone().requires_grad_(True)
    term = create_remedy(spec, **CONTEXT).kl_term(kl, beta, step)
    assert term.shape == (4,)
    term.mean().backward()
    return term.mean().detach(), kl.grad


def test_free_bits_kingma_clamps_batch_mean_per_group():
    # groups {0,1}: batch mean of sums 0.6025 > 0.3 (free); {2,3}: 0.2375 <= 0.3 (clamped)
    value, grad = kl_term_and_grad({"name": "free_bits_kingma2016", "lambda_": 0.3, "group_size": 2})
    assert float(value) == pytest.approx(0.5 * (0.6025 + 0.3))
    expected = torch.zeros(4, 4)
    expected[:, :2] = 0.5 / 4
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_free_bits_li_clamps_every_example_and_dimension():
    value, grad = kl_term_and_grad({"name": "free_bits_li2019", "target_kl": 1.0})  # 0.25 per dimension
    assert float(value) == pytest.approx(0.5 * KL.clamp(min=0.25).sum(-1).mean().item())
    torch.testing.assert_close(grad, (KL > 0.25).float() * 0.5 / 4, rtol=0, atol=0)
    assert int((grad != 0).sum()) == 7


def test_target_kl_clamps_the_batch_total():
    # batch-mean total KL = 0.84
    value, grad = kl_term_and_grad({"name": "target_kl", "target": 0.5})
    assert float(value) == pytest.approx(0.5 * 0.84)
    torch.testing.assert_close(grad, torch.full((4, 4), 0.5 / 4), rtol=0, atol=0)
    value, grad = kl_term_and_grad({"name": "target_kl", "target": 1.0})
    assert float(value) == pytest.approx(0.5 * 1.0)
    assert bool((grad == 0).all())


def authors_masked_kl(kl, beta, fb, target_kl):
    """Li et al.'s text_anneal_fb.py, --fb 1/2/3, written from its formulas: [B] per-sentence terms."""
    if fb == 1:
        total = kl.sum(-1)
        return (total.detach() > target_kl).float() * beta * total
    if fb == 2:
        return beta * ((kl.detach() > target_kl / kl.shape[-1]).float() * kl).sum(-1)
    total = kl.sum(-1)
    return (total.detach().mean() > target_kl).float() * beta * total


@pytest.mark.parametrize("fb, spec", [(1, {"name": "free_bits_li2019_total", "target_kl": 0.8}),
                                      (2, {"name": "free_bits_li2019", "target_kl": 1.0}),
                                      (3, {"name": "target_kl", "target": 0.8})])
def test_free_bits_variants_have_the_authors_gradient(fb, spec):
    # totals per sentence 0.97, 0.64, 1.01, 0.74 (batch mean 0.84): thresholds split the batch
    value, grad = kl_term_and_grad(spec)
    kl = KL.clone().requires_grad_(True)
    reference = authors_masked_kl(kl, 0.5, fb, 0.8 if fb != 2 else 1.0)
    reference.mean().backward()
    torch.testing.assert_close(grad, kl.grad, rtol=0, atol=1e-7)
    assert bool((grad != 0).any()) and (fb == 3 or bool((grad == 0).any()))
    # the values differ only by the threshold counted where the authors' mask is 0
    assert float(value) >= float(reference.detach().mean()) - 1e-7


def test_free_bits_li_total_clamps_each_sentence_total():
    value, grad = kl_term_and_grad({"name": "free_bits_li2019_total", "target_kl": 0.8})
    totals = KL.sum(-1)
    assert float(value) == pytest.approx(0.5 * totals.clamp(min=0.8).mean().item())
    torch.testing.assert_close(grad, (totals > 0.8).float()[:, None].expand(4, 4) * 0.5 / 4, rtol=0, atol=0)


def test_kl_constraint_ramps_capacity_and_flips_gradient_sign_at_c():
    spec = {"name": "kl_constraint", "capacity": 2.0, "ramp_steps": 100}
    assert [KLConstraint(2.0, 100).target(t) for t in (0, 50, 100, 500)] == [0.0, 1.0, 2.0, 2.0]
    kl = torch.tensor([[0.5, 0.5], [1.0, 1.0]])  # totals 1 and 2, mean 1.5
    below = kl_term_and_grad_on(kl, spec, step=200)  # C = 2 > 1.5: more KL is rewarded
    above = kl_term_and_grad_on(kl, spec, step=50)  # C = 1 < 1.5: more KL is penalised
    assert below[0] == pytest.approx(0.5) and above[0] == pytest.approx(0.5)
    torch.testing.assert_close(below[1], torch.full((2, 2), -0.5))
    torch.testing.assert_close(above[1], torch.full((2, 2), 0.5))
    value, grad = kl_term_and_grad_on(kl, {**spec, "per_sentence": True}, step=75)  # C = 1.5
    assert value == pytest.approx(0.5)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5], [0.5, 0.5]]))


def kl_term_and_grad_on(kl, spec, step):
    kl = kl.clone().requires_grad_(True)
    term = create_remedy(spec, **CONTEXT).kl_term(kl, 1.0, step)
    term.mean().backward()
    return float(term.detach().mean()), kl.grad


def test_rate_sweep_trains_one_run_per_capacity():
    base = RunConfig(name="ptb")
    base.objective.remedies = [{"name": "bow"}, {"name": "kl_constraint", "ramp_steps": 7}]
    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        c = cfg.objective.remedies[-1]["capacity"]
        report = {"kl": c, "rec": 100 - c, "neg_elbo": 100.5, "au": 2.0, "mi_batch": 1.0, "latent_dim": 8}
        if c > 3:
            report.update(iw_nll=99.0, mi_dataset=1.5)
        return report

    points = rate_sweep(base, [2, 5.5], fake_train)
    assert [cfg.name for cfg in seen] == ["ptb-C2", "ptb-C5.5"]
    assert seen[1].objective.remedies == [{"name": "bow"}, {"name": "kl_constraint", "ramp_steps": 7, "capacity": 5.5}]
    assert base.objective.remedies[1] == {"name": "kl_constraint", "ramp_steps": 7}, "base config untouched"
    # a figure not evaluated is NaN, never another estimator under its name (-ELBO is not the NLL,
    # the per-batch MI not the whole-set one)
    assert [(p.capacity, p.kl, p.rec, p.nll, p.neg_elbo, p.au, p.mi) for p in points[1:]] == [
        (5.5, 5.5, 94.5, 99.0, 100.5, 2.0, 1.5)]
    assert (points[0].kl, points[0].neg_elbo) == (2.0, 100.5) and math.isnan(points[0].nll) and math.isnan(points[0].mi)


# ---- posterior transforms ----------------------------------------------------------------------
def gaussian_kl(mu, logvar):
    return 0.5 * (mu**2 + logvar.exp() - 1 - logvar)


def test_bn_vae_batch_kl_respects_its_lower_bound():
    bn = create_remedy({"name": "bn_vae", "gamma": 0.6}, latent_dim=6).train()
    assert "gamma" not in dict(bn.named_parameters())
    with torch.no_grad():
        bn.shift.copy_(torch.randn(6))
    bound = bn.kl_lower_bound()
    assert bound == pytest.approx(0.5 * (6 * 0.36 + float((bn.shift.detach() ** 2).sum())))
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        mu = 3 * torch.randn(16, 6, generator=g) + torch.randn(6, generator=g)
        logvar = torch.randn(16, 6, generator=g)
        mu2, logvar2 = bn.transform_posterior(mu, logvar)
        assert torch.equal(logvar2, logvar)
        assert gaussian_kl(mu2, logvar2).sum(-1).mean() >= bound - 1e-5
        # tight when every sigma = 1: the bound is the whole KL
        mu3, zero = bn.transform_posterior(mu, torch.zeros_like(logvar))
        assert float(gaussian_kl(mu3, zero).sum(-1).mean().detach()) == pytest.approx(bound, rel=1e-4)


def test_bn_vae_uses_running_statistics_in_eval():
    bn = create_remedy({"name": "bn_vae", "gamma": 0.5, "momentum": 1.0}, latent_dim=3).train()
    mu = torch.randn(10, 3) * 2 + 1
    bn.transform_posterior(mu, torch.zeros(10, 3))
    bn.eval()
    x = torch.randn(4, 3)
    out, _ = bn.transform_posterior(x, torch.zeros(4, 3))
    expected = 0.5 * (x - mu.mean(0)) / torch.sqrt(mu.var(0, unbiased=True) + 1e-5) + bn.shift
    torch.testing.assert_close(out, expected)


def test_delta_vae_commits_at_least_delta_per_dimension():
    delta = 0.2
    sigma_u = sigma_upper(delta)
    assert sigma_u < 1 and 0.5 * (sigma_u**2 - math.log(sigma_u**2) - 1) == pytest.approx(delta, abs=1e-12)
    remedy = create_remedy({"name": "delta_vae", "delta": delta, "sigma_lower": 0.05}, **CONTEXT)
    mu = torch.cat([torch.zeros(1, 7), torch.randn(50, 7) * 3])
    raw = torch.cat([torch.tensor([[-1e4, -30, -1, 0, 1, 30, 1e4]]), torch.randn(50, 7) * 10])
    mu2, logvar = remedy.transform_posterior(mu, raw)
    kl = gaussian_kl(mu2, logvar)
    assert bool((kl >= delta - 1e-6).all())
    assert float(kl[0, -1]) == pytest.approx(delta, abs=1e-5)  # mu = 0, sigma = sigma_u: the bound is tight
    sigma = torch.exp(0.5 * logvar)
    assert bool((sigma >= 0.05 - 1e-6).all() and (sigma <= sigma_u + 1e-6).all())
    with pytest.raises(TextVAEError, match="sigma_lower"):
        create_remedy({"name": "delta_vae", "delta": 5.0, "sigma_lower": 0.05}, **CONTEXT)


# ---- extra losses ------------------------------------------------------------------------------
def test_bow_loss_equals_per_token_loop():
    bow = create_remedy({"name": "bow", "mlp_dim": 9, "weight": 0.7}, **CONTEXT)
    batch = random_batch(5)
    z = torch.randn(5, D)
    fast = bow.extra_loss(None, batch, z, None, 0)
    slow = torch.zeros(5)
    for b in range(5):
        log_p = torch.log_softmax(bow.mlp(z[b]), -1)
        for t in range(int(batch.n_tokens[b])):  # w1 .. wn </s>
            slow[b] -= 0.7 * log_p[batch.targets[b, t]]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_zforcing_backward_states_match_one_sentence_at_a_time():
    zf = create_remedy({"name": "zforcing"}, **CONTEXT)
    batch = random_batch(5)
    b = zf.backward_states(batch.targets, batch.n_tokens)
    for i in range(5):
        n = int(batch.n_tokens[i])
        tokens = batch.targets[i, :n].flip(0).unsqueeze(0)  # y_n .. y_1, no padding
        alone, _ = zf.rnn(zf.embedding(tokens))
        torch.testing.assert_close(b[i, :n], alone[0].flip(0), rtol=1e-5, atol=1e-6)
        assert bool((b[i, n:] == 0).all())


def test_zforcing_per_sentence_and_aux_cost_stops_at_backward_states():
    zf = create_remedy({"name": "zforcing", "backward_lm": False}, **CONTEXT)
    batch = random_batch(5)
    z = torch.randn(5, D, requires_grad=True)
    loss = zf.extra_loss(None, batch, z, None, 0)
    sub = torch.tensor([3, 1])
    torch.testing.assert_close(zf.extra_loss(None, batch.select(sub), z[sub], None, 0), loss[sub], rtol=1e-5, atol=1e-5)
    loss.sum().backward()
    assert z.grad.abs().sum() > 0 and zf.predictor[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in zf.rnn.parameters()), "the target b_t is detached"
    with_lm = create_remedy({"name": "zforcing"}, **CONTEXT)
    with_lm.extra_loss(None, batch, z.detach(), None, 0).sum().backward()
    assert all(p.grad is not None for p in with_lm.rnn.parameters()), "the backward LM trains the LSTM"


def test_zforcing_aux_cost_is_the_gaussian_nll_of_the_backward_states():
    """-Σ_t log N(b_t; tanh(m), exp(l)) with [m, l] = clamp(MLP(z), -8, 8), as the authors' code; the
    log-variances are pushed past the clamp here, so it is exercised."""
    zf = create_remedy({"name": "zforcing", "backward_lm": False}, **CONTEXT)
    with torch.no_grad():
        zf.predictor[2].bias[12:] = 20.0
    batch, z = random_batch(4), torch.randn(4, D)
    with torch.no_grad():
        b = zf.backward_states(batch.targets, batch.n_tokens)  # [B, T, H]
        m, l = zf.predictor(z).clamp(-8.0, 8.0).chunk(2, -1)
        assert (l == 8.0).all()
        gauss = torch.distributions.Normal(torch.tanh(m).unsqueeze(1), (0.5 * l).exp().unsqueeze(1))
        expected = -(gauss.log_prob(b).sum(-1) * (batch.targets != PAD_ID)).sum(-1)
        torch.testing.assert_close(zf.extra_loss(None, batch, z, None, 0), expected)


def test_aux_autoencoder_terms_and_mixing():
    """Shen et al. 2018: the decoder reads the AE code e(x) with probability 1 - r(t), else z; the
    latent matches the code through 1/2 ||z - sg(e)||²."""
    model = tiny([{"name": "aux_autoencoder", "weight": 2.0, "mix_steps": 100}]).train()
    aux = model.objective.remedies[0]
    batch = random_batch()
    h = torch.randn(6, 12)
    z = torch.randn(6, D, requires_grad=True)
    e = torch.tanh(aux.code(h))
    torch.testing.assert_close(aux.extra_loss(model, batch, z, h, 0), 2.0 * 0.5 * ((z - e) ** 2).sum(-1))
    aux.extra_loss(model, batch, z, h, 0).sum().backward()
    assert aux.code.weight.grad is None, "the AE code is a fixed target of the VAE term"
    torch.testing.assert_close(z.grad, 2.0 * (z - e).detach())

    torch.testing.assert_close(aux.decoder_latent(z, h, 0), e)  # r(0) = 0: the code, every row
    assert aux.decoder_latent(z, h, 100) is not z and torch.equal(aux.decoder_latent(z, h, 100), z)  # r = 1: z
    torch.manual_seed(1)
    many_z, many_h = torch.randn(4000, D), torch.randn(4000, 12)
    reads_z = (aux.decoder_latent(many_z, many_h, 25) == many_z).all(-1).float().mean()
    assert abs(float(reads_z) - 0.25) < 0.03  # r(25) = 0.25 of the rows read z
    with pytest.raises(TextVAEError, match="encoder_dim"):
        aux.extra_loss(model, batch, z, torch.randn(6, 20), 0)


def test_aux_autoencoder_reconstruction_moves_from_the_code_to_z():
    """In training the model's reconstruction decodes e(x) at r = 0 (its gradient trains the code,
    not the posterior head) and z at r = 1 (it trains the posterior head and the encoder, the code
    no longer); in evaluation it always decodes z."""
    model = tiny([{"name": "aux_autoencoder", "mix_steps": 100}]).train()
    batch = random_batch()
    code = model.objective.remedies[0].code
    for step, code_learns in ((0, True), (100, False)):
        model.zero_grad(set_to_none=True)
        model(batch, step=step).rec.sum().backward()
        head = [p.grad is not None and bool(p.grad.any()) for p in model.posterior.parameters()]
        assert all(head) != code_learns and (code.weight.grad is not None and bool(code.weight.grad.any())) == code_learns
        assert model.encoder.rnn.weight_hh_l0.grad.abs().sum() > 0  # through e(x) or through z
    torch.manual_seed(0)
    with torch.no_grad():
        evaluated = model.eval()(batch, step=0).rec
        torch.manual_seed(0)
        h, q = model.encode_hidden(batch)
        torch.testing.assert_close(evaluated, model.token_nll(batch, q.rsample(1)[0]))


# ---- training-procedure hooks ------------------------------------------------------------------
class ScriptedModel(nn.Module):
    """loss = script[call] + enc² + dec²: the per-word loss of each inner step is scripted."""

    def __init__(self, script):
        super().__init__()
        self.enc, self.dec = nn.Parameter(torch.tensor(1e-3)), nn.Parameter(torch.tensor(1e-3))
        self.script, self.calls = script, 0

    def forward(self, batch, step=0):
        value = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return SimpleNamespace(loss=value + self.enc**2 + self.dec**2, n_tokens=torch.tensor([1.0]))


def aggressive_setup(script):
    model = ScriptedModel(script)
    remedy = create_remedy({"name": "aggressive"}, **CONTEXT)
    trainer = FakeTrainer(model, [torch.zeros(1)], encoder_params=[model.enc])
    return model, remedy, trainer


@pytest.mark.parametrize("script,inner", [
    ([100.0 - i for i in range(200)], 100),  # keeps improving: stopped by the cap
    ([10.0] * 15 + [9.0] * 15 + [9.5] * 15 + [1.0] * 200, 45),  # third block worse than the second
    ([10.0] * 15 + [9.0] * 15 + [9.0] * 15 + [1.0] * 200, 45),  # no decrease is a stop
    ([5.0] * 15 + [6.0] * 200, 30),
])
def test_aggressive_inner_loop_stops_when_per_word_loss_stops_decreasing(script, inner):
    model, remedy, trainer = aggressive_setup(script)
    enc, dec = model.enc.detach().clone(), model.dec.detach().clone()
    remedy.before_update(trainer, torch.zeros(1))
    assert model.calls == inner and remedy.inner_steps == inner
    assert not torch.equal(model.enc, enc) and torch.equal(model.dec, dec), "inner steps move the encoder only"
    model(torch.zeros(1)).loss.backward()
    remedy.before_step(trainer)
    assert model.enc.grad is None and model.dec.grad is not None, "the outer step moves the decoder only"


def test_aggressive_inner_steps_run_forward_as_the_loop_does():
    """Every inner forward pass is the trainer's ``forward`` (in the loop: the run's precision and its
    working copies, as the outer step's), and every inner update its ``optimizer_step``."""
    model, remedy, trainer = aggressive_setup([10.0] * 15 + [9.0] * 15 + [9.5] * 200)
    calls = {"forward": 0, "step": 0}
    forward, step = trainer.forward, trainer.optimizer_step
    trainer.forward = lambda batch: (calls.__setitem__("forward", calls["forward"] + 1), forward(batch))[1]
    trainer.optimizer_step = lambda: (calls.__setitem__("step", calls["step"] + 1), step())[1]
    remedy.before_update(trainer, torch.zeros(1))
    assert calls == {"forward": 45, "step": 45}


def test_aggressive_reports_its_mean_inner_steps_per_epoch():
    """``after_epoch`` reports the mean encoder steps per update of the epoch (the row's cost), then
    counts anew."""
    model, remedy, trainer = aggressive_setup([10.0] * 15 + [9.0] * 15 + [9.5] * 15 + [1.0] * 15 + [2.0] * 200)
    remedy.before_update(trainer, torch.zeros(1))  # 45 steps: the third block is worse than the second
    remedy.before_update(trainer, torch.zeros(1))  # 30: the block after 1.0 is worse
    first = remedy.after_epoch(trainer, 1, {"mi_batch": 1.0})
    assert first == {"aggressive": 1.0, "aggressive_inner_steps": 37.5}
    assert remedy.after_epoch(trainer, 2, {"mi_batch": 2.0})["aggressive_inner_steps"] == 0.0


def test_aggressive_switches_off_for_good_when_validation_mi_drops():
    model, remedy, trainer = aggressive_setup([1.0])
    logs = [remedy.after_epoch(trainer, e, {"mi_batch": mi}) for e, mi in enumerate([0.5, 0.7, 0.6, 0.9], 1)]
    assert [{k: v for k, v in log.items() if k == "aggressive"} for log in logs] == [
        {"aggressive": 1.0}, {"aggressive": 1.0}, {"aggressive": 0.0}, {}]
    restored = create_remedy({"name": "aggressive"}, **CONTEXT)
    restored.load_state_dict(remedy.state_dict())  # a resumed run stays in ordinary mode
    restored.before_update(trainer, torch.zeros(1))
    assert model.calls == 0
    model(torch.zeros(1)).loss.backward()
    restored.before_step(trainer)
    assert model.enc.grad is not None
    with pytest.raises(TextVAEError, match="mi_batch"):
        create_remedy({"name": "aggressive"}, **CONTEXT).after_epoch(trainer, 1, {"kl": 1.0})


def test_best_model_reload_does_not_switch_aggressive_mode_back_on(tmp_path):
    """He et al.'s flag lives in their script: reloading a best epoch saved in aggressive mode (an
    lr decay) restores weights and model buffers (BN-VAE's running statistics), not the switch."""
    from textvae.training.train import reload_weights

    model = tiny([{"name": "aggressive"}, {"name": "bn_vae"}])
    aggressive, bn = model.objective.remedies
    aggressive.after_epoch(None, 1, {"mi_batch": 0.7})
    model.save_pretrained(tmp_path)  # the best epoch, still in aggressive mode
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        bn.running_mean.add_(1.0)
    assert aggressive.after_epoch(None, 2, {"mi_batch": 0.5})["aggressive"] == 0.0
    reload_weights(model, tmp_path, torch.device("cpu"), list(model.objective.remedies))
    for n, p in model.named_parameters():
        assert torch.equal(p, saved[n]), n
    assert torch.equal(bn.running_mean, torch.zeros(D)), "model buffers come back with the weights"
    assert not aggressive.active and float(aggressive.last_mi) == 0.5, "switched off for good"
    assert aggressive.after_epoch(None, 3, {"mi_batch": 0.9}) == {}


def test_aggressive_on_a_real_model_updates_only_the_inference_network():
    model = tiny([{"name": "aggressive", "max_inner_steps": 4}, {"name": "bow"}]).train()
    trainer = FakeTrainer(model, [random_batch(seed=s) for s in range(3)])
    enc = {id(p) for p in model.inference_parameters()}
    assert enc >= {id(p) for p in model.encoder.parameters()} | {id(p) for p in model.posterior.parameters()}
    assert not enc & {id(p) for p in model.decoder.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.objective.remedies[0].before_update(trainer, random_batch())
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (id(p) in enc), n


@pytest.mark.parametrize("init", ["he2019", "torch"])
def test_reinit_decoder_redraws_decoder_and_drops_its_optimizer_state(init):
    model = tiny(init=init)
    trainer = FakeTrainer(model, [random_batch()])
    model(random_batch()).loss.backward()
    trainer.optimizer.step()  # momentum buffers for every parameter
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.reinit_decoder()
    for n, p in model.named_parameters():
        is_decoder = n.startswith(("decoder.", "projection."))
        assert (not torch.equal(p, before[n])) == is_decoder, n
        assert (p in trainer.optimizer.state) != is_decoder, n
        if is_decoder and init == "he2019":
            assert p.abs().max() <= (0.1 if "embedding" in n else 0.01), n


def test_encoder_pretraining_phases():
    spec = {"name": "encoder_pretraining", "pretrain_epochs": 2, "target_kl": 2.0, "warmup_steps": 10,
            "kl_start": 0.2}
    model = tiny([spec]).train()
    remedy = model.objective.remedies[0]
    trainer = FakeTrainer(model, [random_batch()])
    batch = random_batch()
    out = model(batch, step=5)
    torch.testing.assert_close(out.loss, out.rec.mean())  # beta 0, z still sampled
    assert remedy.after_epoch(trainer, 1, {}) == {} and trainer.reinits == 0
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer.step = 40
    assert remedy.after_epoch(trainer, 2, {}) == {"decoder_reinitialised": 1.0} and trainer.reinits == 1
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))
    assert remedy.after_epoch(trainer, 3, {}) == {} and trainer.reinits == 1
    assert [remedy.kl_weight(t) for t in (40, 45, 50, 90)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    out = model(batch, step=45)
    torch.testing.assert_close(out.loss, (out.rec + 0.6 * out.kl.clamp(min=0.5).sum(-1)).mean())
    restored = tiny([spec])
    restored.load_state_dict(model.state_dict())
    assert int(restored.objective.remedies[0].switch_step) == 40


def test_best_model_reload_keeps_encoder_pretraining_past_its_switch(tmp_path):
    """A best model saved while still pretraining, reloaded after the decoder was re-initialised,
    brings back its weights, not the pretraining phase."""
    from textvae.training.train import reload_weights

    model = tiny([{"name": "encoder_pretraining", "pretrain_epochs": 1}])
    remedy = model.objective.remedies[0]
    model.save_pretrained(tmp_path)  # switch_step -1: pretraining
    remedy.after_epoch(FakeTrainer(model, [random_batch()]), 1, {})
    assert not remedy.pretraining
    reload_weights(model, tmp_path, torch.device("cpu"), list(model.objective.remedies))
    assert not remedy.pretraining and int(remedy.switch_step) == 0


def test_bn_vae_floor_holds_for_means_of_tiny_spread():
    """The expected-KL floor gamma² v / (v + eps) must not vanish when the encoder's means barely
    vary (Var 1e-8, the regime Adam drives an encoder into): with PyTorch's eps 1e-5 it does."""
    mu = 0.3 + 1e-4 * torch.randn(64, D)  # batch variance ~1e-8 per dimension
    logvar = torch.zeros(64, D)
    for eps, floor_kept in [(1e-10, True), (1e-5, False)]:
        bn = create_remedy({"name": "bn_vae", "gamma": 0.7, "eps": eps}, **CONTEXT).train()
        mu2, _ = bn.transform_posterior(mu, logvar)
        kl = 0.5 * (mu2**2).sum(-1).mean()  # sigma = 1: only the mean term of the KL remains
        assert (float(kl.detach()) >= 0.9 * bn.kl_lower_bound()) == floor_kept  # 0.97 vs 0.001 of it


@pytest.mark.parametrize("remedy", [{"name": "free_bits_li2019"}, {"name": "encoder_pretraining"},
                                    {"name": "free_bits_kingma2016", "group_size": 2}])
def test_per_dimension_free_bits_refuse_a_one_column_kl(remedy):
    """With an IAF posterior the KL is one sampled column [B, 1]: a per-dimension floor on it would floor
    the whole KL at one dimension's share, so the first step says so; the totals' variants take it."""
    def model(spec):
        cfg = ModelConfig(emb_dim=12, latent_dim=D, encoder=EncoderConfig(hidden_dim=12), posterior="iaf",
                          decoder=DecoderConfig(hidden_dim=12, input_dropout=0.0, output_dropout=0.0))
        return TextVAE(cfg, V, ObjectiveConfig(remedies=[spec])).train()

    with pytest.raises(TextVAEError, match="floors the KL of each latent dimension"):
        model(remedy)(random_batch())
    assert torch.isfinite(model({"name": "free_bits_li2019_total"})(random_batch()).loss)


@pytest.mark.parametrize("posterior,remedy", [("vmf", "delta_vae"), ("iaf", "bn_vae")])
def test_posterior_transforms_need_a_gaussian_posterior(posterior, remedy):
    cfg = ModelConfig(emb_dim=12, latent_dim=D, encoder=EncoderConfig(hidden_dim=12), posterior=posterior,
                      prior="vmf_uniform" if posterior == "vmf" else "standard_normal",
                      decoder=DecoderConfig(hidden_dim=12))
    with pytest.raises(TextVAEError, match=rf"remedies \['{remedy}'\] transform a Gaussian posterior"):
        TextVAE(cfg, V, ObjectiveConfig(remedies=[{"name": remedy}]))


def test_a_posterior_of_one_s_own_that_declares_gaussian_parameters_takes_posterior_transforms(monkeypatch):
    """The rule reads the registered head's declaration, not the name "gaussian"."""
    from textvae.models.posteriors import POSTERIORS, GaussianHead
    from textvae.remedies.base import check_remedies

    monkeypatch.setattr(POSTERIORS, "_entries", dict(POSTERIORS._entries))
    POSTERIORS.register("my_gaussian")(type("MyGaussian", (GaussianHead,), {}))
    POSTERIORS.register("my_other")(type("MyOther", (GaussianHead,), {"gaussian_parameters": False}))
    check_remedies([{"name": "bn_vae"}], latent_dim=D, posterior="my_gaussian")
    with pytest.raises(TextVAEError, match=r"remedies \['bn_vae'\] transform a Gaussian posterior"):
        check_remedies([{"name": "bn_vae"}], latent_dim=D, posterior="my_other")


@pytest.mark.parametrize("remedy", ["bn_vae", "spreads"])
@pytest.mark.parametrize("model, warned", [({}, True), ({"encoder_init": "torch"}, False),
                                           ({"init": "torch"}, False), ({"encoder_from": "runs/ae/model"}, False)])
def test_bn_vae_under_he_et_al_s_encoder_init_is_warned_of(caplog, monkeypatch, model, warned, remedy):
    """Its floor needs means that vary over the batch, which U(-0.01, 0.01) does not give; an encoder
    loaded from another run's is no such init. So is any remedy that declares ``needs_spread_means`` (a
    remedy of one's own here), by that and not by its name."""
    import logging

    from textvae.config import RunConfig, from_dict
    from textvae.tasks import create_task

    monkeypatch.setattr(REMEDIES, "_entries", dict(REMEDIES._entries))
    register_remedy("spreads")(type("Spreads", (Remedy,), {"needs_spread_means": True,
                                                             "transform_posterior": lambda self, mu, lv: (mu, lv)}))
    cfg = from_dict(RunConfig, {"model": {"latent_dim": 4, **model}, "objective": {"remedies": [{"name": remedy}]}})
    import textvae.tasks.sentences as sentences

    task = create_task(cfg)
    monkeypatch.setattr(sentences, "file_md5", lambda path: "0" * 32)  # no saved encoder here to read
    loaded = SimpleNamespace(load_inference_network=lambda *args: None)
    with caplog.at_level(logging.WARNING, logger="textvae"):
        task.check()  # which evaluate and a resume call too: no warning there
        assert not caplog.text
        task.warm_start(loaded, SimpleNamespace(tokenizer=None))  # a new run's start
    assert (f"remedy {remedy} under He et al.'s U(-0.01, 0.01) encoder init" in caplog.text) == warned
