"""Tests of textvae.metrics against closed forms.

The model here is a linear-Gaussian latent model implementing the metric protocol of
docs/design.md: z ~ N(0, I_D), x | z ~ N(W z + b, σ² I_P) with continuous x. Its marginal
log p(x) = log N(x; b, W Wᵀ + σ² I) and its exact posterior are analytic (W has orthogonal
columns, so the exact posterior is a diagonal Gaussian), which pins down every estimator.
"""
from __future__ import annotations

import math
import random
import re

import pytest
import torch
from torch import nn

from textvae.errors import TextVAEError
from textvae.metrics import (TEXT_METRICS, GeneratedTexts, active_units, collapse_diagnostics, distinct_n,
                             elbo_terms, evaluate_model, format_table, iw_estimate, iw_nll, latent_probe,
                             list_metrics, list_text_metrics, mi_batch, he2019_noise_sd, mi_batch_he2019, mi_dataset,
                             reconstruction_bleu, score_texts, self_bleu)

torch.set_num_threads(1)
LOG_2PI = math.log(2 * math.pi)
F64 = torch.float64


# ---- a protocol-conforming linear-Gaussian model ----------------------------------------------
class StandardNormal:
    def log_prob(self, z):
        return -0.5 * (LOG_2PI + z**2).sum(-1)


class DiagGaussian:
    """q = N(mu, diag exp(logvar)) over [B, D], sampling from the global RNG like torch.distributions."""

    def __init__(self, mu, logvar):
        self.mu, self.logvar = mu, logvar

    @property
    def mean(self):
        return self.mu

    def rsample(self, n):
        eps = torch.randn((n, *self.mu.shape), dtype=self.mu.dtype)
        return self.mu + eps * torch.exp(0.5 * self.logvar)

    def log_prob(self, z):
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar)).sum(-1)

    def entropy(self):
        return 0.5 * (1 + LOG_2PI + self.logvar).sum(-1)

    def kl(self, prior):
        if isinstance(prior, StandardNormal):
            return 0.5 * (self.mu**2 + torch.exp(self.logvar) - 1 - self.logvar)
        return None


class Opaque:
    """The same distribution seen through log-densities only: no entropy, no KL, no mu/logvar."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def mean(self):
        return self.inner.mean

    def rsample(self, n):
        return self.inner.rsample(n)

    def log_prob(self, z):
        return self.inner.log_prob(z)

    def entropy(self):
        return None

    def kl(self, prior):
        return None


class VectorBatch:
    """A test "batch": continuous x [B, P]; dummy tokens [B, T] set the padded length."""

    def __init__(self, x, t=3):
        self.x = x
        self.tokens = torch.zeros(len(x), t, dtype=torch.long)
        self.n_tokens = torch.full((len(x),), x.shape[1])

    def __len__(self):
        return len(self.x)


class LinearGaussian(nn.Module):
    """Decoder x | z ~ N(W z + b, σ² I); encoder q(z|x) = N(A x + c, diag exp(logvar))."""

    def __init__(self, W, b, sigma, A, c, logvar, opaque=False):
        super().__init__()
        self.W, self.b, self.sigma, self.A, self.c, self.logvar = W, b, sigma, A, c, logvar
        self.opaque = opaque
        self.prior = StandardNormal()
        self.dropout = nn.Dropout(0.5)  # only to observe train / eval mode
        self.calls = []  # (S, training, grad enabled) per log_likelihood call

    def encode(self, batch):
        mu = batch.x @ self.A.T + self.c
        q = DiagGaussian(mu, self.logvar.expand_as(mu))
        return Opaque(q) if self.opaque else q

    def log_likelihood(self, batch, z):  # z [S, B, D] -> [S, B]
        self.calls.append((z.shape[0], self.training, torch.is_grad_enabled()))
        mean = z @ self.W.T + self.b
        sq = ((batch.x - mean) / self.sigma) ** 2
        return -0.5 * (sq + LOG_2PI + 2 * math.log(self.sigma)).sum(-1)

    def log_marginal(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)


def make_models(seed=0, perturb=0.05, logvar_shift=0.1, n=200, p=4, scales=(1.5, 0.8), sigma=0.7):
    """(approximate-encoder model, exact-posterior model, data x [n, P]) for one random W, b."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=F64)  # noqa: E731
    d = len(scales)
    q, _ = torch.linalg.qr(randn(p, d))
    W, b = q * torch.tensor(scales, dtype=F64), randn(p)
    # exact posterior: covariance (I + WᵀW/σ²)⁻¹ is diagonal since W's columns are orthogonal
    cov = torch.linalg.inv(torch.eye(d, dtype=F64) + W.T @ W / sigma**2)
    A = cov @ W.T / sigma**2
    c, logvar = -A @ b, torch.log(torch.diagonal(cov))
    exact = LinearGaussian(W, b, sigma, A, c, logvar)
    approx = LinearGaussian(W, b, sigma, A * (1 + perturb * randn(d, p)), c + perturb * randn(d),
                            logvar + logvar_shift)
    x = randn(n, d) @ W.T + b + sigma * randn(n, p)
    return approx, exact, x


def split(x, size):
    return [VectorBatch(x[i:i + size]) for i in range(0, len(x), size)]


def seed(s):
    return torch.Generator().manual_seed(s)


# ---- importance-weighted NLL and ELBO ----------------------------------------------------------
def test_iw_is_exact_with_the_exact_posterior_for_every_k():
    _, exact, x = make_models()
    true = exact.log_marginal(x)
    for k in (1, 13):
        result = iw_nll(exact, split(x, 64), n_samples=k, generator=seed(0))
        torch.testing.assert_close(-result.nll, true, rtol=0, atol=1e-9)


def test_iw_error_shrinks_with_k_and_vanishes():
    approx, _, x = make_models()
    true = approx.log_marginal(x)
    errors = [(-iw_nll(approx, split(x, 100), n_samples=k, generator=seed(0)).nll - true).abs().mean()
              for k in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 and errors[-1] < 0.01, errors


def test_elbo_below_iw_below_true_on_average():
    approx, _, x = make_models(seed=1, perturb=0.3, logvar_shift=0.5, n=1000)
    batches = split(x, 100)
    true = approx.log_marginal(x).mean()
    elbo = -elbo_terms(approx, batches, generator=seed(1)).neg_elbo
    iw10 = -iw_nll(approx, batches, n_samples=10, generator=seed(2)).nll_mean
    iw100 = -iw_nll(approx, batches, n_samples=100, generator=seed(2)).nll_mean
    assert elbo < iw10 < iw100 < true


def test_chunking_does_not_change_the_estimate():
    approx, _, x = make_models(n=40)
    batches = split(x, 20)  # B·T = 60 (sentence, sample) tokens per sample
    for k, chunk in ((7, 2), (500, 3)):  # K not a multiple of the chunk
        approx.calls.clear()
        small = iw_nll(approx, batches, n_samples=k, max_tokens=chunk * 60, generator=seed(5)).nll
        sizes = [s for s, _, _ in approx.calls]
        assert max(sizes) == chunk and sum(sizes) == k * (len(batches) + 1)  # + the first batch's second draw
        big = iw_nll(approx, batches, n_samples=k, max_tokens=10**9, generator=seed(5)).nll
        torch.testing.assert_close(small, big, rtol=0, atol=1e-12)


def collapsed_model(model):
    """Decoder ignores z (W = 0) and the encoder outputs N(0, I) whatever x: posterior = prior."""
    d, p = model.A.shape
    zeros = lambda *shape: torch.zeros(*shape, dtype=F64)  # noqa: E731
    return LinearGaussian(zeros(p, d), model.b, model.sigma, zeros(d, p), zeros(d), zeros(d))


def test_posterior_equal_to_prior_gives_iw_equal_to_elbo():
    # every weight is log p(x|z) + log p(z) − q(z|x) = log p(x|z), the same for all z: = log p(x)
    approx, _, x = make_models()
    model = collapsed_model(approx)
    batches = split(x, 50)
    iw = iw_nll(model, batches, n_samples=9, generator=seed(0))
    elbo = elbo_terms(model, batches, generator=seed(1))
    torch.testing.assert_close(iw.nll, elbo.rec + elbo.kl, rtol=0, atol=1e-10)
    torch.testing.assert_close(-iw.nll, model.log_marginal(x), rtol=0, atol=1e-10)
    assert elbo.kl_mean == pytest.approx(0.0, abs=1e-12)


def test_iw_effective_sample_size_and_an_exact_posterior():
    # equal weights (the exact posterior): every sample counts, and a second draw changes nothing
    _, exact, x = make_models(n=30)
    result = iw_nll(exact, split(x, 30), n_samples=13, generator=seed(0))
    assert result.nll_mc_se == pytest.approx(0.0, abs=1e-6) and result.se_sentences == 30
    assert result.ess_mean == pytest.approx(13.0)
    # one weight carries everything: ESS 1; otherwise Kish's (Σ w)² / Σ w², shift-invariant
    assert float(iw_estimate(torch.tensor([[0.0], [-800.0], [-900.0]], dtype=F64)).ess) == pytest.approx(1.0)
    log_w = torch.randn(50, 6, generator=seed(1), dtype=F64)
    w = torch.exp(log_w)
    torch.testing.assert_close(iw_estimate(log_w).ess, w.sum(0) ** 2 / (w**2).sum(0))
    torch.testing.assert_close(iw_estimate(log_w - 300.0).ess, w.sum(0) ** 2 / (w**2).sum(0))


def test_iw_second_draws_leave_the_estimate_alone_and_sit_mid_run():
    approx, _, x = make_models(n=250)
    batches = split(x, 10)  # 25 batches: 5 and 15 are drawn twice, and 0 as the short pass's fallback
    approx.calls.clear()
    checked = iw_nll(approx, batches, n_samples=7, generator=seed(3))
    assert sum(s for s, _, _ in approx.calls) == 7 * (25 + 3) and checked.se_sentences == 20
    unchecked = iw_nll(approx, batches, n_samples=7, generator=seed(3), check_every=10**6)
    assert unchecked.se_sentences == 10  # a pass shorter than half a run: the first batch
    torch.testing.assert_close(checked.nll, unchecked.nll, rtol=0, atol=0)


def redraws(model, x, k, n_draws=300):
    """The IW estimate of the same sentences (one batch, so each is drawn twice) under
    ``n_draws`` independent draws of the K samples."""
    return [iw_nll(model, split(x, len(x)), n_samples=k, generator=seed(100 + r)) for r in range(n_draws)]


@pytest.mark.parametrize("perturb, logvar_shift, ess_range", [(0.1, 0.3, (10, 15)), (0.3, 0.5, (2, 5))])
def test_iw_monte_carlo_se_matches_the_spread_over_redraws(perturb, logvar_shift, ess_range):
    # a fair encoder, and a poor one whose weights are heavy-tailed (ESS ≈ 3 of 20), where reading
    # the variance off one draw's weights (the delta method) would give less than half of it
    approx, _, x = make_models(seed=1, perturb=perturb, logvar_shift=logvar_shift, n=50)
    runs = redraws(approx, x, k=20)
    assert ess_range[0] < sum(r.ess_mean for r in runs) / len(runs) < ess_range[1]
    means = torch.tensor([r.nll_mean for r in runs])
    se = math.sqrt(sum(r.nll_mc_se**2 for r in runs) / len(runs))
    assert float(means.std()) == pytest.approx(se, rel=0.15)


def test_summary_uses_corpus_reduction():
    approx, _, x = make_models(n=60)
    result = iw_nll(approx, split(x, 25), n_samples=3, generator=seed(0))
    assert result.nll_mean == pytest.approx(float(result.nll.mean()))
    assert result.ppl == pytest.approx(math.exp(float(result.nll.sum() / result.n_tokens.sum())))
    elbo = elbo_terms(approx, split(x, 25), generator=seed(0))
    assert elbo.neg_elbo == pytest.approx(elbo.rec_mean + elbo.kl_mean)
    assert elbo.elbo_ppl == pytest.approx(math.exp(float((elbo.rec + elbo.kl).sum()) / (60 * 4)))


def test_eval_mode_no_grad_restored_and_global_rng_untouched():
    approx, _, x = make_models(n=30)
    approx.train()
    approx.dropout.eval()  # a submodule's own mode must survive too
    state = torch.get_rng_state()
    first = iw_nll(approx, split(x, 10), n_samples=4, generator=seed(3)).nll
    assert approx.calls and all(not training and not grad for _, training, grad in approx.calls)
    assert approx.training and not approx.dropout.training
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(iw_nll(approx, split(x, 10), n_samples=4, generator=seed(3)).nll,
                               first, rtol=0, atol=0)


def test_monte_carlo_kl_without_closed_form():
    approx, _, x = make_models(n=2000)
    opaque = LinearGaussian(approx.W, approx.b, approx.sigma, approx.A, approx.c, approx.logvar,
                            opaque=True)
    analytic = elbo_terms(approx, split(x, 200), generator=seed(0))
    mc = elbo_terms(opaque, split(x, 200), generator=seed(0))
    assert analytic.kl_per_dim is not None and mc.kl_per_dim is None
    assert analytic.kl_per_dim.sum() == pytest.approx(analytic.kl_mean)
    assert mc.kl_mean == pytest.approx(analytic.kl_mean, abs=0.05)
    torch.testing.assert_close(mc.rec, analytic.rec)  # same stream, same z


# ---- mutual information --------------------------------------------------------------------------
def gaussian_family(n, batch, d, a, s, v, seed_=0, opaque=False):
    """x ~ N(0, s² I_D), q(z|x) = N(a x, v I); q(z) = N(0, (a²s² + v) I), so
    I = D/2 · log((a²s² + v) / v). Returns (posteriors per batch, I)."""
    g = seed(seed_)
    x = s * torch.randn(n, d, generator=g, dtype=F64)
    posteriors = [DiagGaussian(a * x[i:i + batch], torch.full_like(x[i:i + batch], math.log(v)))
                  for i in range(0, n, batch)]
    if opaque:
        posteriors = [Opaque(q) for q in posteriors]
    return posteriors, d / 2 * math.log((a**2 * s**2 + v) / v)


def test_mi_dataset_matches_closed_form():
    posteriors, true = gaussian_family(n=2000, batch=100, d=2, a=1.0, s=1.0, v=1.0)
    assert mi_dataset(posteriors, generator=seed(0)) == pytest.approx(true, abs=0.05)


def test_mi_dataset_chunking_is_exact():
    posteriors, _ = gaussian_family(n=300, batch=64, d=3, a=1.0, s=1.0, v=0.5)
    samples = [q.rsample(1)[0] for q in posteriors]
    small = mi_dataset(posteriors, samples, max_elements=7)
    assert small == pytest.approx(mi_dataset(posteriors, samples, max_elements=10**9), abs=1e-12)
    # brute force over the full N×N matrix
    z = torch.cat(samples)
    log_q = torch.cat([q.log_prob(z.unsqueeze(1)) for q in posteriors], dim=1)  # [N, N]
    brute = log_q.diagonal().mean() - (torch.logsumexp(log_q, 1) - math.log(len(z))).mean()
    assert small == pytest.approx(float(brute), abs=1e-12)


def test_mi_batch_close_when_mi_small_and_biased_low_otherwise():
    posteriors, true = gaussian_family(n=2048, batch=256, d=2, a=1.0, s=1.0, v=1.0)
    assert mi_batch(posteriors, generator=seed(0)) == pytest.approx(true, abs=0.1)
    # true MI = log 5 ≈ 1.61 against log B = log 8 ≈ 2.08
    posteriors, true = gaussian_family(n=2048, batch=8, d=2, a=2.0, s=1.0, v=1.0)
    small_batches = mi_batch(posteriors, generator=seed(0))
    assert small_batches < true - 0.2 and small_batches <= math.log(8)
    assert mi_dataset(posteriors, generator=seed(0)) == pytest.approx(true, abs=0.1)


def test_mi_bounded_by_log_batch_and_log_n():
    # true MI = 2 · log(1 + 10⁴) ≈ 18 nats, far above both bounds
    for opaque in (False, True):
        posteriors, true = gaussian_family(n=320, batch=16, d=4, a=10.0, s=1.0, v=0.01,
                                           opaque=opaque)
        per_batch = mi_batch(posteriors, generator=seed(0))
        whole = mi_dataset(posteriors, generator=seed(0))
        # codes of different sentences never overlap, so both estimators sit at their bound
        assert per_batch == pytest.approx(math.log(16), abs=1e-4) and per_batch < true
        assert whole == pytest.approx(math.log(320), abs=1e-4) and whole < true
        assert per_batch <= math.log(16) + 1e-12 and whole <= math.log(320) + 1e-12
        # the published estimator's entropy term does not cancel its sample: it leaves the bound
        he = mi_batch_he2019(posteriors, generator=seed(0))
        assert opaque or abs(he - math.log(16)) > 1e-3


@pytest.mark.parametrize("seed_", range(5))
def test_mi_is_zero_for_x_independent_posteriors(seed_):
    # q(z|x) = N(m, s²) with the same m, s for every sentence: I = 0. N = 500, D = 32, as in PTB's
    # latent; the published estimator's noise floor there is sqrt(32 / 1000) = 0.18 nats.
    g = seed(seed_)
    m, logvar = torch.randn(32, generator=g, dtype=F64), torch.randn(32, generator=g, dtype=F64)
    posteriors = [DiagGaussian(m.expand(100, 32), logvar.expand(100, 32)) for _ in range(5)]
    assert abs(mi_dataset(posteriors, generator=seed(seed_))) < 0.05
    assert abs(mi_batch(posteriors, generator=seed(seed_))) < 0.05


def test_he2019_estimator_noise_floor_matches_its_formula():
    # the same x-independent posterior over many seeds: mean ~0, sd sqrt(D / 2N)
    posteriors = [DiagGaussian(torch.zeros(100, 32, dtype=F64), torch.zeros(100, 32, dtype=F64))
                  for _ in range(5)]
    values = torch.tensor([mi_batch_he2019(posteriors, generator=seed(k)) for k in range(200)])
    sd = he2019_noise_sd(32, 500)
    assert sd == pytest.approx(0.1789, abs=1e-4)
    assert float(values.std()) == pytest.approx(sd, rel=0.25)
    assert abs(float(values.mean())) < 4 * sd / math.sqrt(200)
    assert float(values.abs().max()) > 0.3  # single draws are far from 0: why it is not the default


@pytest.mark.parametrize("seed_", range(5))
def test_mi_dataset_of_a_gaussian_family(seed_):
    # mu_i ~ N(0, I_2), sigma = 1: q(z) = N(0, 2 I), I = log 2 = 0.693
    posteriors, true = gaussian_family(n=2000, batch=100, d=2, a=1.0, s=1.0, v=1.0, seed_=seed_)
    assert true == pytest.approx(math.log(2))
    assert mi_dataset(posteriors, generator=seed(seed_ + 100)) == pytest.approx(true, abs=0.06)


def test_mi_batch_is_batch_size_weighted():
    posteriors, _ = gaussian_family(n=30, batch=20, d=2, a=1.0, s=1.0, v=0.5)  # batches of 20, 10
    samples = [q.rsample(1)[0] for q in posteriors]
    parts = [mi_batch([q], [z]) for q, z in zip(posteriors, samples)]
    assert mi_batch(posteriors, samples) == pytest.approx((20 * parts[0] + 10 * parts[1]) / 30)


@pytest.mark.parametrize("n, groups", [(128, [32, 32, 32, 32]), (100, [25, 25, 25, 25]), (20, [20])])
def test_per_batch_mi_over_groups_of_at_most_b_equals_those_groups_as_batches(n, groups):
    # one evaluation batch of n split into groups of at most 32, as equal as possible, gives the
    # figure of those groups passed as separate batches, for both per-batch estimators
    g = seed(n)
    mu, logvar = torch.randn(n, 3, generator=g, dtype=F64), torch.randn(n, 3, generator=g, dtype=F64) - 1
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, generator=g, dtype=F64)
    bounds = torch.tensor([0] + groups).cumsum(0).tolist()
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    one = DiagGaussian(mu, logvar)
    for estimator in (mi_batch, mi_batch_he2019):
        grouped = estimator([one], [z], batch_size=32)
        separate = estimator([DiagGaussian(mu[p], logvar[p]) for p in parts], [z[p] for p in parts])
        assert grouped == pytest.approx(separate, abs=1e-12)
    if len(groups) > 1:  # and it is not the figure of the whole batch
        assert abs(mi_batch([one], [z], batch_size=32) - mi_batch([one], [z])) > 1e-3


def test_per_batch_mi_bound_is_its_group_size():
    # well separated, near-deterministic codes: the estimate sits at log B of the groups, not of the batch
    g = seed(0)
    mu = 10 * torch.randn(128, 4, generator=g, dtype=F64)
    sharp = [DiagGaussian(mu, torch.full((128, 4), math.log(1e-4), dtype=F64))]
    assert mi_batch(sharp, generator=seed(1), batch_size=32) == pytest.approx(math.log(32), abs=1e-4)
    assert mi_batch(sharp, generator=seed(1)) == pytest.approx(math.log(128), abs=1e-4)


# ---- active units and collapse diagnostics -----------------------------------------------------
def columns_with_variances(variances, n=50, seed_=0):
    """means [n, D] whose unbiased column variances are exactly ``variances``."""
    u = torch.randn(n, len(variances), generator=seed(seed_), dtype=F64)
    u = (u - u.mean(0)) / u.std(0)
    return u * torch.tensor(variances, dtype=F64).sqrt() + 3.0


def test_active_units_counts_threshold():
    count, var = active_units(columns_with_variances([0.0, 0.005, 0.02, 1.0]))
    assert count == 2
    torch.testing.assert_close(var, torch.tensor([0.0, 0.005, 0.02, 1.0], dtype=F64))


def test_active_units_uses_unbiased_variance():
    # two points 0 and √0.03: unbiased var 0.015 (active), biased var 0.0075 (inactive)
    means = torch.tensor([[0.0], [math.sqrt(0.03)]])
    assert active_units(means).count == 1
    with pytest.raises(TextVAEError):
        active_units(means[:1])


def test_collapse_verdicts_and_modes():
    n, d = 40, 32
    collapsed = collapse_diagnostics(torch.zeros(n, d), torch.ones(n, d), torch.zeros(d))
    assert collapsed.verdict == "collapsed" and set(collapsed.modes) == {"too noisy"}

    var = [1.0] * 3 + [0.0] * 29
    sigma = torch.cat([torch.full((n, 3), 0.3), torch.full((n, 28), 1.0), torch.full((n, 1), 0.1)], 1)
    partial = collapse_diagnostics(columns_with_variances(var, n), sigma, torch.zeros(d))
    assert partial.verdict == "partially collapsed: 3/32 dims active"
    assert partial.modes[:3] == ["active"] * 3
    assert partial.modes[3:31] == ["too noisy"] * 28 and partial.modes[31] == "signal too weak"
    torch.testing.assert_close(partial.signal_to_noise[:3], torch.full((3,), 1 / 0.09, dtype=F64))

    healthy = collapse_diagnostics(columns_with_variances([0.5] * d, n), torch.full((n, d), 0.5))
    assert healthy.verdict == "healthy" and healthy.n_active == d
    assert collapse_diagnostics(columns_with_variances([0.5, 0.0], n), None).modes == \
        ["active", "inactive"]


# ---- generation metrics ------------------------------------------------------------------------
def test_distinct_n_by_hand():
    sentences = ["a b a b", "a b c"]
    assert distinct_n(sentences, 1) == pytest.approx(3 / 7)
    assert distinct_n(sentences, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
    assert distinct_n(["a"], 2) == 0.0


def test_bleu_and_self_bleu_extremes():
    corpus = ["the cat sat on the mat", "a dog ran in the park today", "we eat fish"]
    assert reconstruction_bleu(corpus, corpus) == pytest.approx(100.0)
    assert reconstruction_bleu(corpus, ["x y z"] * 3) == pytest.approx(0.0)
    with pytest.raises(TextVAEError):
        reconstruction_bleu(corpus, corpus[:2])
    assert self_bleu(["the cat sat on the mat"] * 5) == pytest.approx(100.0)
    disjoint = [" ".join(f"w{i}_{j}" for j in range(12)) for i in range(6)]
    assert self_bleu(disjoint) < 1.0
    # sampling the scored sentences keeps the extremes
    assert self_bleu(["one two three four five"] * 8, sample=3) == pytest.approx(100.0)


def test_self_bleu_matches_sacrebleu_sentence_scores():
    from sacrebleu.metrics import BLEU

    rng = random.Random(0)
    for max_n in (1, 2, 4):
        # small vocabulary and short sentences: repeated n-grams, count ties, length ties
        sentences = [" ".join(rng.choice("abcde") for _ in range(rng.randint(1, 7)))
                     for _ in range(9)]
        bleu = BLEU(tokenize="none", max_ngram_order=max_n, smooth_method="floor",
                    smooth_value=0.1, effective_order=True)
        slow = [bleu.sentence_score(s, sentences[:i] + sentences[i + 1:]).score
                for i, s in enumerate(sentences)]
        assert self_bleu(sentences, max_n=max_n) == pytest.approx(sum(slow) / len(slow), abs=1e-9)


_TEXTS = GeneratedTexts(
    reconstructions=[("the cat sat on the mat", "the cat sat on a mat"), ("we eat fish", "we eat")],
    samples=["the dog ran", "a cat sat on the mat", "we eat fish today"],
    responses=[(["i am fine thanks"], ["i am fine", "fine thanks"]), (["see you"], ["see you", "bye"])])
# the figures of the registered text metrics whose values are shares, on 0-100 or 0-1
_SHARES = {"recon_bleu": 100, "self_bleu": 100, "distinct_1": 1, "distinct_2": 1, "intra_dist1": 1, "intra_dist2": 1,
           **{f"bleu{k}_{side}": 1 for k in range(1, 5) for side in ("precision", "recall")}}


@pytest.mark.parametrize("name", list_text_metrics())
def test_every_text_metric_reads_only_its_texts(name):
    """Each registered text metric gives finite figures from its own field of the texts, the same
    whatever the other fields hold, and any share among them lies in its range."""
    metric = TEXT_METRICS.get(name)
    figures = score_texts(_TEXTS, [name])
    alone = GeneratedTexts(**{metric.reads: getattr(_TEXTS, metric.reads)})
    assert score_texts(alone, [name]) == figures
    for key, value in figures.items():
        assert math.isfinite(value) and 0 <= value <= _SHARES.get(key, math.inf), (key, value)
    assert set(figures) - {"gen_sentences", "n_contexts"}


def test_the_table_of_a_dialogue_report_names_pairs_and_responses():
    table = format_table({"n_pairs": 6.0, "n_tokens": 40.0, "mi_dataset": 0.5, "distinct_2": 0.75, "gen_sentences": 20.0,
                          "n_contexts": 10.0})
    assert re.search(r"pairs \(context, response\)\s+6\n", table) and re.search(r"MI \(whole set, N=6\)\s+0.500", table)
    assert re.search(r"distinct-2 \(20 responses to 10 contexts\)\s+0.7500", table) and "n_contexts" not in table


def test_a_figure_that_rounds_to_zero_reads_without_a_sign():
    """An MI estimate of -0.001 nats, or a sum of zeros that came out -0.0, is a rounded zero: printed
    '-0.00' it reads as a negative figure. A figure beyond the rounding keeps its sign, and a NaN is '–'."""
    from textvae.metrics import format_figure
    assert format_figure(-0.001, "{:.2f}") == format_figure(-0.0, "{:.2f}") == "0.00"
    assert format_figure(-0.3, "{:.0f}") == "0" and format_figure(-0.00001, "{:.2%}") == "0.00%"
    assert format_figure(-0.006, "{:.2f}") == "-0.01" and format_figure(float("nan"), "{:.2f}") == "–"
    table = format_table({"n_sentences": 10.0, "n_tokens": 40.0, "mi_dataset": -0.0004, "kl": -0.0})
    assert re.search(r"MI \(whole set, N=10\)\s+0.000$", table) and "-0" not in table


# ---- latent probe --------------------------------------------------------------------------------
def test_latent_probe_separable_and_random():
    g = seed(0)
    labels = torch.arange(400) % 2
    feats = torch.randn(400, 8, generator=g) + 4.0 * labels[:, None]
    good = latent_probe(feats[:200], labels[:200], feats[200:], labels[200:], n_per_class=10,
                        seed=0, n_repeats=3)
    assert good.mean > 0.95 and len(good.accuracies) == 3
    noise = torch.randn(400, 8, generator=g)
    chance = latent_probe(noise[:200], labels[:200], noise[200:], labels[200:], n_per_class=20,
                          seed=0, n_repeats=5)
    assert 0.35 < chance.mean < 0.65 and chance.std > 0
    with pytest.raises(TextVAEError):
        latent_probe(feats[:200], labels[:200], feats[200:], labels[200:], n_per_class=101)


@pytest.mark.parametrize("opaque", [False, True])
def test_the_elbo_monte_carlo_se_matches_the_spread_of_redrawn_passes(opaque):
    """The one-sample -ELBO's Monte Carlo se (two more draws per sentence) against a slow reference: the sd of
    the corpus mean over 400 independent one-draw passes; the KL's se too where the KL is sampled (a posterior
    seen through its density only), none where it is analytic. The redraws leave every other figure as it was."""
    approx, _, x = make_models(n=200)
    approx.opaque = opaque
    batches = split(x, 40)
    results = evaluate_model(approx, batches, n_samples=5, generator=seed(0))
    without = evaluate_model(approx, batches, n_samples=5, generator=seed(0),
                             metrics=[m for m in list_metrics() if m != "elbo_mc_se"])
    assert {k: v for k, v in results.items() if not k.endswith("_mc_se") or k == "iw_nll_mc_se"} == without
    passes = [elbo_terms(approx, batches, generator=seed(s)) for s in range(400)]
    spread = lambda figure: float(torch.tensor([getattr(e, figure) for e in passes], dtype=F64).std())  # noqa: E731
    assert results["neg_elbo_mc_se"] == pytest.approx(spread("neg_elbo"), rel=0.2)
    if opaque:
        assert results["kl_mc_se"] == pytest.approx(spread("kl_mean"), rel=0.2) and results["kl_mc_se"] > 0
        assert re.search(r"  KL\s+[-\d.]+ \(one-sample estimate; Monte Carlo se 0\.\d{3}\)", format_table(results))
    else:
        assert "kl_mc_se" not in results and spread("kl_mean") < 1e-12
    assert re.search(r"-ELBO \(bound on NLL\)\s+[\d.]+ \(one draw of z each; Monte Carlo se 0\.\d{3}\)",
                     format_table(results))


def test_each_dimension_s_signal_to_noise_gives_its_information_for_the_exact_posterior():
    """For the exact posterior of the linear-Gaussian model (orthogonal W), Var(mu_d) + sigma_d² = 1 (the prior's),
    so ½·log(1 + SNR_d) = -½·log sigma_d², the true I(x; z_d), whatever the scale AU reads."""
    _, exact, x = make_models(n=4000)
    figures = evaluate_model(exact, split(x, 500), n_samples=0, per_dim=True, metrics=["diagnostics"])
    information = 0.5 * torch.log1p(torch.tensor(figures["snr_per_dim"], dtype=F64))
    assert torch.allclose(information, -0.5 * exact.logvar, rtol=0.05)
    assert len(figures["sigma_per_dim"]) == len(figures["snr_per_dim"]) == 2


class Remembering(Opaque):
    """As a flow posterior: log q of its last sample is remembered and read back for that tensor (or its row
    [0]); any other z is computed anew, here 1e-3 off, as a flow's inversion rounds differently, so that a
    figure read from the wrong one shows."""

    def __init__(self, inner):
        super().__init__(inner)
        self.last = None

    def rsample(self, n):
        z = self.inner.rsample(n)
        self.last = (z, self.inner.log_prob(z))
        return z

    def log_prob(self, z):
        sample, log_q = self.last if self.last is not None else (None, None)
        if sample is not None and z.data_ptr() == sample.data_ptr() and z.shape == sample.shape:
            return log_q
        if sample is not None and z.data_ptr() == sample.data_ptr() and z.shape == sample.shape[1:]:
            return log_q[0]
        return self.inner.log_prob(z) + 1e-3


def test_the_elbo_redraws_leave_a_remembering_posterior_as_the_pass_left_it():
    """Without IW-NLL (whose own draws come last) the MI reads log q(z|x) of the pass's z from a posterior
    that remembers its last sample: the redraws must not be that sample."""
    approx, _, x = make_models(n=120)
    encode = approx.encode
    approx.encode = lambda batch: Remembering(encode(batch))
    batches = split(x, 40)
    with_se = evaluate_model(approx, batches, n_samples=0, generator=seed(0))
    without = evaluate_model(approx, batches, n_samples=0, generator=seed(0),
                             metrics=[m for m in list_metrics() if m != "elbo_mc_se"])
    assert with_se["kl_mc_se"] > 0 and {k: v for k, v in with_se.items() if not k.endswith("_mc_se")} == without


# ---- everything at once ----------------------------------------------------------------------------
def test_evaluate_model_one_pass_and_table():
    approx, exact, x = make_models(n=120)
    passes = []

    def batches():  # a callable giving a fresh iterator; count how often it is called
        passes.append(1)
        return iter(split(x, 40))

    exact_results = evaluate_model(exact, batches, n_samples=20, generator=seed(0))
    assert len(passes) == 1
    assert exact_results["iw_nll"] == pytest.approx(-float(exact.log_marginal(x).mean()), abs=1e-9)
    assert exact_results["neg_elbo"] >= exact_results["iw_nll"]
    assert exact_results["n_sentences"] == 120 and exact_results["n_tokens"] == 480
    results = evaluate_model(approx, split(x, 40), n_samples=20, generator=seed(0))
    means = torch.cat([approx.encode(b).mean for b in split(x, 40)])
    assert results["au"] == active_units(means).count and results["latent_dim"] == 2
    assert 0 < results["mi_batch"] <= math.log(20) + 0.2
    assert 0 < results["mi_dataset"] <= math.log(120) + 0.2
    assert all(isinstance(v, float) for v in results.values())
    table = format_table(results)
    assert "NLL (IW, K=20)" in table and "PPL (IW)" in table and "PPL (ELBO bound)" in table
    assert "MI (whole set, N=120)" in table and table.splitlines()[-1].endswith("healthy")
    collapsed = evaluate_model(collapsed_model(approx), split(x, 40), metrics=("diagnostics",))
    assert collapsed["au"] == 0 and collapsed["dims_too_noisy"] == 2
    assert format_table(collapsed).splitlines()[-1].endswith("collapsed")
    # near-deterministic, well separated codes: each MI estimator sits at its own bound
    sharp = LinearGaussian(approx.W, approx.b, approx.sigma, 100 * approx.A, approx.c,
                           torch.full((2,), math.log(1e-4), dtype=F64), opaque=True)
    mi = evaluate_model(sharp, split(x, 40), metrics=("mi_batch", "mi_dataset"), generator=seed(0))
    # evaluation batches of 40 are taken as two groups of 20 (at most He et al.'s 32 each): B = 20, as labelled
    assert mi["mi_batch"] == pytest.approx(math.log(20), abs=1e-4) and mi["mi_batch_size"] == 20
    assert "MI (per-batch, B=20)" in format_table(mi)
    few = evaluate_model(sharp, split(x[:4], 4), metrics=("mi_batch",), generator=seed(0))
    assert few["mi_batch"] == pytest.approx(math.log(4), abs=1e-4) and few["mi_batch_size"] == 4
    assert mi["mi_dataset"] == pytest.approx(math.log(120), abs=1e-4)
    only_au = evaluate_model(approx, split(x, 40), metrics=("au",))
    assert set(only_au) == {"n_sentences", "n_tokens", "au", "au_threshold", "latent_dim"}
    with pytest.raises(TextVAEError):
        evaluate_model(approx, split(x, 40), metrics=("bleu",))


def test_gaussian_log_prob_is_finite_for_a_nearly_deterministic_posterior():
    """A posterior whose variance underflows (logvar -90, as a KL-weight-0 stage can drift to) has a
    finite log-density at its own sample, so MI stays a number; and log_prob is torch's elsewhere."""
    from textvae.models.distributions import DiagGaussian

    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[-90.0, 0.5]])
    q = DiagGaussian(mu, logvar)
    z = q.rsample(3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(q.log_prob(z)).all()
    logvar = torch.tensor([[-1.0, 0.5]])
    z = torch.randn(4, 1, 2, generator=torch.Generator().manual_seed(1))
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(DiagGaussian(mu, logvar).log_prob(z), expected)
