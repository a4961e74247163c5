"""Synthetic corpora whose true log p(x) and true I(x; latent) are known.

Two generative processes over a small vocabulary of pronounceable nonsense words ("ka", "mo", ...),
both first-order Markov chains whose parameters depend on a latent variable:

* ``synthetic`` (:class:`ClassMarkov`): a class c ~ Cat(pi), K classes, each with its own initial
  distribution and transition matrix. Exact: log p(x) = logsumexp_c [log pi_c + log p(x|c)], the
  posterior p(c|x), and I(x;c) = H(c) - E_x H(c|x) (Monte Carlo over x, or exact enumeration for
  tiny configurations).
* ``synthetic_z`` (:class:`ContinuousZMarkov`): z ~ N(0, I_2) and
  logits(next | prev, z) = A[prev] + W[prev] @ z. log p(x) = log ∫ N(z; 0, I) p(x|z) dz by
  adaptive tensor-product Gauss-Hermite quadrature; I(x;z) = E_{z,x} [log p(x|z) - log p(x)] by Monte Carlo.

A sentence is w_1 .. w_n with 1 <= n <= L. Both chains start in a START state (no empty sentence)
and emit either a word or the end event, which is the ``</s>`` token models predict, so
p(x|latent) includes the end event. After L words the end event has probability 1 and contributes
log 1 = 0, which keeps the likelihood exact under the length cap.

Everything is a deterministic function of an integer seed: independent numpy streams (spawned from
``SeedSequence(seed)``) draw the parameters, each split, and the Monte Carlo sample, so changing
one split's size does not change the others.

``generate_corpus`` writes ``train.txt`` / ``valid.txt`` / ``test.txt`` and ``truth.json`` (true
per-sentence log p(x), true NLL / PPL per split, true MI with its standard error) and is a no-op
when the folder already holds the same corpus.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from textvae.data.special import SPECIAL_TOKENS
from textvae.errors import TextVAEError
from textvae.reduction import corpus_nll, sentence_tokens
from textvae.registry import Registry

SPLITS = ("train", "valid", "test")
TRUTH_FILE = "truth.json"
# Streams spawned from SeedSequence(seed): model parameters, the three splits, the MI sample.
_STREAM = {"params": 0, "train": 1, "valid": 2, "test": 3, "mi": 4}
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
# Above this many sentences, exact enumeration refuses (memory is ~ count * (L + 1) * 8 bytes).
_MAX_ENUMERATED = 2_000_000
# Sentences per block in the quadrature of synthetic_z.
_BLOCK = 256


def _stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(len(_STREAM))[_STREAM[name]])


def make_vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """``size`` distinct pronounceable words: CV syllables ("ka"), then CVCV words ("kamo")."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    pool = syllables if size <= len(syllables) else syllables + [a + b for a in syllables for b in syllables]
    if not 1 <= size <= len(pool):
        raise TextVAEError(f"synthetic vocab_size must be in 1..{len(pool)}, got {size}")
    words = [pool[i] for i in rng.choice(len(pool), size=size, replace=False)]
    assert not set(words) & set(SPECIAL_TOKENS)
    return words


def enumerate_sentences(vocab_size: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every sentence of 1..L words as (ids [S, L] zero-padded, lengths [S]), S = Σ_n V^n."""
    count = sum(vocab_size**n for n in range(1, max_length + 1))
    if count > _MAX_ENUMERATED:
        raise TextVAEError(f"cannot enumerate {count} sentences (V={vocab_size}, L={max_length}); "
                           f"the limit is {_MAX_ENUMERATED}")
    ids, lengths = [], []
    for n in range(1, max_length + 1):
        # All V^n word sequences of length n, lexicographic: the digits of 0 .. V^n - 1 in base V.
        grid = np.indices((vocab_size,) * n).reshape(n, -1).T
        ids.append(np.pad(grid, ((0, 0), (0, max_length - n))))
        lengths.append(np.full(len(grid), n))
    return np.concatenate(ids), np.concatenate(lengths)


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf slice gives -inf, not nan
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


class MarkovSource:
    """What both processes share: the vocabulary, the state layout, sampling and sentence encoding.

    States: words are 0..V-1; ``START = V`` is the previous state of the first word and
    ``END = V`` is the end event among the next states. A step (prev, next) has flat index
    ``prev * (V + 1) + next`` in a [V + 1, V + 1] table of log-probabilities; index ``P = (V + 1)^2``
    is padding (the forced end after L words, and the steps after a sentence ended).
    """

    Params: type

    def __init__(self, params: Any, seed: int, words: list[str]):
        self.params = params
        self.seed = seed
        self.words = words
        self.V = params.vocab_size
        self.L = params.max_length
        if self.L < 1:
            raise TextVAEError(f"synthetic max_length must be >= 1, got {self.L}")
        self.START = self.END = self.V
        self.P = (self.V + 1) ** 2
        self.word_index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, seed: int = 0, **params: Any) -> "MarkovSource":
        names = [f.name for f in fields(cls.Params)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise TextVAEError(f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {names}")
        return cls(cls.Params(**params), seed)

    def rng(self, stream: str) -> np.random.Generator:
        """The generator of one named stream (``params``, a split, ``mi``) of this seed."""
        return _stream(self.seed, stream)

    # --- subclass interface -------------------------------------------------------------------
    def sample_latent(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def step_probs(self, prev: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """p(next | prev, latent) [N, V + 1] for states prev [N] and latents [N, ...]."""
        raise NotImplementedError

    def log_prob_ids(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """True log p(x) [N] of encoded sentences (ids [N, L], lengths [N])."""
        raise NotImplementedError

    def true_log_prob(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, Optional[float]]:
        """(log p(x) [N], the largest error bound of its computation, or None where it is exact)."""
        return self.log_prob_ids(ids, lengths), None

    def accuracy_record(self, errors: dict[str, float]) -> dict[str, Any]:
        """What truth.json says of how accurate its log p(x) is, from each split's error bound (none
        for exact computations)."""
        return {}

    def mutual_information(self, n_samples: int, rng: np.random.Generator) -> tuple[float, float]:
        """Monte Carlo estimate of I(x; latent) in nats and its standard error."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n sentences: (ids [n, L] zero-padded, lengths [n], latents [n, ...]).

        All sentences advance together; a step draws next ~ p(.|prev, latent) by inverse CDF.
        """
        latent = self.sample_latent(n, rng)
        ids = np.zeros((n, self.L), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        prev = np.full(n, self.START)
        alive = np.ones(n, dtype=bool)
        for t in range(self.L):
            rows = np.flatnonzero(alive)
            cdf = np.cumsum(self.step_probs(prev[rows], latent[rows]), axis=1)
            u = rng.random(len(rows)) * cdf[:, -1]
            nxt = np.minimum((u[:, None] >= cdf).sum(axis=1), self.V)
            ended = nxt == self.END
            alive[rows[ended]] = False
            going = rows[~ended]
            ids[going, t] = nxt[~ended]
            lengths[going] = t + 1
            prev[going] = nxt[~ended]
        return ids, lengths, latent

    def steps(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Flat step indices [N, L + 1]: (START, w1), (w1, w2), ..., (wn, END) if n < L, then P."""
        n, L, V = len(ids), self.L, self.V
        prev = np.concatenate([np.full((n, 1), self.START), ids], axis=1)  # [N, L + 1]
        t = np.arange(L + 1)[None, :]
        nxt = np.concatenate([ids, np.zeros((n, 1), dtype=ids.dtype)], axis=1)
        nxt = np.where(t == lengths[:, None], self.END, nxt)
        flat = prev * (V + 1) + nxt
        # Steps past the end, and the end after L words (probability 1), contribute log 1 = 0.
        pad = (t > lengths[:, None]) | ((t == lengths[:, None]) & (lengths[:, None] == L))
        return np.where(pad, self.P, flat)

    def step_counts(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """How often each of the P steps occurs in each sentence [N, P] (its sufficient statistic)."""
        flat = self.steps(ids, lengths)
        row = np.repeat(np.arange(len(ids)), flat.shape[1])
        counts = np.bincount(row * (self.P + 1) + flat.ravel(), minlength=len(ids) * (self.P + 1))
        return counts.reshape(len(ids), self.P + 1)[:, : self.P].astype(np.float64)

    def encode(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Word lists -> (ids [N, L], lengths [N], valid [N]); invalid = empty, too long or unknown word."""
        ids = np.zeros((len(sentences), self.L), dtype=np.int64)
        lengths = np.ones(len(sentences), dtype=np.int64)
        valid = np.zeros(len(sentences), dtype=bool)
        for i, words in enumerate(sentences):
            if not 1 <= len(words) <= self.L or any(w not in self.word_index for w in words):
                continue
            ids[i, : len(words)] = [self.word_index[w] for w in words]
            lengths[i] = len(words)
            valid[i] = True
        return ids, lengths, valid

    def log_prob(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """True log p(x) in nats [N] of word lists; -inf for sentences the process cannot emit."""
        ids, lengths, valid = self.encode(sentences)
        out = np.full(len(sentences), -np.inf)
        if valid.any():
            out[valid] = self.log_prob_ids(ids[valid], lengths[valid])
        return out

    def lines(self, ids: np.ndarray, lengths: np.ndarray) -> list[str]:
        return [" ".join(self.words[j] for j in row[:n]) for row, n in zip(ids, lengths)]


@dataclass(frozen=True)
class ClassMarkovParams:
    """K classes, each a Markov chain over V words with an end event; at most L words.

    prior_concentration: None gives a uniform pi; a number c draws pi ~ Dirichlet(c · 1_K).
    transition_concentration: rows of the initial and word-to-word distributions are drawn
        ~ Dirichlet(a · 1_V); small a gives peaked rows, so classes are easy to tell apart.
    end_prob: mean of p(end | word), drawn per class and word ~ Beta(20 e, 20 (1 - e));
        mean length ≈ (1 - (1 - e)^L) / e (10.1 words for e = 0.08, L = 20).
    """

    vocab_size: int = 24
    num_classes: int = 4
    max_length: int = 20
    prior_concentration: float | None = None
    transition_concentration: float = 0.1
    end_prob: float = 0.08


class ClassMarkov(MarkovSource):
    """c ~ Cat(pi); x | c ~ the Markov chain ``probs[c]``.

    ``probs`` [K, V + 1, V + 1]: row START is the initial distribution (end impossible), row w is
    p(next | w, c) over V words and the end event. Each class draws its own rows, so classes differ.
    """

    Params = ClassMarkovParams

    def __init__(self, params: ClassMarkovParams, seed: int = 0):
        rng = _stream(seed, "params")
        super().__init__(params, seed, make_vocabulary(params.vocab_size, rng))
        K, V = params.num_classes, params.vocab_size
        e = params.end_prob
        if K < 1 or not 0 < e < 1 or params.transition_concentration <= 0:
            raise TextVAEError(f"synthetic needs num_classes >= 1, 0 < end_prob < 1 and "
                               f"transition_concentration > 0; got {params}")
        c = params.prior_concentration
        self.pi = np.full(K, 1.0 / K) if c is None else rng.dirichlet(np.full(K, float(c)))
        rows = rng.dirichlet(np.full(V, params.transition_concentration), size=(K, V + 1))  # [K, V+1, V]
        end = np.zeros((K, V + 1))
        end[:, :V] = rng.beta(20 * e, 20 * (1 - e), size=(K, V))
        self.probs = np.concatenate([rows * (1 - end)[..., None], end[..., None]], axis=2)
        with np.errstate(divide="ignore"):
            self.log_pi = np.log(self.pi)
            # [K, P + 1]: the last column is the padding step (log 1 = 0).
            self.log_steps = np.concatenate([np.log(self.probs).reshape(K, -1), np.zeros((K, 1))], axis=1)

    def prior_entropy(self) -> float:
        """H(c) in nats."""
        p = self.pi[self.pi > 0]
        return float(-(p * np.log(p)).sum())

    def sample_latent(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.pi), size=n, p=self.pi)

    def step_probs(self, prev: np.ndarray, latent: np.ndarray) -> np.ndarray:
        return self.probs[latent, prev]

    def class_log_likelihood(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """log p(x | c) [N, K], end event included."""
        return self.log_steps[:, self.steps(ids, lengths)].sum(axis=-1).T

    def _log_joint(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.log_pi + self.class_log_likelihood(ids, lengths)  # [N, K]

    def log_prob_ids(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return _logsumexp(self._log_joint(ids, lengths), axis=1)

    def log_posterior_ids(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """log p(c | x) [N, K] (nan for sentences of probability 0)."""
        joint = self._log_joint(ids, lengths)
        return joint - _logsumexp(joint, axis=1)[:, None]

    def posterior(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """p(c | x) [N, K] of word lists (nan rows for sentences the process cannot emit)."""
        ids, lengths, valid = self.encode(sentences)
        out = np.full((len(sentences), len(self.pi)), np.nan)
        if valid.any():
            out[valid] = np.exp(self.log_posterior_ids(ids[valid], lengths[valid]))
        return out

    def _conditional_entropy(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """H(c | x) [N] in nats."""
        log_post = self.log_posterior_ids(ids, lengths)
        post = np.exp(log_post)
        return -np.where(post > 0, post * log_post, 0.0).sum(axis=1)

    def mutual_information(self, n_samples: int, rng: np.random.Generator) -> tuple[float, float]:
        """I(x;c) = H(c) - E_x H(c|x): averaging H(c|x) (not log p(c|x)/p(c) at the sampled c)
        integrates c out exactly, which lowers the variance."""
        ids, lengths, _ = self.sample(n_samples, rng)
        mean, se = _mean_and_stderr(self._conditional_entropy(ids, lengths))
        return self.prior_entropy() - mean, se

    def exact_mutual_information(self) -> float:
        """I(x;c) by summing over every sentence of 1..L words (tiny V and L only)."""
        ids, lengths = enumerate_sentences(self.V, self.L)
        log_px = self.log_prob_ids(ids, lengths)
        keep = np.isfinite(log_px)
        h = self._conditional_entropy(ids[keep], lengths[keep])
        return self.prior_entropy() - float((np.exp(log_px[keep]) * h).sum())


@dataclass(frozen=True)
class ContinuousZParams:
    """z ~ N(0, I_2); logits(next | prev, z) = A[prev] + W[prev] @ z over V words and the end event.

    logit_scale: A[prev, word] ~ N(0, logit_scale^2) (peakiness of the chain at z = 0).
    coupling: W[prev, word] ~ N(0, coupling^2 I_2); W[., end] = 0. Sets how much z matters.
    end_prob: A[prev, end] is set so that the prior-averaged log-odds of end against a word are
        logit(end_prob).
    quadrature_nodes / check_nodes: Gauss-Hermite nodes per axis for log p(x), and a larger count
        used only to report the quadrature error.
    """

    vocab_size: int = 24
    max_length: int = 20
    logit_scale: float = 1.5
    coupling: float = 1.5
    end_prob: float = 0.08
    quadrature_nodes: int = 16
    check_nodes: int = 24


def _tensor_grid(x: np.ndarray) -> np.ndarray:
    """All pairs (x_i, x_j) [n^2, 2], i-major."""
    return np.stack(np.meshgrid(x, x, indexing="ij"), axis=-1).reshape(-1, 2)


@dataclass
class _SentenceStats:
    """log p(x|z) = const + b · z - Σ_p leave_p · logsumexp_v(A[p, v] + W[p, v] · z).

    const [N] = Σ_steps A[prev, next]; b [N, 2] = Σ_steps W[prev, next]. The normalisers depend on
    the previous state only, so only the states a sentence leaves matter: they are listed as
    pairs (sentence [k], state [k]) with their counts leave [k], sorted by sentence; starts [N] is
    each sentence's first pair (for ``np.add.reduceat``).
    """

    const: np.ndarray
    b: np.ndarray
    sentence: np.ndarray
    state: np.ndarray
    leave: np.ndarray
    starts: np.ndarray


class ContinuousZMarkov(MarkovSource):
    """x | z ~ Markov chain with z-dependent logits; ``A`` [V + 1, V + 1], ``W`` [V + 1, V + 1, 2].

    log p(x) uses adaptive Gauss-Hermite quadrature (Liu & Pierce 1994): the n x n tensor grid is
    centred on the posterior mode m(x) and scaled by the Cholesky factor S(x) of the Laplace
    covariance, z = m + sqrt(2) S t. A fixed grid around the prior mean would need hundreds of
    nodes per axis: p(z|x) is far narrower than the prior (that is what I(x;z) of ~2 nats
    means) and may sit where the fixed nodes are sparse. log p(x|z) is concave in z (linear minus
    log-sum-exps), so the posterior is log-concave and unimodal, and Newton's method finds m.
    """

    Params = ContinuousZParams
    latent_dim = 2

    def __init__(self, params: ContinuousZParams, seed: int = 0):
        rng = _stream(seed, "params")
        super().__init__(params, seed, make_vocabulary(params.vocab_size, rng))
        V, e = params.vocab_size, params.end_prob
        if not 0 < e < 1:
            raise TextVAEError(f"synthetic end_prob must be in (0, 1), got {e}")
        if min(params.quadrature_nodes, params.check_nodes) < 1:
            raise TextVAEError("synthetic quadrature_nodes and check_nodes must be >= 1")
        A = np.zeros((V + 1, V + 1))
        A[:, :V] = rng.normal(0.0, params.logit_scale, size=(V + 1, V))
        W = np.zeros((V + 1, V + 1, self.latent_dim))
        W[:, :V] = rng.normal(0.0, params.coupling, size=(V + 1, V, self.latent_dim))
        # Log-odds of end against any word, averaged over the prior, = logit(e), i.e.
        # A_end = logit(e) + E_z logsumexp_w(A_w + W_w z). Calibrating at z = 0 instead would make
        # sentences longer as the coupling grows (the words' logsumexp is convex in z).
        # Gauss-Hermite on R^2: E f(z) = Σ_ij w_i w_j f(sqrt(2) (t_i, t_j)) / pi.
        t, w = np.polynomial.hermite.hermgauss(16)
        z = math.sqrt(2) * _tensor_grid(t)
        lse = _logsumexp(A[None, :, :V] + np.einsum("pvd,qd->qpv", W[:, :V], z), axis=2)  # [Q, V+1]
        A[:, V] = math.log(e / (1 - e)) + np.outer(w, w).ravel() @ lse / math.pi
        A[self.START, self.END] = -np.inf  # no empty sentence
        self.A, self.W = A, W
        self.WW = (W[..., :, None] * W[..., None, :]).reshape(V + 1, V + 1, 4)  # outer products W W^T

    def prior_entropy(self) -> float:
        """Differential entropy of N(0, I_2) in nats: log(2 pi e)."""
        return 0.5 * self.latent_dim * math.log(2 * math.pi * math.e)

    def sample_latent(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, self.latent_dim))

    def step_probs(self, prev: np.ndarray, latent: np.ndarray) -> np.ndarray:
        logits = self.A[prev] + np.einsum("nvd,nd->nv", self.W[prev], latent)
        return np.exp(_log_softmax(logits))

    def stats(self, ids: np.ndarray, lengths: np.ndarray) -> _SentenceStats:
        counts = self.step_counts(ids, lengths)  # [N, P]
        A = np.where(np.isfinite(self.A), self.A, 0.0)  # START -> END is never counted; avoid 0 * -inf
        leave = counts.reshape(len(ids), self.V + 1, self.V + 1).sum(axis=2)
        sentence, state = np.nonzero(leave)  # sorted by sentence; every sentence leaves START
        return _SentenceStats(
            const=counts @ A.ravel(),
            b=counts @ self.W.reshape(self.P, self.latent_dim),
            sentence=sentence,
            state=state,
            leave=leave[sentence, state],
            starts=np.flatnonzero(np.r_[True, sentence[1:] != sentence[:-1]]),
        )

    def log_likelihood_at(self, st: _SentenceStats, z: np.ndarray) -> np.ndarray:
        """log p(x_n | z_nq) [N, Q] for any z [N, Q, 2]."""
        W = self.W[st.state].transpose(0, 2, 1)  # [pairs, 2, V+1]
        logits = self.A[st.state][:, None, :] + np.matmul(z[st.sentence], W)  # [pairs, Q, V+1]
        norm = np.add.reduceat(st.leave[:, None] * _logsumexp(logits, axis=2), st.starts, axis=0)
        return st.const[:, None] + np.matmul(z, st.b[:, :, None])[..., 0] - norm

    def _log_likelihood_on_grid(
        self, st: _SentenceStats, m: np.ndarray, S: np.ndarray, t: np.ndarray, z: np.ndarray
    ) -> np.ndarray:
        """log p(x_n | z_nq) [N, n^2] at the grid z_nij = m_n + sqrt(2) S_n (t_i, t_j) [N, n^2, 2]
        built from t [n] (i-major order).

        On a tensor grid each normaliser is separable: with a_v the logits at m and
        (alpha_v, beta_v) = sqrt(2) S^T W_v, Σ_v exp(a_v + alpha_v t_i + beta_v t_j) = [E1^T E2]_ij,
        E1[v, i] = exp(a_v + alpha_v t_i), E2[v, j] = exp(beta_v t_j): one [n, V+1] @ [V+1, n]
        product per (sentence, state) instead of n^2 (V+1) exponentials.
        """
        n = st.sentence
        W = self.W[st.state]  # [pairs, V+1, 2]
        a = self.A[st.state] + np.matmul(W, m[n][:, :, None])[..., 0]  # [pairs, V+1]
        ab = math.sqrt(2) * np.matmul(W, S[n])  # [pairs, V+1, 2]
        x1 = a[:, :, None] + ab[:, :, :1] * t  # [pairs, V+1, n]
        x2 = ab[:, :, 1:] * t
        s1, s2 = x1.max(axis=1, keepdims=True), x2.max(axis=1, keepdims=True)  # keep exp in range
        sums = np.matmul(np.exp(x1 - s1).transpose(0, 2, 1), np.exp(x2 - s2))  # [pairs, n, n]
        lse = (s1.transpose(0, 2, 1) + s2 + np.log(sums)).reshape(len(n), -1)  # [pairs, n^2]
        norm = np.add.reduceat(st.leave[:, None] * lse, st.starts, axis=0)
        return st.const[:, None] + np.matmul(z, st.b[:, :, None])[..., 0] - norm

    def conditional_log_likelihood(self, ids: np.ndarray, lengths: np.ndarray, z: np.ndarray) -> np.ndarray:
        """log p(x_i | z_i) [N] for one z per sentence, z [N, 2]."""
        return self.log_likelihood_at(self.stats(ids, lengths), z[:, None, :])[:, 0]

    def _newton_terms(self, st: _SentenceStats, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """log p(x, z) [N], its gradient [N, 2] and minus its Hessian [N, 2, 2] at z [N, 2].

        gradient = b - Σ_p leave_p E_{pi_p}[W_p] - z; -Hessian = Σ_p leave_p Cov_{pi_p}[W_p] + I,
        with pi_p = softmax(A_p + W_p z) over the next states.
        """
        W = self.W[st.state]  # [pairs, V+1, 2]
        logits = self.A[st.state] + np.matmul(W, z[st.sentence][:, :, None])[..., 0]  # [pairs, V+1]
        log_pi = _log_softmax(logits)
        lse = logits[:, 0] - log_pi[:, 0]
        pi = np.exp(log_pi)
        mean = np.matmul(pi[:, None, :], W)[:, 0]  # E_pi[W] [pairs, 2]
        second = np.matmul(pi[:, None, :], self.WW[st.state])[:, 0].reshape(-1, 2, 2)  # E_pi[W W^T]
        cov = second - mean[:, :, None] * mean[:, None, :]
        c = st.leave
        value = st.const + (st.b * z).sum(1) - np.add.reduceat(c * lse, st.starts)
        value -= 0.5 * (z**2).sum(1) + math.log(2 * math.pi)
        grad = st.b - np.add.reduceat(c[:, None] * mean, st.starts) - z
        neg_hess = np.add.reduceat(c[:, None, None] * cov, st.starts) + np.eye(self.latent_dim)
        return value, grad, neg_hess

    def posterior_mode(self, st: _SentenceStats, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Mode m [N, 2] of p(z|x) and the Cholesky factor [N, 2, 2] of (-Hessian of log p(x, z))^-1
        there: Newton's method, each step halved while it fails to increase log p(x, z)."""
        z = np.zeros((len(st.b), self.latent_dim))
        value, grad, neg_hess = self._newton_terms(st, z)
        for _ in range(max_iter):
            step = np.linalg.solve(neg_hess, grad[..., None])[..., 0]
            scale = np.ones(len(z))
            for _ in range(60):  # after 60 halvings the step is ~1e-18 of Newton's: take it
                new = self._newton_terms(st, z + scale[:, None] * step)
                worse = new[0] < value - 1e-12 * np.abs(value)
                if not worse.any():
                    break
                scale[worse] *= 0.5
            z = z + scale[:, None] * step
            value, grad, neg_hess = new
            if np.abs(scale[:, None] * step).max() < 1e-10:
                break
        return z, np.linalg.cholesky(np.linalg.inv(neg_hess))

    def quadrature_log_prob(self, ids: np.ndarray, lengths: np.ndarray, nodes: Sequence[int]) -> np.ndarray:
        """log p(x) = log ∫ p(x, z) dz [len(nodes), N] by adaptive Gauss-Hermite, n x n points for
        each n in ``nodes`` (the mode and scale are found once and shared).

        With z = m + sqrt(2) S t: ∫ p(x, z) dz = 2 det S ∫ exp(-|t|^2) [exp(|t|^2) p(x, z(t))] dt.
        """
        out = np.empty((len(nodes), len(ids)))
        for s in range(0, len(ids), _BLOCK):  # bounded memory: arrays are [pairs, n, n]
            st = self.stats(ids[s : s + _BLOCK], lengths[s : s + _BLOCK])
            m, S = self.posterior_mode(st)
            log_det = np.log(S[:, 0, 0] * S[:, 1, 1])
            for i, n in enumerate(nodes):
                t1, w1 = np.polynomial.hermite.hermgauss(n)
                t = _tensor_grid(t1)  # [n^2, 2]
                z = m[:, None, :] + math.sqrt(2) * np.matmul(t, S.transpose(0, 2, 1))  # [N, n^2, 2]
                log_prior = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
                log_w = _tensor_grid(np.log(w1)).sum(-1) + (t**2).sum(-1)
                log_f = log_w + self._log_likelihood_on_grid(st, m, S, t1, z) + log_prior
                out[i, s : s + _BLOCK] = math.log(2) + log_det + _logsumexp(log_f, axis=1)
        return out

    def log_prob_ids(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.quadrature_log_prob(ids, lengths, [self.params.quadrature_nodes])[0]

    def true_log_prob(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, Optional[float]]:
        """log p(x) by quadrature, and its largest change from the coarser grid to ``check_nodes``."""
        log_px, check = self.quadrature_log_prob(ids, lengths, [self.params.quadrature_nodes,
                                                                self.params.check_nodes])
        return log_px, float(np.abs(check - log_px).max())

    def accuracy_record(self, errors: dict[str, float]) -> dict[str, Any]:
        return {"quadrature": {"nodes": self.params.quadrature_nodes, "check_nodes": self.params.check_nodes,
                               "max_abs_diff": max(errors.values()), "max_abs_diff_per_split": errors}}

    def mutual_information(self, n_samples: int, rng: np.random.Generator) -> tuple[float, float]:
        """I(x;z) = E_{z,x} [log p(x|z) - log p(x)] over joint samples; log p(x) by quadrature."""
        ids, lengths, z = self.sample(n_samples, rng)
        gain = self.conditional_log_likelihood(ids, lengths, z) - self.log_prob_ids(ids, lengths)
        return _mean_and_stderr(gain)


SYNTHETIC_KINDS: Registry[type[MarkovSource]] = Registry("synthetic corpus", recipe="data.name: NAME",
                                                         supplied=("params", "seed"))
SYNTHETIC_KINDS.register("synthetic")(ClassMarkov)
SYNTHETIC_KINDS.register("synthetic_z")(ContinuousZMarkov)


def build_model(kind: str, seed: int = 0, **params: Any) -> MarkovSource:
    """The generative process of a synthetic corpus (``kind`` in ``SYNTHETIC_KINDS``)."""
    return SYNTHETIC_KINDS.get(kind).build(seed, **params)


def model_from_truth(truth: dict) -> MarkovSource:
    """Rebuild the process that generated a corpus from its ``truth.json`` contents."""
    return build_model(truth["kind"], truth["seed"], **truth["params"])


def load_truth(out_dir: Path | str) -> dict:
    path = Path(out_dir) / TRUTH_FILE
    if not path.is_file():
        raise TextVAEError(f"no synthetic ground truth at {path}; run generate_corpus first")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate_corpus(
    kind: str,
    out_dir: Path | str,
    seed: int = 0,
    n_train: int = 10000,
    n_valid: int = 1000,
    n_test: int = 1000,
    mi_samples: int = 20000,
    **params: Any,
) -> Path:
    """Write ``{train,valid,test}.txt`` and ``truth.json`` into ``out_dir``; return ``out_dir``.

    truth.json: kind, params (all of them, defaults filled in), seed, sizes; per split the true
    log p(x) of each sentence (nats), the mean NLL per sentence, the token count (words + 1 per
    sentence, ``</s>`` counted) and PPL = exp(Σ NLL / Σ tokens); the true MI and its standard
    error from ``mi_samples`` fresh sentences; the prior entropy (H(c), or the differential
    entropy of N(0, I_2)); the latent of each sentence; for ``synthetic_z`` the quadrature error.
    Nothing is done when ``out_dir`` already holds a corpus with the same key.
    """
    out_dir = Path(out_dir)
    model = build_model(kind, seed, **params)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    if min(sizes.values()) < 1 or mi_samples < 2:
        raise TextVAEError(f"synthetic corpus sizes must be >= 1 and mi_samples >= 2, got {sizes}, {mi_samples}")
    # JSON round trip so that the key compares equal to what a previous run wrote.
    key = json.loads(json.dumps({"kind": kind, "params": asdict(model.params), "seed": seed,
                                 "sizes": sizes, "mi_samples": mi_samples}))
    if (out_dir / TRUTH_FILE).is_file() and all((out_dir / f"{s}.txt").is_file() for s in SPLITS):
        old = load_truth(out_dir)
        if {k: old.get(k) for k in key} == key:
            return out_dir

    truth: dict[str, Any] = dict(key, prior_entropy=model.prior_entropy(), splits={})
    errors: dict[str, float] = {}  # each split's error bound of log p(x), where it is computed approximately
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        ids, lengths, latent = model.sample(sizes[split], model.rng(split))
        log_px, error = model.true_log_prob(ids, lengths)
        if error is not None:
            errors[split] = error
        tokens = sentence_tokens(lengths)
        nll, ppl = corpus_nll(-log_px, tokens)
        truth["splits"][split] = {
            "n_sentences": len(lengths),
            "n_tokens": int(tokens.sum()),
            "nll": nll,
            "ppl": ppl,
            "log_px": log_px.tolist(),
            "latent": latent.tolist(),
        }
        _write_atomic(out_dir / f"{split}.txt", "".join(line + "\n" for line in model.lines(ids, lengths)))
    truth["mi"], truth["mi_stderr"] = model.mutual_information(mi_samples, model.rng("mi"))
    truth.update(model.accuracy_record(errors))
    # truth.json last: its presence marks a complete corpus.
    _write_atomic(out_dir / TRUTH_FILE, json.dumps(truth))
    return out_dir


def _write_atomic(path: Path, text: str) -> None:
    # the pid: two processes making the same corpus at once (a study's first runs, torchrun's ranks on
    # several nodes) each write their own file; the contents are the same, so either rename is right
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
