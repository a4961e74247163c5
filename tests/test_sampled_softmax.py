"""The training-only sampled softmax (textvae.models.sampled_softmax): the candidates' inclusion
probabilities against Monte-Carlo counts, the exact full softmax when every word is a candidate
with probability 1, accidental hits counted once, GEMM shapes padded without changing the loss, the
model scoring the full softmax in eval mode, and gradients touching only the output rows of targets
and candidates."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from textvae.cli import main
from textvae.data.special import BOS_ID, PAD_ID
from textvae.errors import TextVAEError
from textvae.models.sampled_softmax import GEMM_ALIGN, SampledSoftmax
from textvae.training.logger import read_jsonl
from tests.test_perf_levers import V, problem, ragged_batch, tiny_model
from tests.test_train import tiny_args, write_corpus

torch.set_num_threads(1)


def counts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 1000, (V,), generator=g).float()


def test_inclusion_probability_matches_monte_carlo():
    sm = SampledSoftmax(counts(), num_samples=7)
    g = torch.Generator().manual_seed(1)
    draws = 20000
    hits = torch.zeros(V)
    for _ in range(draws):
        hits[sm.candidates(g)] += 1
    freq, p = hits / draws, sm.log_inclusion.exp()
    # binomial standard error per word; 5 s.e. over 50 words
    se = (p * (1 - p) / draws).sqrt().clamp(min=1e-4)
    assert ((freq - p).abs() <= 5 * se).all()
    assert hits[PAD_ID] == 0 and hits[BOS_ID] == 0


def test_all_words_with_certainty_is_the_full_softmax():
    """With S = the whole vocabulary and log P(w in S) = 0 the loss is exactly the cross-entropy
    (every target is also a candidate: the accidental-hit mask must count it once)."""
    hidden, weight, bias, targets, _ = problem()
    sm = SampledSoftmax(counts(), num_samples=3)
    sm.log_inclusion = torch.zeros(V)
    got = sm(hidden, weight, bias, targets, candidates=torch.arange(V))
    want = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_candidate_equal_to_target_is_masked():
    hidden, weight, bias, targets, _ = problem(n=4)
    sm = SampledSoftmax(counts(), num_samples=3)
    others = torch.tensor([w for w in range(4, V) if w not in targets.tolist()][:5])
    with_hits = torch.cat([others, targets.unique()])
    # the hit terms are masked for the token whose target they are, kept for the other tokens
    got = sm(hidden, weight, bias, targets, candidates=with_hits)
    logits = F.linear(hidden, weight, bias) - sm.log_inclusion
    for i, y in enumerate(targets.tolist()):
        rest = [w for w in with_hits.tolist() if w != y]
        want = torch.logsumexp(logits[i, [y] + rest], 0) - logits[i, y]
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_tokens", [37, 64, 65])
def test_gemm_shapes_are_aligned(n_tokens):
    """Every matmul of the loss, forward and backward, has its N and |S| dimensions padded to
    multiples of GEMM_ALIGN (oneDNN builds and JIT-compiles one primitive per shape), and
    the padding changes nothing: padded candidates and tokens get no gradient."""
    shapes = []

    class RecordMatmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default):
                a, b = args[-2], args[-1]
                shapes.append((a.shape[-2], a.shape[-1], b.shape[-1]))  # (M, K, N)
            return func(*args, **(kwargs or {}))

    hidden, weight, bias, targets, upstream = problem(n=n_tokens)
    targets = targets.clamp(min=BOS_ID + 1)  # <pad> and <s> are never targets (log P(w in S) = -inf)
    hidden.requires_grad_(), weight.requires_grad_()
    sm = SampledSoftmax(counts(), num_samples=3)
    cand = torch.tensor([5, 9, 17, 30, 41])
    with RecordMatmuls():
        got = sm(hidden, weight, bias, targets, candidates=cand)
        (got * upstream).sum().backward()
    # forward and the two backward GEMMs; every dimension but the hidden size H is padded
    assert len(shapes) == 3 and all(d % GEMM_ALIGN == 0 or d == hidden.shape[1] for mkn in shapes for d in mkn), shapes
    # the same loss from the formula, and the rows of W it may touch
    logits = F.linear(hidden, weight, bias) - sm.log_inclusion
    for i, y in enumerate(targets.tolist()):
        rest = [w for w in cand.tolist() if w != y]
        torch.testing.assert_close(got[i], torch.logsumexp(logits[i, [y] + rest], 0) - logits[i, y],
                                   rtol=1e-5, atol=1e-5)
    used = torch.zeros(V, dtype=torch.bool)
    used[cand], used[targets] = True, True
    assert (weight.grad[~used] == 0).all() and torch.isfinite(hidden.grad).all()


def test_model_uses_it_in_training_only_and_touches_only_sampled_rows():
    model, batch = tiny_model(), ragged_batch()
    z = torch.randn(len(batch), 4, generator=torch.Generator().manual_seed(1))
    model.eval()
    full = model.token_nll(batch, z)
    model.sampled_softmax = SampledSoftmax(counts(), num_samples=5)
    torch.testing.assert_close(model.token_nll(batch, z), full)  # eval: always the full softmax

    model.train()
    torch.manual_seed(3)
    cand = model.sampled_softmax.candidates()
    torch.manual_seed(3)  # the same draw inside token_nll
    rec = model.token_nll(batch, z)
    assert not torch.allclose(rec, full)
    rec.sum().backward()
    used = torch.zeros(V, dtype=torch.bool)
    used[cand] = True
    used[batch.targets[batch.targets != PAD_ID]] = True
    grad = model.projection.weight.grad
    assert (grad[~used] == 0).all() and (grad[used].abs().sum(-1) > 0).all()


def test_training_loop_with_sampled_softmax(tmp_path):
    """train.sampled_softmax reaches the loop's steps: the same run with the full softmax ends with other
    weights."""
    from tests.test_train import state_of

    corpus = write_corpus(tmp_path / "corpus", n_train=60, n_eval=20)
    for name, sampled in (("sampled", "8"), ("full", "0")):
        main(["train", *tiny_args(tmp_path / "runs", name, corpus, "--train.sampled_softmax", sampled,
                                  "--train.max_steps", "4", "--train.log_every", "1")])
    records = read_jsonl(tmp_path / "runs" / "sampled" / "metrics.jsonl")
    assert len([r for r in records if r["split"] == "train"]) == 4
    sampled, full = (state_of(tmp_path / "runs" / n / "checkpoint.safetensors") for n in ("sampled", "full"))
    assert not torch.equal(sampled["model.projection.weight"], full["model.projection.weight"])
    assert [r["split"] for r in records].count("test") == 1


def test_negative_sample_count_is_an_error(tmp_path):
    with pytest.raises(TextVAEError, match="num_samples > 0"):
        SampledSoftmax(counts(), num_samples=0)
    with pytest.raises(SystemExit) as exc:
        main(["train", *tiny_args(tmp_path / "runs", "bad", write_corpus(tmp_path / "c"),
                                  "--train.sampled_softmax", "-1")])
    assert exc.value.code != 0
