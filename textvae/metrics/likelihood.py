"""Likelihood figures: the importance-weighted log p(x) and the terms of the ELBO.

Both are reported the way the literature does (see ``textvae.reduction``): NLL is the per-sentence
mean of summed token NLLs in nats, PPL = exp(Σ NLL / Σ tokens). The two perplexities differ and are
named apart everywhere: ``iw_ppl`` (from the IW estimate of log p(x)) and ``elbo_ppl`` (from the
bound rec + KL, which is larger).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from textvae.errors import TextVAEError
from textvae.files import write_safetensors
from textvae.metrics._common import Batches, eval_mode, iterate, seeded
from textvae.models.distributions import kl_terms
from textvae.reduction import CorpusAccumulator
from textvae.rng import rng_state, set_rng_state

log = logging.getLogger("textvae.metrics")

# Default bound on S·B·T, the (sample, sentence) pairs times the padded length the decoder scores
# at once, per device type. A decoder that writes whole [tokens, V] logits (and their log-softmax)
# needs ~80 kB per token at V = 10k (4 bytes x V x 2); TextVAE's fused loss scores the vocabulary in
# chunks of its own, leaving the LSTM activations. Larger budgets are faster but hold more memory:
# the CPU's default is the largest whose test report's memory peak stayed near the training run's,
# the GPU's larger one pays off because its pass is launch-bound (the measured trade-off:
# benchmarks/NOTES.md, "IW decoder budget").
DEFAULT_MAX_TOKENS = {"cpu": 16384, "cuda": 65536}
# An IW pass draws one batch in IW_CHECK_EVERY twice, for its NLL's Monte Carlo error (IWAccumulator).
IW_CHECK_EVERY = 10


def default_max_tokens(device: torch.device | str) -> int:
    """The decoder budget of an IW pass on ``device`` when the caller sets none."""
    return DEFAULT_MAX_TOKENS.get(torch.device(device).type, DEFAULT_MAX_TOKENS["cpu"])


@dataclass
class IWResult:
    """Per-sentence IW-NLL (in the order the batches came) and its corpus summary."""

    nll: torch.Tensor  # [N], −log p(x) estimate per sentence, nats
    ess: torch.Tensor  # [N], the effective sample size of its K weights
    n_tokens: torch.Tensor  # [N]
    n_samples: int
    nll_mean: float  # per-sentence mean NLL (the figure tables report)
    nll_mc_se: float  # Monte Carlo standard error of nll_mean (:class:`IWAccumulator`)
    se_sentences: int  # the sentences drawn twice that nll_mc_se is estimated from
    ess_mean: float  # mean effective sample size of the K weights
    ppl: float  # IW-PPL = exp(Σ NLL / Σ tokens)

    def summary(self) -> dict[str, float]:
        return {"iw_nll": self.nll_mean, "iw_nll_mc_se": self.nll_mc_se, "iw_se_sentences": float(self.se_sentences),
                "iw_ess": self.ess_mean, "iw_ppl": self.ppl, "iw_samples": float(self.n_samples)}


@dataclass
class ElboResult:
    """Per-sentence ELBO terms (one z sample, β = 1) and their corpus summary."""

    rec: torch.Tensor  # [N], summed token cross-entropy −log p(x|z)
    kl: torch.Tensor  # [N], KL(q(z|x) || p(z)), analytic when available
    n_tokens: torch.Tensor  # [N]
    kl_per_dim: Optional[torch.Tensor]  # [D] float64, mean over sentences; None if not analytic
    rec_mean: float
    kl_mean: float
    neg_elbo: float  # per-sentence mean of rec + KL
    elbo_ppl: float  # ELBO-PPL = exp(Σ (rec + KL) / Σ tokens)

    def summary(self) -> dict[str, float]:
        return {"rec": self.rec_mean, "kl": self.kl_mean, "neg_elbo": self.neg_elbo,
                "elbo_ppl": self.elbo_ppl}


def draw_samples(posterior: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples z [n, B, D] of q(z|x) and their log q(z|x) [n, B].

    Each sample comes from its own ``rsample(1)`` call, so the k-th sample of a sequence of calls
    is the same however the sequence is cut into calls of n. Its log-density is taken at once, from
    the tensor ``rsample`` returned: a flow posterior (IAF) remembers log q of exactly that tensor
    and never has to invert the flow, which it would for a concatenation of samples.
    """
    zs, log_qs = [], []
    for _ in range(n):
        z = posterior.rsample(1)  # [1, B, D]
        zs.append(z)
        log_qs.append(posterior.log_prob(z))
    return torch.cat(zs), torch.cat(log_qs)


def iw_samples_for(model: Any, n_samples: int) -> int:
    """The importance samples the IW estimate of ``model`` takes when asked for ``n_samples``: all of
    them, but one for a model without latent space (``latent_dim == 0``, the language model), whose K
    weights log p(x) are all equal, so that one gives its exact log-likelihood."""
    return 1 if n_samples > 0 and getattr(model, "latent_dim", None) == 0 else n_samples


def iw_description(model: Any, n_samples: int) -> str:
    """What the likelihood figure of ``model`` asked for with ``n_samples`` is, for the lines that announce
    it: ``IW-NLL with K = 500 samples``, or the language model's exact NLL ("" for none)."""
    k = iw_samples_for(model, n_samples)
    if not k:
        return ""
    return "the exact NLL (a language model: no sampling)" if getattr(model, "latent_dim", None) == 0 \
        else f"IW-NLL with K = {k} samples"


def iw_log_weights(model: Any, batch: Any, posterior: Any, n_samples: int,
                   max_tokens: Optional[int] = None) -> torch.Tensor:
    """Log importance weights [K, B] of one batch whose posterior is given:
    w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), z_k ~ q(z|x). Only log-densities are used, so
    any posterior / prior pair works.

    All sentences of the batch are scored together: the decoder takes S samples × B sentences
    per call with S·B·T ≤ ``max_tokens`` (S ≥ 1, so a single sample of the batch, B·T, is the
    floor), which bounds its memory whatever K (``None``: :func:`default_max_tokens` of the
    batch's device); K need not be a multiple of S. Samples come from
    :func:`draw_samples`, so the estimate does not depend on the chunking. Only the [K, B] weights
    are kept whole. A model without latent space (``latent_dim == 0``, the LM) has K identical
    weights, so one sample gives its exact log p(x).
    """
    if n_samples < 1:
        raise TextVAEError(f"iw_nll: n_samples must be >= 1, got {n_samples}")
    n_samples = iw_samples_for(model, n_samples)
    max_tokens = default_max_tokens(batch.tokens.device) if max_tokens is None else max_tokens
    chunk = max(1, max_tokens // (len(batch) * batch.tokens.shape[1]))
    # [K, B], allocated once: a list of small per-chunk results kept to the end would sit between
    # the freed large blocks of successive chunks and fragment the heap (resident size then grew
    # with K at a fixed budget)
    log_w: Optional[torch.Tensor] = None
    for start in range(0, n_samples, chunk):
        z, log_q = draw_samples(posterior, min(chunk, n_samples - start))  # [S, B, D], [S, B]
        w = model.log_likelihood(batch, z) + model.prior.log_prob(z) - log_q
        if log_w is None:
            log_w = w.new_empty(n_samples, len(batch))
        log_w[start:start + len(w)] = w
    return log_w


@dataclass
class IWEstimate:
    """The IW estimate of log p(x) of each sentence of a batch, and how many of its samples count."""

    log_p: torch.Tensor  # [B], logsumexp_k w_k − log K
    ess: torch.Tensor  # [B], Kish's effective sample size (Σ_k e^w_k)² / Σ_k e^2w_k, in [1, K]


def iw_estimate(log_w: torch.Tensor) -> IWEstimate:
    """log p̂(x) = logsumexp_k w_k − log K from log weights [K, B], and the weights' effective
    sample size. A small ESS (a few of the K weights carry the sum) warns that the estimate's
    error is heavy-tailed."""
    wide = log_w.double()  # [K, B]
    ess = torch.exp(2.0 * torch.logsumexp(wide, dim=0) - torch.logsumexp(2.0 * wide, dim=0))
    return IWEstimate(log_p=torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0]), ess=ess)


def iw_log_marginal(model: Any, batch: Any, posterior: Any, n_samples: int,
                    max_tokens: Optional[int] = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) [B] for one batch whose posterior is given:
    log p(x) ≈ logsumexp_k w_k − log K over the weights of :func:`iw_log_weights` (Burda et al.
    2016; the K = 500 protocol of He et al. 2019)."""
    return iw_batch(model, batch, posterior, n_samples, max_tokens).log_p


def iw_batch(model: Any, batch: Any, posterior: Any, n_samples: int,
             max_tokens: Optional[int] = None) -> IWEstimate:
    """:func:`iw_estimate` of one batch's :func:`iw_log_weights`."""
    return iw_estimate(iw_log_weights(model, batch, posterior, n_samples, max_tokens))


def iw_redraw_variance(model: Any, batch: Any, posterior: Any, first: torch.Tensor, n_samples: int,
                       max_tokens: Optional[int] = None) -> torch.Tensor:
    """(L − L')² / 2 [B] for the batch's IW estimates L = ``first`` and L' from a second,
    independent draw of the K samples: an unbiased estimate of each sentence's Var[log p̂(x)] over
    the draw, whatever the weights' tails. Reading it off one draw's K weights instead (the delta
    method, (K / ESS − 1) / (K − 1)) misses the tail that draw did not reach: on PTB's VAEs, with an
    ESS of ~15 of 500, that gave under half of it (benchmarks/iw_mc_error.py).

    The second draw comes from a fork of torch's RNG, so the main stream, and every later batch's
    samples, are as without it. The fork continues the main stream: it repeats the noise the next
    batch will draw, for other sentences, and is independent of this batch's first draw.
    """
    devices = [batch.tokens.device] if batch.tokens.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        second = iw_log_marginal(model, batch, posterior, n_samples, max_tokens)
    return (first.double() - second.double()) ** 2 / 2.0


class IWProgress:
    """The finished batches of an IW pass, kept in a file, so that a pass stopped part-way resumes at the
    batch where it stopped (a killed run's test report, long at K = 500).

    Per batch: its sentences' NLL and ESS, the redraw's variance when the batch was redrawn, its token
    counts (a resumed pass takes a batch from the file only if its counts are the same, and from the
    first that is not, computes the rest), and the random state after its draws. A resumed pass sets that
    state after each batch it takes from the file, so its draws from then on, and its figures, are those
    of a pass never stopped. The file is rewritten (atomically) after every batch and read only when its
    ``key`` is the caller's: the model's weights and whatever else decides the figures (K, the decoder
    budget, the precision, the batches), so a file left by another model or setting is not used.
    """

    def __init__(self, path: str | Path, key: str) -> None:
        self.path, self.key = Path(path), key
        self.batches = self._read()
        self.unwritable = False

    @staticmethod
    def key_of(weights_file: str | Path, **settings: Any) -> str:
        """A key from a weights file's digest and ``settings`` (values JSON can write, others as text)."""
        digest = hashlib.sha256(Path(weights_file).read_bytes()).hexdigest()
        return json.dumps({"weights_sha256": digest, **settings}, sort_keys=True, default=str)

    @staticmethod
    def batches_in(path: str | Path) -> int:
        """How many finished batches the file at ``path`` holds, whatever its key (0: none, or no such file)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return int((f.metadata() or {}).get("batches", 0))
        except Exception:  # absent, foreign or garbled
            return 0

    def _read(self) -> list[dict[str, torch.Tensor]]:
        from safetensors import safe_open

        if not self.path.is_file():
            return []
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("key") != self.key:
                    return []
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception:  # a foreign or garbled file: the pass starts over (and overwrites it)
            return []
        batches: list[dict[str, torch.Tensor]] = [{} for _ in range(int(meta["batches"]))]
        for name, value in tensors.items():
            index, field = name.split(".", 1)
            batches[int(index)][field] = value
        return batches

    def take(self, index: int, n_tokens: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
        """Batch ``index``'s figures if the file has them for these token counts; else None, and the
        file's later batches are dropped."""
        saved = self.batches[index].get("n_tokens") if index < len(self.batches) else None
        if saved is not None and torch.equal(saved, n_tokens.cpu()):
            return self.batches[index]
        del self.batches[index:]
        return None

    def put(self, index: int, figures: dict[str, torch.Tensor]) -> None:
        """Keep batch ``index``'s figures (CPU tensors), in memory and in the file. A file that cannot be
        written (a full disk) costs the pass only its resumability: a warning, and no more writes."""
        self.batches[index:] = [figures]
        if self.unwritable:
            return
        tensors = {f"{i}.{name}": value.contiguous() for i, batch in enumerate(self.batches)
                   for name, value in batch.items()}
        try:
            write_safetensors(self.path, tensors, {"key": self.key, "batches": str(len(self.batches))})
        except Exception as e:
            self.unwritable = True
            log.warning("cannot keep the IW pass's progress in %s (%s): the pass goes on, but if it is "
                        "stopped it starts over", self.path, str(e).splitlines()[0] if str(e) else type(e).__name__)


class IWAccumulator:
    """Collects the IW estimates of a pass over batches into an :class:`IWResult`.

    The NLL's Monte Carlo standard error: batches ``check_every // 2``, ``+ check_every``, ... are
    estimated a second time (:func:`iw_redraw_variance`), and with v̄ the mean variance of those
    sentences the corpus mean's se is √(v̄ / N) (the N sentences' draws are independent). At the
    default 10 that is one extra IW pass over a tenth of the set. Evaluation order is by length,
    so the redrawn batches sit in the middle of each run of ``check_every``, a systematic sample of
    the lengths; one starting at the first batch would lean to the shortest sentences. The first
    batch is redrawn too, and counts only in a pass too short to reach the middle one.
    The language model's estimate is exact: se 0, no second draw.

    ``progress``: batches finished by an earlier, stopped pass are taken from it (:class:`IWProgress`),
    and each batch computed is added to it.
    """

    def __init__(self, check_every: int = IW_CHECK_EVERY, progress: Optional[IWProgress] = None) -> None:
        self.check_every = check_every
        self.progress = progress
        self.corpus = CorpusAccumulator()
        self.checked = CorpusAccumulator()
        self.first = CorpusAccumulator()  # the first batch's redraw: the fallback of a short pass
        self.nll: list[torch.Tensor] = []
        self.ess: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []
        self.n_samples = 0

    def add(self, model: Any, batch: Any, posterior: Any, n_samples: int, max_tokens: Optional[int] = None) -> None:
        exact = getattr(model, "latent_dim", None) == 0  # its one sample (iw_samples_for) is exact
        index, device = len(self.nll), batch.tokens.device
        done = None if self.progress is None else self.progress.take(index, batch.n_tokens)
        if done is not None:
            figures = {k: v.to(device) for k, v in done.items() if k in ("nll", "ess", "var")}
            set_rng_state({k[len("rng_"):]: v for k, v in done.items() if k.startswith("rng_")}, device)
        else:
            estimate = iw_batch(model, batch, posterior, n_samples, max_tokens)
            figures = {"nll": -estimate.log_p, "ess": estimate.ess}
            if not exact and (index == 0 or index % self.check_every == self.check_every // 2):
                figures["var"] = iw_redraw_variance(model, batch, posterior, estimate.log_p, n_samples, max_tokens)
            if self.progress is not None:
                self.progress.put(index, {**{k: v.cpu() for k, v in figures.items()},
                                          "n_tokens": batch.n_tokens.cpu(),
                                          **{f"rng_{k}": v for k, v in rng_state(device).items()}})
        if "var" in figures:
            fallback = index == 0 and self.check_every > 1
            (self.first if fallback else self.checked).add(batch.n_tokens, var=figures["var"])
        self.corpus.add(batch.n_tokens, nll=figures["nll"], ess=figures["ess"])
        self.nll.append(figures["nll"])
        self.ess.append(figures["ess"])
        self.counts.append(batch.n_tokens)
        self.n_samples = 1 if exact else n_samples

    def result(self) -> IWResult:
        if not self.nll:
            raise TextVAEError("iw_nll: no batches to evaluate")
        c = self.corpus
        checked = self.checked if self.checked.n_sentences else self.first
        n_checked = checked.n_sentences
        se = math.sqrt(checked.mean("var") / c.n_sentences) if n_checked else 0.0
        return IWResult(nll=torch.cat(self.nll), ess=torch.cat(self.ess), n_tokens=torch.cat(self.counts),
                        n_samples=self.n_samples, nll_mean=c.mean("nll"), nll_mc_se=se, se_sentences=n_checked,
                        ess_mean=c.mean("ess"), ppl=c.ppl("nll"))


def elbo_batch(model: Any, batch: Any, posterior: Any, z: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """ELBO terms of one batch at β = 1 with one given sample z [1, B, D].

    Returns rec [B] = −log p(x|z) (summed token cross-entropy), KL [B] and the per-dimension
    KL [B, D]. KL is ``posterior.kl(prior)`` summed over dimensions when analytic; otherwise the
    one-sample estimate log q(z|x) − log p(z) with the same z, and the per-dimension KL is ``None``.
    """
    rec = -model.log_likelihood(batch, z)[0]
    kl, analytic = kl_terms(posterior, model.prior, z[0])
    return rec, kl.sum(-1), kl if analytic else None


class ElboRedraw:
    """The Monte Carlo standard error of the one-sample −ELBO over a pass (and of its KL, where that is the
    one-sample estimate log q(z|x) − log p(z): a flow prior or posterior).

    Each sentence's terms are drawn twice more, from a stream of the accumulator's own (the pass's own draws,
    and so every other figure, are as without it). With x', x'' the two draws of sentence b,
    v_b = (x' − x'')² / 2 is an unbiased estimate of the variance of one draw, and the se of the corpus mean of
    N independent one-draw terms is √(Σ_b v_b) / N.
    """

    SEED = 20261208  # the redraws' stream, apart from the evaluation seed's

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.SEED)
        self.variances = CorpusAccumulator()  # each sentence's v_b, of the -ELBO and of the KL
        self.sampled_kl = False

    def add(self, model: Any, batch: Any, posterior: Any) -> None:
        # a copy draws: a flow posterior remembers log q of its last sample, which the pass's other figures
        # (the MI's log q(z|x) of the pass's own z) read instead of inverting the flow
        posterior, draws = copy.copy(posterior), []
        with seeded(self.generator):
            for _ in range(2):  # one rsample(1) per draw: a flow posterior's log q is that tensor's
                draws.append(elbo_batch(model, batch, posterior, posterior.rsample(1)))
        (rec1, kl1, dims1), (rec2, kl2, _) = draws
        self.sampled_kl = self.sampled_kl or dims1 is None
        self.variances.add(batch.n_tokens, neg_elbo=((rec1 + kl1) - (rec2 + kl2)).double().square() / 2,
                           kl=(kl1 - kl2).double().square() / 2)

    def summary(self) -> dict[str, float]:
        v = self.variances
        if not v.n_sentences:
            raise TextVAEError("elbo redraw: no batches to evaluate")
        # √(Σ_b v_b) / N = √(mean_b v_b / N), as the IW-NLL's se (IWAccumulator)
        se = {"neg_elbo_mc_se": math.sqrt(v.mean("neg_elbo") / v.n_sentences)}
        if self.sampled_kl:  # an analytic KL has no Monte Carlo error
            se["kl_mc_se"] = math.sqrt(v.mean("kl") / v.n_sentences)
        return se


def iw_nll(model: Any, batches: Batches, n_samples: int = 500,
           max_tokens: Optional[int] = None,
           generator: Optional[torch.Generator] = None, check_every: int = IW_CHECK_EVERY) -> IWResult:
    """Importance-weighted NLL −log p(x) of every sentence, and IW-PPL (see :func:`iw_log_marginal`),
    with the NLL's Monte Carlo standard error from a second draw of one batch in ``check_every``
    (:class:`IWAccumulator`).

    The model is put in eval mode (dropout off) under ``torch.no_grad`` and its modes restored
    afterwards; the encoder runs once per batch. ``generator`` seeds the samples (the caller's
    global RNG is left untouched); ``None`` draws from the global RNG.
    """
    acc = IWAccumulator(check_every)
    with eval_mode(model), seeded(generator):
        for batch in iterate(batches):
            acc.add(model, batch, model.encode(batch), n_samples, max_tokens)
    return acc.result()


def elbo_terms(model: Any, batches: Batches,
               generator: Optional[torch.Generator] = None) -> ElboResult:
    """ELBO figures as the literature reports them: one z ~ q(z|x) per sentence, β = 1 (never an
    annealed weight), rec = summed token cross-entropy, KL analytic where available (see
    :func:`elbo_batch`), −ELBO = rec + KL, ELBO-PPL = exp(Σ (rec + KL) / Σ tokens).
    Eval mode, no gradients, seeding as in :func:`iw_nll`.
    """
    acc = ElboAccumulator()
    with eval_mode(model), seeded(generator):
        for batch in iterate(batches):
            posterior = model.encode(batch)
            acc.add(batch.n_tokens, *elbo_batch(model, batch, posterior, posterior.rsample(1)))
    return acc.result()


class ElboAccumulator:
    """Collects :func:`elbo_batch` outputs over batches into an :class:`ElboResult`."""

    def __init__(self) -> None:
        self.corpus = CorpusAccumulator()
        self.rec: list[torch.Tensor] = []
        self.kl: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []
        self.kl_dims_sum: Optional[torch.Tensor] = None  # [D], Σ over sentences
        self.analytic = True

    def add(self, n_tokens: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor,
            kl_dims: Optional[torch.Tensor]) -> None:
        self.corpus.add(n_tokens, rec=rec, kl=kl, neg_elbo=rec + kl)
        self.rec.append(rec)
        self.kl.append(kl)
        self.counts.append(n_tokens)
        if kl_dims is None:
            self.analytic = False
        elif self.analytic:
            total = kl_dims.double().sum(0)
            self.kl_dims_sum = total if self.kl_dims_sum is None else self.kl_dims_sum + total

    def result(self) -> ElboResult:
        if not self.rec:
            raise TextVAEError("elbo_terms: no batches to evaluate")
        c = self.corpus
        kl_per_dim = self.kl_dims_sum / c.n_sentences if self.analytic else None
        return ElboResult(rec=torch.cat(self.rec), kl=torch.cat(self.kl),
                          n_tokens=torch.cat(self.counts), kl_per_dim=kl_per_dim,
                          rec_mean=c.mean("rec"), kl_mean=c.mean("kl"),
                          neg_elbo=c.mean("neg_elbo"), elbo_ppl=c.ppl("neg_elbo"))
