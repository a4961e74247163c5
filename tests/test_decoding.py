"""Decoders checked against toy models that implement the step protocol (decode_step / reorder_state):
hand-computed argmax chains, brute-force enumeration, a slow list-based beam search, and sampling frequencies."""
import math

import pytest
import torch
from torch import nn

from textvae.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from textvae.errors import TextVAEError
from textvae.models.decoding import (
    beam_search,
    decode_sentences,
    filter_logits,
    greedy,
    interpolate,
    sample,
)

torch.set_num_threads(1)

V = 7  # <pad> <s> </s> <unk> and the words 4, 5, 6
SPECIAL_NEVER_EMITTED = {PAD_ID, BOS_ID, EOS_ID}


class TableToy(nn.Module):
    """p(x_t | x_{t-1}) from a fixed table (z is ignored); state = number of steps taken, [B]."""

    def __init__(self, rows: dict[int, list[float]]):
        super().__init__()
        # rows[prev] = probabilities of (</s>, <unk>, 4, 5, 6). <pad> and <s> get large logits that the
        # decoders must mask out.
        table = torch.zeros(V, V, dtype=torch.float64)
        for prev, probs in rows.items():
            table[prev, 2:] = torch.tensor(probs, dtype=torch.float64).log()
            table[prev, [PAD_ID, BOS_ID]] = 10.0
        self.register_buffer("table", table)

    def decode_step(self, tokens, z, state):
        steps = torch.zeros(tokens.shape[0], dtype=torch.long) if state is None else state
        return self.table[tokens[:, 0]], steps + 1

    def reorder_state(self, state, index):
        return state.index_select(0, index)


UNIFORM = [0.2] * 5
# Greedy follows <s> 4 5 </s> (p = .5 * .6 * .5 = .15) but "5 </s>" is more probable (.35 * .5 = .175).
TRAP = {
    BOS_ID: [0.04, 0.06, 0.50, 0.35, 0.05],
    4: [0.20, 0.05, 0.05, 0.60, 0.10],
    5: [0.50, 0.10, 0.20, 0.10, 0.10],
    6: [0.05, 0.05, 0.05, 0.05, 0.80],
    UNK_ID: [0.60, 0.10, 0.10, 0.10, 0.10],
    EOS_ID: UNIFORM,
    PAD_ID: UNIFORM,
}


class GRUToy(nn.Module):
    """A tiny z-conditioned GRU decoder in float64: h0 = tanh(W z), input = [dropout(emb(x)); z].

    The </s> logit gets eos_slope * (t - eos_at) at step t, so sentences are rarely empty and rarely
    endless; the state (h [B, H], t [B]) is a tuple, as an LSTM's would be.
    """

    def __init__(self, latent_dim: int = 3, hidden: int = 8, seed: int = 0, scale: float = 2.0, gain: float = 3.0):
        super().__init__()
        torch.manual_seed(seed)
        self.latent_dim, self.scale, self.eos_slope, self.eos_at = latent_dim, scale, 2.0, 3
        self.emb = nn.Embedding(V, 5)
        self.drop = nn.Dropout(0.5)
        self.init = nn.Linear(latent_dim, hidden, bias=False)
        self.cell = nn.GRUCell(5 + latent_dim, hidden)
        self.out = nn.Linear(hidden, V)
        with torch.no_grad():  # larger weights than PyTorch's init: outputs that depend on z and the history
            for p in [*self.cell.parameters(), self.init.weight]:
                p.mul_(gain)
        self.double()
        self.seen: list[tuple[bool, bool]] = []  # (training, grad enabled) at each call

    def decode_step(self, tokens, z, state):
        self.seen.append((self.training, torch.is_grad_enabled()))
        if z is None:
            z = torch.zeros(tokens.shape[0], self.latent_dim, dtype=torch.float64)
        if state is None:
            state = torch.tanh(self.init(z)), torch.zeros(tokens.shape[0], dtype=torch.float64)
        h, t = state
        h, t = self.cell(torch.cat([self.drop(self.emb(tokens[:, 0])), z], dim=-1), h), t + 1
        logits = self.scale * self.out(h)
        logits[:, EOS_ID] += self.eos_slope * (t - self.eos_at)
        return logits, (h, t)

    def reorder_state(self, state, index):
        return tuple(s.index_select(0, index) for s in state)


class OneStepToy(nn.Module):
    """Fixed logits at every step, whatever the input: a one-step distribution to sample from."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def decode_step(self, tokens, z, state):
        return self.logits.expand(tokens.shape[0], -1), state

    def reorder_state(self, state, index):
        return state


def masked_log_probs(logits: torch.Tensor, ban_unk: bool = False) -> torch.Tensor:
    """The decoders' distribution, written out: <pad>, <s> (and <unk>) removed, the rest renormalised."""
    logits = logits.clone()
    logits[..., [PAD_ID, BOS_ID] + ([UNK_ID] if ban_unk else [])] = -math.inf
    return logits.log_softmax(-1)


def step(model, prev: int, z_row, state):
    """One decoding step of a single sentence: (log-probs [V], state)."""
    z = None if z_row is None else z_row[None]
    logits, state = model.decode_step(torch.tensor([[prev]]), z, state)
    return masked_log_probs(logits)[0], state


def argmax_chain(model, z_row, max_len: int) -> list[int]:
    """Greedy decoding of one sentence, one model call at a time."""
    ids, prev, state = [], BOS_ID, None
    with torch.no_grad():
        for _ in range(max_len):
            log_p, state = step(model, prev, z_row, state)
            prev = int(log_p.argmax())
            if prev == EOS_ID:
                break
            ids.append(prev)
    return ids


def all_sentences(model, z_row, max_len: int) -> dict[tuple[int, ...], float]:
    """log p(w1..wn </s> | z) of every sentence that ends within max_len steps, by depth-first enumeration."""
    found = {}

    def visit(prefix: list[int], logp: float, state) -> None:
        log_p, state = step(model, prefix[-1] if prefix else BOS_ID, z_row, state)
        found[tuple(prefix)] = logp + float(log_p[EOS_ID])
        if len(prefix) + 1 < max_len:
            for v in range(UNK_ID, V):
                visit(prefix + [v], logp + float(log_p[v]), state)

    with torch.no_grad():
        visit([], 0.0, None)
    return found


def reference_beam(model, z_row, max_len: int, k: int, alpha: float) -> list[int]:
    """Slow beam search on Python lists, one sentence, always running max_len steps (no early stop)."""
    live = [(0.0, [], None)]  # (log-prob, ids so far, state)
    finished = []  # (score, ids without </s>)
    with torch.no_grad():
        for t in range(1, max_len + 1):
            candidates = []
            for logp, ids, state in live:
                log_p, new_state = step(model, ids[-1] if ids else BOS_ID, z_row, state)
                candidates += [(logp + float(log_p[v]), ids + [v], new_state) for v in range(EOS_ID, V)]
            candidates = sorted(candidates, key=lambda c: -c[0])[:k]
            finished += [(logp / t**alpha, ids[:-1]) for logp, ids, _ in candidates if ids[-1] == EOS_ID]
            live = [c for c in candidates if c[1][-1] != EOS_ID]
            if not live:
                break
    if finished:
        return max(finished, key=lambda f: f[0])[1]
    return max(live, key=lambda c: c[0])[1]


def random_z(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- greedy -----------------------------------------------------------------------------------------


def test_greedy_follows_the_hand_computed_argmax_chain():
    assert greedy(TableToy(TRAP), None, 10) == [[4, 5]]
    # From 6 the chain loops on 6: the sentence hits max_len and comes back truncated.
    loop = {**TRAP, BOS_ID: [0.1, 0.1, 0.1, 0.1, 0.6]}
    assert greedy(TableToy(loop), None, 4, batch_size=2) == [[6, 6, 6, 6]] * 2


def test_greedy_equals_step_by_step_argmax_for_each_row():
    model, z = GRUToy(), random_z(6)
    model.eval()
    expected = [argmax_chain(model, z[b], 8) for b in range(6)]
    model.train()
    assert greedy(model, z, 8) == expected
    assert len({tuple(s) for s in expected}) > 1  # the rows really differ, so the test can see mixing


def test_decoding_runs_in_eval_mode_without_grad_and_restores_training():
    model, z = GRUToy(), random_z(4)
    model.train()
    first = greedy(model, z, 8)
    assert model.training
    assert model.seen and all(s == (False, False) for s in model.seen)
    assert greedy(model, z, 8) == first  # dropout is off, so decoding is deterministic
    model.seen.clear()
    beam_search(model, z, 8, beam_size=3)
    sample(model, z, 8, generator=torch.Generator().manual_seed(0))
    assert model.training and all(s == (False, False) for s in model.seen)


def test_language_model_without_z_decodes_batch_size_sentences():
    out = greedy(GRUToy(), None, 8, batch_size=3)
    assert len(out) == 3 and out[0] == out[1] == out[2]
    assert len(beam_search(GRUToy(), None, 8, beam_size=2, batch_size=3)) == 3


# --- beam search ------------------------------------------------------------------------------------


def test_beam_escapes_the_greedy_trap():
    model = TableToy(TRAP)
    assert beam_search(model, None, 10, beam_size=1) == [[4, 5]]
    assert beam_search(model, None, 10, beam_size=2) == [[5]]


def test_beam_size_one_equals_greedy():
    model, z = GRUToy(seed=3), random_z(8)
    assert beam_search(model, z, 10, beam_size=1) == greedy(model, z, 10)
    assert beam_search(model, z, 10, beam_size=1, length_penalty=1.0) == greedy(model, z, 10)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_exhaustive_beam_finds_the_brute_force_optimum(alpha):
    model, z, max_len = GRUToy(seed=2, scale=1.5), random_z(3, seed=5), 4
    model.eval()
    # Never more than (4 words)^3 live prefixes times 5 continuations: this beam prunes nothing.
    out = beam_search(model, z, max_len, beam_size=4**3 * 5, length_penalty=alpha)
    greedy_out = greedy(model, z, max_len)
    for b in range(3):
        scores = {s: lp / (len(s) + 1) ** alpha for s, lp in all_sentences(model, z[b], max_len).items()}
        ranked = sorted(scores, key=scores.get, reverse=True)
        assert scores[ranked[0]] - scores[ranked[1]] > 1e-6  # the optimum is unique
        assert out[b] == list(ranked[0])
    if alpha == 0.0:
        assert out != greedy_out  # the search space is rich enough for greedy to miss the optimum


@pytest.mark.parametrize("k, alpha", [(2, 0.0), (3, 0.0), (3, 0.7), (4, 1.0)])
def test_beam_matches_slow_reference(k, alpha):
    model, z = GRUToy(seed=4), random_z(5, seed=7)
    model.eval()
    expected = [reference_beam(model, z[b], 7, k, alpha) for b in range(5)]
    assert beam_search(model, z, 7, beam_size=k, length_penalty=alpha) == expected


def test_beam_batch_equals_rows_decoded_alone():
    model, z = GRUToy(seed=5), random_z(6, seed=9)
    for alpha in (0.0, 0.6):
        batch = beam_search(model, z, 9, beam_size=3, length_penalty=alpha)
        alone = [beam_search(model, z[b : b + 1], 9, beam_size=3, length_penalty=alpha)[0] for b in range(6)]
        assert batch == alone
        assert len({tuple(s) for s in batch}) > 1


def test_beam_returns_truncated_hypothesis_when_none_finishes():
    loop = {prev: [1e-6, 0.1, 0.1, 0.1, 0.7] for prev in range(V)}
    assert beam_search(TableToy(loop), None, 3, beam_size=4) == [[6, 6, 6]]


# --- sampling ---------------------------------------------------------------------------------------

ONE_STEP_LOGITS = [2.0, 1.5, 0.3, 0.1, 0.7, -0.4, 1.0]  # <pad>, <s> large: the mask must remove them


def one_step_frequencies(n: int, **kw) -> torch.Tensor:
    """Empirical distribution of the first token over V from n one-step samples (</s> for empty output)."""
    out = sample(OneStepToy(ONE_STEP_LOGITS), None, 1, batch_size=n, **kw)
    first = torch.tensor([ids[0] if ids else EOS_ID for ids in out])
    return torch.bincount(first, minlength=V).double()


def assert_matches(counts: torch.Tensor, probs: torch.Tensor) -> None:
    """Pearson chi-square below df + 6 sd (df = support - 1); zero-probability tokens never drawn."""
    support = probs > 0
    assert counts[~support].sum() == 0
    expected = counts.sum() * probs[support]
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    df = int(support.sum()) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), chi2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_sampling_frequencies_match_the_model(temperature):
    logits = torch.tensor(ONE_STEP_LOGITS, dtype=torch.float64) / temperature
    probs = masked_log_probs(logits).exp()
    counts = one_step_frequencies(20000, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert_matches(counts, probs)


def test_sampling_with_top_k_and_top_p_matches_the_truncated_distribution():
    probs = masked_log_probs(torch.tensor(ONE_STEP_LOGITS, dtype=torch.float64)).exp()
    # Allowed tokens by probability: 6 (.346), 4 (.256), </s> (.172), <unk> (.141), 5 (.085).
    assert probs.argsort(descending=True)[:5].tolist() == [6, 4, EOS_ID, UNK_ID, 5]
    gen = torch.Generator().manual_seed(1)
    top2 = torch.zeros(V, dtype=torch.float64)
    top2[[6, 4]] = probs[[6, 4]]
    assert_matches(one_step_frequencies(20000, top_k=2, generator=gen), top2 / top2.sum())
    # Mass before 6, 4, </s>, <unk>: 0, .346, .602, .774 -> top_p = 0.7 keeps the first three.
    nucleus = torch.zeros(V, dtype=torch.float64)
    nucleus[[6, 4, EOS_ID]] = probs[[6, 4, EOS_ID]]
    assert_matches(one_step_frequencies(20000, top_p=0.7, generator=gen), nucleus / nucleus.sum())


def test_top_k_one_equals_greedy():
    model, z = GRUToy(seed=6), random_z(6)
    assert sample(model, z, 8, top_k=1, generator=torch.Generator().manual_seed(0)) == greedy(model, z, 8)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.10, 0.40, 0.05, 0.30, 0.15], [0.02, 0.08, 0.70, 0.15, 0.05]])

    def kept(top_p: float, top_k: int = 0) -> list[set[int]]:
        out = filter_logits(probs.log(), top_k=top_k, top_p=top_p)
        return [set(row.isfinite().nonzero().flatten().tolist()) for row in out]

    assert kept(0.3) == [{1}, {2}]  # the most probable token alone reaches 0.3
    assert kept(0.05) == [{1}, {2}]  # always at least one token
    # Mass before each token, in order -- row 0: 0, .40, .70, .85, .95; row 1: 0, .70, .85, .93, .98.
    assert kept(0.5) == [{1, 3}, {2}]
    assert kept(0.72) == [{1, 3, 4}, {2, 3}]
    assert kept(0.9) == [{0, 1, 3, 4}, {1, 2, 3}]
    assert kept(1.0) == [{0, 1, 2, 3, 4}] * 2
    # top-k first: row 0 keeps {1, 3}, renormalised (.57, .43), so top_p = 0.5 keeps token 1 only.
    assert kept(0.5, top_k=2) == [{1}, {2}]
    out = filter_logits(probs.log(), top_p=0.72)
    assert torch.equal(out[0, [1, 3, 4]], probs.log()[0, [1, 3, 4]])  # kept logits are untouched


def test_sampling_is_reproducible_with_a_seeded_generator():
    model, z = GRUToy(seed=7, scale=1.0), random_z(16)
    a = sample(model, z, 8, generator=torch.Generator().manual_seed(123))
    b = sample(model, z, 8, generator=torch.Generator().manual_seed(123))
    c = sample(model, z, 8, generator=torch.Generator().manual_seed(124))
    assert a == b and a != c


# --- special tokens ---------------------------------------------------------------------------------


def run_all_decoders(model, z, **kw) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return (
        greedy(model, z, 8, **kw)
        + sample(model, z, 8, generator=gen, **kw)
        + sample(model, z, 8, temperature=3.0, top_p=0.9, generator=gen, **kw)
        + beam_search(model, z, 8, beam_size=4, **kw)
        + beam_search(model, z, 8, beam_size=4, length_penalty=1.0, **kw)
    )


def test_special_tokens_never_appear_and_unk_only_when_allowed():
    model, z = GRUToy(seed=8), random_z(8)
    with torch.no_grad():
        model.out.bias[[PAD_ID, BOS_ID, UNK_ID]] += 4.0  # the model loves them; the decoders must not
    allowed = run_all_decoders(model, z)
    assert all(0 <= v < V and v not in SPECIAL_NEVER_EMITTED for s in allowed for v in s)
    assert any(UNK_ID in s for s in allowed)
    banned = run_all_decoders(model, z, ban_unk=True)
    assert all(v not in SPECIAL_NEVER_EMITTED | {UNK_ID} for s in banned for v in s)
    assert all(len(s) <= 8 for s in allowed + banned)


# --- text, interpolation, errors --------------------------------------------------------------------


class FakeTokenizer:
    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)


def test_decode_sentences_uses_the_chosen_decoder_and_tokenizer():
    model, z = GRUToy(seed=9), random_z(4)
    texts = decode_sentences(model, FakeTokenizer(), z, method="beam", max_len=8, beam_size=3)
    assert texts == [FakeTokenizer().decode(s) for s in beam_search(model, z, 8, beam_size=3)]
    assert decode_sentences(model, FakeTokenizer(), z, max_len=8) == [
        FakeTokenizer().decode(s) for s in greedy(model, z, 8)
    ]
    with pytest.raises(TextVAEError, match="unknown method"):
        decode_sentences(model, FakeTokenizer(), z, method="nucleus")


def test_interpolate_includes_both_ends_on_a_straight_line():
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 4.0, -1.5])
    path = interpolate(a, b, 5)
    assert path.shape == (5, 3)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path[2], (a + b) / 2)
    torch.testing.assert_close(path.diff(dim=0), ((b - a) / 4).expand(4, 3))
    with pytest.raises(TextVAEError):
        interpolate(a, b, 1)
    with pytest.raises(TextVAEError):
        interpolate(a, b[:2], 3)


def test_bad_arguments_raise_textvae_errors():
    model, z = GRUToy(), random_z(2)
    bad = [
        lambda: greedy(model, z[0], 5),  # z must be [B, D]
        lambda: greedy(model, z, 0),
        lambda: greedy(model, z, 5, batch_size=3),
        lambda: sample(model, z, 5, temperature=0.0),
        lambda: sample(model, z, 5, top_p=0.0),
        lambda: sample(model, z, 5, top_k=-1),
        lambda: beam_search(model, z, 5, beam_size=0),
        lambda: beam_search(model, z, 5, length_penalty=-0.5),
    ]
    for call in bad:
        with pytest.raises(TextVAEError):
            call()
