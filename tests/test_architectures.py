"""Architecture remedies: flows (MADE, IAF, flow prior), vMF, mixture prior, CNN / Transformer /
Skip decoders and encoders. Checked against closed forms, autograd Jacobians, grid integrals and
the causality / padding invariants every part must keep."""
import dataclasses
import math
import re

import pytest
import torch
from torch.autograd.functional import jacobian

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.data.batch import collate
from textvae.data.special import EOS_ID
from textvae.errors import TextVAEError
from textvae.models.cnn import DilatedCNNDecoder
from textvae.models.decoders import DECODERS
from textvae.models.distributions import PRIORS, DiagGaussian, StandardNormal
from textvae.models.encoders import ENCODERS
from textvae.models.flows import IAF, MADE, IAFHead
from textvae.models.posteriors import POSTERIORS
from textvae.models.priors import AutoregressiveFlowPrior, MixturePrior
from textvae.models.textvae import TextVAE, check_model_config
from textvae.models.vmf import SphereUniform, VMFHead, log_bessel_iv, vmf_constants

V = 30

# Extra decoder configurations beyond each type's defaults.
DECODER_VARIANTS = [(name, {}) for name in DECODERS.names()] + [
    ("transformer", {"z_inject": "memory", "positions": "sinusoidal"}),
    ("transformer", {"z_inject": "embedding"}),
    ("cnn", {"dilations": [1, 3], "kernel_size": 2}),
    ("cnn", {"z_into": "first_block"}),
]


def build(decoder="lstm", encoder="lstm", posterior="gaussian", prior="standard_normal", latent=4,
          dec_options=None, layers=2) -> TextVAE:
    cfg = ModelConfig(emb_dim=12, latent_dim=latent,
                      encoder=EncoderConfig(type=encoder, hidden_dim=8, num_layers=layers),
                      decoder=DecoderConfig(type=decoder, hidden_dim=12, num_layers=layers, input_dropout=0.0,
                                            output_dropout=0.0, options=dict(dec_options or {})),
                      posterior=posterior, prior=prior, init="torch")
    return TextVAE(cfg, V).eval()


def random_batch(n: int = 5, seed: int = 0, max_words: int = 8):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        length = int(torch.randint(1, max_words + 1, (1,), generator=g))
        seqs.append([1] + torch.randint(4, V, (length,), generator=g).tolist() + [EOS_ID])
    return collate(seqs, index=list(range(n)))


def grid_2d(half_width: float, points: int):
    """A square grid [points², 2] and the area of one cell."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).view(-1, 2)
    return zz, float(axis[1] - axis[0]) ** 2


def randomize(module: torch.nn.Module, scale: float) -> None:
    """Non-trivial weights, so that flows are far from the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, scale)


# ---------------------------------------------------------------- MADE and IAF
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("hidden_layers", [1, 2])
def test_made_jacobian_is_strictly_triangular_in_its_order(reverse, hidden_layers):
    d = 5
    made = MADE(d, 3 * d, num_outputs=2, num_hidden_layers=hidden_layers, context_dim=3, reverse=reverse)
    context = torch.randn(3)
    jac = jacobian(lambda z: torch.cat(made(z, context)), torch.randn(d))  # [2D, D]
    degree = torch.arange(1, d + 1).flip(0) if reverse else torch.arange(1, d + 1)
    allowed = degree[:, None] > degree[None, :]  # output d may see input i iff i comes before d
    for block in jac.split(d):
        assert torch.all(block[~allowed] == 0), "an output sees itself or a later variable"
        assert torch.all(block[allowed] != 0), "mask is more restrictive than autoregressive"


@pytest.mark.parametrize("dim,steps", [(1, 1), (3, 2), (4, 3)])
def test_iaf_log_det_matches_autograd(dim, steps):
    flow = IAF(dim, context_dim=3, num_steps=steps, hidden_dim=2 * dim + 1, gate_bias=0.0).double()
    randomize(flow, 0.7)
    context = torch.randn(1, 3, dtype=torch.float64)
    z0 = torch.randn(1, dim, dtype=torch.float64)
    jac = jacobian(lambda z: flow(z[None], context)[0][0], z0[0])
    _, log_det = flow(z0, context)
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)


def test_iaf_inverse_round_trip_and_log_prob_of_samples():
    head = IAFHead(in_dim=6, latent_dim=4, num_steps=3, hidden_dim=9).double()
    randomize(head, 0.5)
    h = torch.randn(5, 6, dtype=torch.float64)
    q = head.distribution(*head(h), h)
    z = q.rsample(7)  # [7, 5, 4]
    z0, log_det = head.flow.inverse(z, h)
    torch.testing.assert_close(head.flow(z0, h)[0], z, rtol=0, atol=1e-10)
    # cached log q of the samples == log q by inverting the flow (a copy is not recognised)
    torch.testing.assert_close(q.log_prob(z.clone()), q.log_prob(z), rtol=0, atol=1e-10)
    one = q.rsample(1)
    torch.testing.assert_close(q.log_prob(one[0]), q.log_prob(one[0].clone()), rtol=0, atol=1e-10)
    # broadcasting: z [M, 1, D] against the batch gives the [M, B] matrix log q(z_m | x_b)
    zi = z[0].unsqueeze(1)
    matrix = q.log_prob(zi)
    for b in range(5):  # log q of another sentence's z reaches ~1e6: a batch of 1 sums in another order
        single = head.distribution(*head(h[b:b + 1]), h[b:b + 1])
        torch.testing.assert_close(matrix[:, b], single.log_prob(z[0].unsqueeze(1))[:, 0], rtol=1e-13, atol=1e-10)
    assert q.entropy() is None and q.kl(StandardNormal(4)) is None


def test_iaf_elementwise_flow_is_the_gaussian_closed_form():
    """With the MADE output weights zeroed every step is z <- sigma z + (1 - sigma) m with constant
    sigma, m per dimension: q is N(a mu + c, a² sigma²). Its log-density, Monte-Carlo KL and the
    near-identity case (sigma -> 1) must match the Gaussian closed forms."""
    torch.manual_seed(1)
    d = 3
    head = IAFHead(in_dim=5, latent_dim=d, num_steps=2, hidden_dim=6, gate_bias=0.0).double()
    consts = []
    with torch.no_grad():
        for made in head.flow.steps:
            made.out.weight.zero_()
            made.out.bias.normal_()
            m, s = made.out.bias.split(d)
            consts.append((torch.sigmoid(s), m.clone()))
    h = torch.randn(4, 5, dtype=torch.float64)
    mu, logvar = head(h)
    scale, shift = torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for sigma, m in consts:  # compose the affine maps z -> sigma z + (1 - sigma) m
        scale, shift = sigma * scale, sigma * shift + (1 - sigma) * m
    gauss = DiagGaussian(scale * mu + shift, logvar + 2 * torch.log(scale))
    q = head.distribution(mu, logvar, h)
    z = q.rsample(20000)
    torch.testing.assert_close(q.log_prob(z), gauss.log_prob(z), rtol=0, atol=1e-9)
    torch.testing.assert_close(q.log_prob(z[:3].clone()), gauss.log_prob(z[:3]), rtol=0, atol=1e-9)
    prior = StandardNormal(d)
    mc = q.log_prob(z) - prior.log_prob(z)  # [S, B]
    closed = gauss.kl(prior).sum(-1)
    assert torch.all((mc.mean(0) - closed).abs() < 4 * mc.std(0) / math.sqrt(z.shape[0]))
    with torch.no_grad():  # sigma = sigmoid(40) = 1 - 4e-18: the flow is the identity
        for made in head.flow.steps:
            made.out.bias[d:] = 40.0
    q = head.distribution(mu, logvar, h)
    base = DiagGaussian(mu, logvar)
    z = q.rsample(10)
    torch.testing.assert_close(q.log_prob(z.clone()), base.log_prob(z), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 2])
def test_iaf_density_integrates_to_one(seed):
    """∫ q(z|x) dz = 1 on a grid (log_prob by inversion); far points give -inf, never NaN."""
    torch.manual_seed(seed)
    head = IAFHead(in_dim=3, latent_dim=2, num_steps=3, hidden_dim=8, gate_bias=0.0).double()
    randomize(head, 0.3)
    h = torch.randn(1, 3, dtype=torch.float64)
    q = head.distribution(*head(h), h)
    zz, cell = grid_2d(9.0, 601)
    with torch.no_grad():
        log_q = q.log_prob(zz.unsqueeze(1))[:, 0]
    assert not torch.isnan(log_q).any()
    assert abs(float(log_q.exp().sum() * cell) - 1.0) < 1e-3


# ---------------------------------------------------------------- priors
def test_flow_prior_normalises_and_samples_follow_its_density():
    torch.manual_seed(3)
    prior = AutoregressiveFlowPrior(2, num_steps=3, hidden_dim=8).double()
    randomize(prior, 0.3)
    zz, cell = grid_2d(10.0, 401)
    with torch.no_grad():
        mass = prior.log_prob(zz).exp().sum() * cell
        assert abs(float(mass) - 1.0) < 1e-4
        assert torch.isfinite(prior.log_prob(torch.tensor([[1e3, -1e3]], dtype=torch.float64))).all()
        # E_p[z] from sample() and from importance sampling with log_prob() must agree
        samples = prior.sample(40000)
        proposal = torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 4.0)
        r = proposal.sample((200000,))
        w = torch.softmax(prior.log_prob(r) - proposal.log_prob(r).sum(-1), 0)
        torch.testing.assert_close(samples.mean(0), (w[:, None] * r).sum(0), rtol=0, atol=0.05)


def test_flow_prior_importance_sampling_normalisation_in_4d():
    torch.manual_seed(3)
    prior = AutoregressiveFlowPrior(4, num_steps=2, hidden_dim=8).double()
    randomize(prior, 0.3)
    proposal = torch.distributions.Normal(torch.zeros(4, dtype=torch.float64), 3.0)
    r = proposal.sample((100000,))
    with torch.no_grad():
        ratio = (prior.log_prob(r) - proposal.log_prob(r).sum(-1)).exp()
    se = float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - 1.0) < 4 * se + 1e-3


def test_mixture_prior_matches_brute_force_and_normalises():
    torch.manual_seed(4)
    prior = MixturePrior(2, num_components=3).double()
    with torch.no_grad():
        prior.logvars.normal_(0.0, 0.3)
        prior.logits.normal_()
    zz, cell = grid_2d(10.0, 401)
    with torch.no_grad():
        p = sum(torch.softmax(prior.logits, 0)[k]
                * torch.distributions.Normal(prior.means[k], (0.5 * prior.logvars[k]).exp()).log_prob(zz).sum(-1).exp()
                for k in range(3))
        torch.testing.assert_close(prior.log_prob(zz), p.log(), rtol=0, atol=1e-9)
        assert abs(float(p.sum() * cell) - 1.0) < 2e-3
        mean = (torch.softmax(prior.logits, 0)[:, None] * prior.means).sum(0)
        torch.testing.assert_close(prior.sample(40000).mean(0), mean, rtol=0, atol=0.04)


def test_mixture_prior_of_a_collapsed_component_is_finite_at_its_mean():
    """A component whose log-variance fell below -88 (fp32: exp(-logvar) is inf) scores its own mean, as a sample
    of it rounds to, at its density, not 0 * inf = NaN: the mixture shares the Gaussian density of the posterior."""
    prior = MixturePrior(2, num_components=2)
    with torch.no_grad():
        prior.logvars[0] = -100.0
    z = prior.means[0].detach().clone()
    expected = torch.logsumexp(torch.log_softmax(prior.logits, -1) + torch.stack(
        [DiagGaussian(prior.means[k], prior.logvars[k]).log_prob(z) for k in range(2)]), 0)
    log_p = prior.log_prob(z)
    assert torch.isfinite(log_p) and torch.equal(log_p, expected)


# ---------------------------------------------------------------- vMF
def test_bessel_series_against_closed_forms():
    """I_{1/2}(x) = sqrt(2 / (π x)) sinh x, and D = 3: C = kappa / (4π sinh kappa), A = coth kappa - 1/kappa."""
    for x in (0.3, 2.0, 17.0, 150.0):
        expected = 0.5 * math.log(2 / (math.pi * x)) + x + math.log1p(-math.exp(-2 * x)) - math.log(2)
        assert abs(log_bessel_iv(0.5, x) - expected) < 1e-10
        log_c, a = vmf_constants(3, x)
        assert abs(log_c - (math.log(x) - math.log(4 * math.pi) - (expected + 0.5 * math.log(math.pi * x / 2)))) < 1e-10
        assert abs(a - (1 / math.tanh(x) - 1 / x)) < 1e-10
    scipy_special = pytest.importorskip("scipy.special")
    for v, x in [(0.0, 1.0), (15.0, 50.0), (31.0, 3.0), (7.5, 400.0)]:
        assert abs(log_bessel_iv(v, x) - (math.log(scipy_special.ive(v, x)) + x)) < 1e-8


def test_vmf_density_integrates_to_one_on_the_circle():
    head = VMFHead(in_dim=3, latent_dim=2, kappa=5.0).double()
    h = torch.randn(1, 3, dtype=torch.float64)
    q = head.distribution(*head(h), h)
    theta = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)[:-1]
    z = torch.stack([theta.cos(), theta.sin()], -1).unsqueeze(1)  # [N, 1, 2]
    with torch.no_grad():
        mass = q.log_prob(z)[:, 0].exp().sum() * (2 * math.pi / len(theta))
    assert abs(float(mass) - 1.0) < 1e-8


@pytest.mark.parametrize("dim,kappa", [(3, 4.0), (8, 20.0), (32, 80.0)])
def test_vmf_samples_mean_direction_and_kl(dim, kappa):
    head = VMFHead(in_dim=5, latent_dim=dim, kappa=kappa).double()
    h = torch.randn(2, 5, dtype=torch.float64)
    q = head.distribution(*head(h), h)
    z = q.rsample(20000)  # [S, 2, D]
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(20000, 2, dtype=torch.float64), rtol=0, atol=1e-9)
    _, mean_length = vmf_constants(dim, kappa)
    torch.testing.assert_close(z.mean(0), mean_length * q.mu, rtol=0, atol=0.02)
    torch.testing.assert_close(q.mean, mean_length * q.mu)
    prior = SphereUniform(dim)
    kl = q.kl(prior)
    assert kl.shape == (2, 1)
    log_c, a = vmf_constants(dim, kappa)
    area = math.log(2) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)
    torch.testing.assert_close(kl[:, 0], torch.full((2,), log_c + kappa * a + area, dtype=torch.float64))
    mc = q.log_prob(z) - prior.log_prob(z)
    assert torch.all((mc.mean(0) - kl[:, 0]).abs() < 4 * mc.std(0) / math.sqrt(20000) + 1e-9)
    if dim == 3:  # w = mu^T z has density ∝ exp(kappa w) on [-1, 1]: check its CDF at a few points
        w = (z * q.mu).sum(-1).flatten()
        for t in (-0.5, 0.5, 0.9):
            cdf = (math.exp(kappa * t) - math.exp(-kappa)) / (math.exp(kappa) - math.exp(-kappa))
            assert abs(float((w <= t).double().mean()) - cdf) < 0.01


def test_vmf_gradient_reaches_mean_direction_and_mismatched_priors_fail():
    head = VMFHead(in_dim=5, latent_dim=4, kappa=10.0)
    h = torch.randn(3, 5)
    q = head.distribution(*head(h), h)
    q.rsample(2).sum().backward()
    assert head.linear.weight.grad.abs().sum() > 0
    with pytest.raises(TextVAEError, match="vmf_uniform"):
        q.kl(StandardNormal(4))
    with pytest.raises(TextVAEError, match="unit sphere"):
        SphereUniform(4).log_prob(torch.randn(3, 4) * 3)
    with pytest.raises(TextVAEError, match="latent_dim >= 2"):
        VMFHead(in_dim=5, latent_dim=1)


# ---------------------------------------------------------------- decoders
def token_logprobs(model: TextVAE, tokens: torch.Tensor, z) -> torch.Tensor:
    hidden, _ = model.decoder(tokens[:, :-1], z)
    return torch.log_softmax(model.projection(hidden), -1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("decoder,options", DECODER_VARIANTS)
def test_decoder_is_causal(decoder, options):
    """As tests/test_model.py: changing token t+1 leaves log p(x_s | x_<s, z) for s <= t unchanged."""
    model = build(decoder, dec_options=options)
    tokens = random_batch(6).tokens
    z = torch.randn(6, 4)
    with torch.no_grad():
        base = token_logprobs(model, tokens, z)
        for t in range(1, tokens.shape[1] - 2):
            changed = tokens.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 7) % V
            out = token_logprobs(model, changed, z)
            torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:]), "later positions must see the change"


@pytest.mark.parametrize("latent", [0, 4])
@pytest.mark.parametrize("decoder,options", DECODER_VARIANTS)
def test_decode_step_matches_full_pass_and_reorders(decoder, options, latent):
    model = build(decoder, dec_options=options, latent=latent)
    tokens = random_batch(4, max_words=10).tokens
    z = torch.randn(4, latent) if latent else None
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        hidden, _ = model.decoder(tokens, z)
        full = model.projection(hidden)  # [B, T, V]
        if latent:  # z must matter
            assert not torch.allclose(model.projection(model.decoder(tokens, z + 1)[0]), full)
        state, half = None, tokens.shape[1] // 2
        for t in range(tokens.shape[1]):
            if t == half:  # beam search reorders the rows of the state (and of z)
                state = model.reorder_state(state, perm)
                tokens, full = tokens[perm], full[perm]
                z = None if z is None else z[perm]
            logits, state = model.decode_step(tokens[:, t:t + 1], z, state)
            torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dilations,kernel,layers,expected", [
    ([1, 2, 4], 3, 1, 15), ([1, 2, 4], 3, 2, 29), ([1, 2], 2, 3, 10), ([1], 1, 1, 1), ([4], 2, 1, 5)])
def test_dilated_cnn_receptive_field(dilations, kernel, layers, expected):
    dec = DilatedCNNDecoder(V, 8, 16, 3, num_layers=layers, dilations=dilations, kernel_size=kernel).eval()
    assert dec.receptive_field == expected
    length = expected + 6
    tokens = torch.randint(4, V, (1, length))
    z = torch.randn(1, 3)
    with torch.no_grad():
        last = dec(tokens, z)[0][0, -1]
        changes = []
        for p in range(length):
            other = tokens.clone()
            other[0, p] = 4 + (other[0, p] - 4 + 5) % (V - 4)
            changes.append(not torch.equal(dec(other, z)[0][0, -1], last))
    seen = [p for p, changed in enumerate(changes) if changed]
    # the furthest input that reaches the last output is R - 1 steps back (dilations may leave gaps)
    assert seen[0] == length - expected and seen[-1] == length - 1


@pytest.mark.parametrize("z_into,reading", [("every_block", [True] * 6), ("first_block", [True] + [False] * 5)])
def test_dilated_cnn_z_into_says_which_blocks_read_z(z_into, reading):
    dec = DilatedCNNDecoder(V, 8, 16, 3, num_layers=2, z_into=z_into).eval()
    assert [block.conv.in_channels == 16 + 3 for block in dec.blocks] == reading
    assert [block.reads_z for block in dec.blocks] == reading
    tokens = torch.randint(4, V, (2, 9))
    z = torch.randn(2, 3, requires_grad=True)
    dec(tokens, z)[0].sum().backward()
    assert z.grad.abs().sum() > 0  # z reaches the output either way
    with pytest.raises(TextVAEError, match="z_into 'last'; valid: every_block, first_block"):
        DilatedCNNDecoder(V, 8, 16, 3, z_into="last")


def test_skip_decoder_passes_z_to_output_and_every_layer():
    model = build("skip_lstm", layers=3)
    dec = model.decoder
    assert dec.out_dim == 12 + 4
    assert [layer.input_size for layer in dec.layers] == [12 + 4, 12 + 4, 12 + 4]
    tokens, z = random_batch(3).tokens, torch.randn(3, 4)
    with torch.no_grad():
        hidden, _ = dec(tokens, z)
    torch.testing.assert_close(hidden[..., 12:], z.unsqueeze(1).expand(-1, tokens.shape[1], -1))


# ---------------------------------------------------------------- encoders
@pytest.mark.parametrize("encoder", ENCODERS.names())
def test_encoder_ignores_padding(encoder):
    model = build(encoder=encoder)
    batch = random_batch(5)
    with torch.no_grad():
        together = model.encode(batch).mean
        alone = torch.cat([model.encode(batch.select(torch.tensor([i]))).mean for i in range(5)])
        perm = torch.randperm(5)
        torch.testing.assert_close(model.encode(batch.select(perm)).mean, together[perm], rtol=0, atol=1e-6)
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("part,registry,section", [("decoder", DECODERS, DecoderConfig),
                                                   ("encoder", ENCODERS, EncoderConfig)])
def test_a_setting_its_type_does_not_take_is_refused_not_ignored(part, registry, section, tmp_path):
    """z_init / z_concat of the cnn and transformer decoders, bidirectional of the cnn and transformer encoders."""
    settings = [f.name for f in dataclasses.fields(section) if f.name in registry.supplied]
    cases = [(name, s) for name in registry.names() for s in settings if not registry.takes(name, s)]
    assert {name for name, _ in cases} >= {"cnn", "transformer"}
    for name, setting in cases:
        default = getattr(section(), setting)
        assert isinstance(default, bool)  # the settings some types do without are switches
        check_model_config(ModelConfig(**{part: section(type=name)}))  # at its default: nothing to refuse
        with pytest.raises(TextVAEError, match=rf"model\.{part}\.{setting}: {not default} would be ignored, "
                                               rf"the {name} {part} does not take it"):
            check_model_config(ModelConfig(**{part: section(type=name, **{setting: not default})}))
        with pytest.raises(TextVAEError, match=rf"model\.{part}\.{setting}: {not default} would be ignored"):
            TextVAE(ModelConfig(**{part: section(type=name, **{setting: not default})}), vocab_size=8)  # from Python
        # a model saved before the rule (or built unchecked) still loads, as it was made
        unchecked = TextVAE(ModelConfig(**{part: section(type=name, **{setting: not default})}), 8, check=False)
        unchecked.save_pretrained(tmp_path / name)
        assert getattr(getattr(TextVAE.from_pretrained(tmp_path / name).cfg, part), setting) == (not default)
        takers = [n for n in registry.names() if registry.takes(n, setting)]
        assert takers and name not in takers
        check_model_config(ModelConfig(**{part: section(type=takers[0], **{setting: not default})}))
    # the language model reads no encoder section
    check_model_config(ModelConfig(latent_dim=0, encoder=EncoderConfig(type="cnn", bidirectional=True)))
    with pytest.raises(TextVAEError, match="unknown parameter"):
        check_model_config(ModelConfig(**{part: section(type="cnn", options={"nonsense": 1})}))


@pytest.mark.parametrize("settings,message", [
    ({"decoder": DecoderConfig(z_init=False, z_concat=False)}, "z_init and z_concat both false leave the lstm decoder"),
    ({"posterior": "vmff"}, "unknown posterior 'vmff'; valid: gaussian, iaf, vmf"),
    ({"prior": "mog", "prior_options": {"num_components": 0.5}}, "prior 'mog': num_components must be an integer"),
    ({"init": "he"}, "unknown model.init 'he'; valid: he2019, torch"),
    ({"encoder_init": "xavier"}, "unknown model.encoder_init 'xavier'"),
    ({"decoder": DecoderConfig(type="cnn", options={"z_into": "last"})},
     "z_into 'last'; valid: every_block, first_block"),
    ({"latent_dim": 0, "decoder": DecoderConfig(type="transformer", hidden_dim=12, options={"num_heads": 5})},
     "hidden_dim=12 must be a multiple of num_heads=5"),
])
def test_model_settings_a_run_would_fail_on_or_ignore_are_refused_before_the_data(settings, message):
    with pytest.raises(TextVAEError, match=re.escape(message)):
        check_model_config(ModelConfig(**settings))
    if "z_init and z_concat" in message:  # either path alone reads z; the language model reads none
        check_model_config(ModelConfig(decoder=DecoderConfig(z_init=False)))
        check_model_config(ModelConfig(latent_dim=0, decoder=DecoderConfig(z_init=False, z_concat=False)))
    if "posterior" in settings:  # a misspelt name even where nothing reads it
        with pytest.raises(TextVAEError, match=re.escape(message)):
            check_model_config(ModelConfig(latent_dim=0, **settings))


def test_bad_options_are_one_line_errors():
    with pytest.raises(TextVAEError, match="unknown parameter"):
        build("cnn", dec_options={"dilation": [1, 2]})
    with pytest.raises(TextVAEError, match="num_heads"):
        build("transformer", dec_options={"num_heads": 5})
    with pytest.raises(TextVAEError, match="z_inject"):
        build("transformer", dec_options={"z_inject": "prefix"})
    with pytest.raises(TextVAEError, match="max_length"):
        decoder = build("transformer", dec_options={"max_length": 3}).decoder
        decoder(torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 4))


# ---------------------------------------------------------------- scoring several samples per sentence
@pytest.mark.parametrize("decoder, options", DECODER_VARIANTS)
def test_log_likelihood_scores_each_sample_as_its_own_batch(decoder, options):
    """log_likelihood(batch, z [S, B, D]) (the decoder's forward_samples: all pairs in one pass, a decoder
    free to share work between samples) is, row s, the log-likelihood of the batch given z[s] alone."""
    model = build(decoder, dec_options=options, layers=1)
    randomize(model, 0.5)
    batch = random_batch(4)
    z = torch.randn(3, 4, 4)
    with torch.no_grad():
        scored = model.log_likelihood(batch, z)
        alone = torch.stack([-model.token_nll(batch, z[s]) for s in range(3)])
    assert scored.shape == (3, 4)
    torch.testing.assert_close(scored, alone, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- every combination trains
@pytest.mark.parametrize("posterior", POSTERIORS.names())
@pytest.mark.parametrize("prior", PRIORS.names())
@pytest.mark.parametrize("decoder", DECODERS.names())
@pytest.mark.parametrize("encoder", ENCODERS.names())
def test_every_combination_gives_finite_loss_and_gradients(encoder, decoder, prior, posterior):
    model = build(decoder, encoder, posterior, prior, layers=1).train()
    batch = random_batch(4)
    if (posterior == "vmf") != (prior == "vmf_uniform"):  # densities on the sphere vs on R^D
        with pytest.raises(TextVAEError):
            model(batch)
        return
    out = model(batch)
    assert torch.isfinite(out.loss) and out.rec.shape == (4,)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the posterior head receives gradient (from the KL or, for a constant-KL vMF, through z)
    assert any(p.grad.abs().sum() > 0 for p in model.posterior.parameters())


# ---------------------------------------------------------------- persistence and metrics
LATENT_PAIRS = [("iaf", "flow", "transformer", "cnn"), ("vmf", "vmf_uniform", "cnn", "transformer"),
                ("gaussian", "mog", "skip_lstm", "lstm")]


@pytest.mark.parametrize("posterior,prior,decoder,encoder", LATENT_PAIRS)
def test_save_load_round_trip(tmp_path, posterior, prior, decoder, encoder):
    model = build(decoder, encoder, posterior, prior)
    model.save_pretrained(tmp_path)
    loaded = TextVAE.from_pretrained(tmp_path).eval()
    batch, z = random_batch(), torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.token_nll(batch, z), model.token_nll(batch, z), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode(batch).log_prob(z), model.encode(batch).log_prob(z), rtol=0, atol=0)
        torch.testing.assert_close(loaded.prior.log_prob(z), model.prior.log_prob(z), rtol=0, atol=0)


@pytest.mark.parametrize("posterior,prior,decoder,encoder", LATENT_PAIRS)
def test_metrics_run_on_every_latent_family(posterior, prior, decoder, encoder):
    """The metrics use only the log-density protocol: every family gives finite figures, MI within
    its bounds, and an IW bound that is no worse than the ELBO on average."""
    from textvae.metrics.evaluate import evaluate_model

    model = build(decoder, encoder, posterior, prior)
    batches = [random_batch(6, seed=1), random_batch(6, seed=2)]
    res = evaluate_model(model, batches, n_samples=50, generator=torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in res.values())
    assert res["mi_batch"] <= math.log(6) + 1e-6 and res["mi_dataset"] <= math.log(12) + 1e-6
    assert res["iw_nll"] <= res["neg_elbo"] + 0.5


def test_flow_prior_stays_fp32_under_autocast():
    """A bf16 run's test report (and evaluate --precision bf16) runs under bf16 autocast; the flow prior's
    log p(z), which enters IW-NLL and the sampled KL, is computed in fp32 there as everywhere."""
    torch.manual_seed(0)
    prior = PRIORS.build("flow", {}, latent_dim=8)
    randomize(prior, 0.7)
    z = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, drawn = prior.log_prob(z), prior.sample(3, generator=torch.Generator().manual_seed(1))
    assert inside.dtype == drawn.dtype == torch.float32
    assert torch.equal(inside, prior.log_prob(z))
    assert torch.equal(drawn, prior.sample(3, generator=torch.Generator().manual_seed(1)))
