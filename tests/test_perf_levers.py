"""Issue 6 levers change speed, not results: each fast path against its reference path.

* fused projection + cross-entropy (``linear_cross_entropy``) vs ``F.linear`` + ``F.cross_entropy``,
  in fp32 (to rounding), in bf16 (as close to fp32 as the reference bf16 path), for extreme logits;
* the unpacked one-direction encoder vs the packed one (same final states and gradients);
* the decoders' ``Dropout`` (its kernel and torch operations) vs the Bernoulli(1 - p) inverted-dropout
  distribution;
* bf16 autocast really runs the recurrent layers and the output layer in bf16, keeps the latent
  side and the loss in fp32, and leaves fp32 gradients on the fp32 master weights;
* the loop's gradient clipping equals clip_grad_norm_; its malloc setting applies;
* ``optim.name: adam`` (torch's fused kernel) takes the steps of torch's per-tensor Adam.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig, OptimConfig
from textvae.data.batch import collate
from textvae.models.decoders import Dropout
from textvae.models.encoders import last_layer_final_state
from textvae.models import fused_loss
from textvae.models.fused_loss import GEMM_ROWS, linear_cross_entropy
from textvae.models import native
from textvae.models.textvae import TextVAE
from textvae.training.train import build_optimizer, clip_gradients, retain_freed_memory
from tests.conftest import kernel_or_torch, needs_cpu_bf16

torch.set_num_threads(1)
V = 50


def reference_loss(hidden, weight, bias, targets):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="none")


def loss_and_grads(fn, hidden, weight, bias, targets, upstream, bf16=False):
    """Per-token losses and the gradients of Σ upstream * loss w.r.t. hidden, weight, bias."""
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
    h, w = leaves[:2]
    b = leaves[2] if bias is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = fn(h, w, b, targets)
    (out * upstream).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def problem(n=37, h=16, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(V, h, generator=g) * scale
    bias = torch.randn(V, generator=g)
    targets = torch.randint(0, V, (n,), generator=g)
    upstream = torch.rand(n, generator=g) + 0.5  # not uniform: the backward must weight each token
    return hidden, weight, bias, targets, upstream


@pytest.mark.parametrize("chunk", [5, 37, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_loss_equals_reference_fp32(chunk, with_bias):
    """Chunks that do not divide N, one chunk, and a chunk larger than N give the reference loss
    and gradients to fp32 rounding."""
    hidden, weight, bias, targets, upstream = problem()
    bias = bias if with_bias else None
    ref = loss_and_grads(reference_loss, hidden, weight, bias, targets, upstream)
    fused = loss_and_grads(lambda h, w, b, y: linear_cross_entropy(h, w, b, y, chunk=chunk),
                           hidden, weight, bias, targets, upstream)
    assert fused[0].dtype == torch.float32
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad", [True, False])
def test_fused_loss_extreme_logits(grad):
    """Targets hundreds of nats below the best word: the NLL stays finite and exact, with
    gradients (the form lse = max l - log max p never takes the log of an underflowed
    probability) and without (log-softmax)."""
    hidden, weight, bias, targets, upstream = problem(scale=40.0)
    exact = -torch.log_softmax(F.linear(hidden.double(), weight.double(), bias.double()), -1)
    exact = exact.gather(1, targets[:, None])[:, 0]
    assert exact.max() > 200
    nll = linear_cross_entropy(hidden.requires_grad_(grad), weight, bias, targets, chunk=8)
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll.double().detach(), exact, rtol=1e-5, atol=1e-3)


def test_fused_loss_bf16_as_accurate_as_reference_bf16():
    """Under bf16 autocast both paths round the same matmuls to bf16; the fused one is no further
    from the fp32 result (relative L2 error of the loss and of each gradient) than 1.5x the
    reference bf16 path's, and within 2 %."""
    hidden, weight, bias, targets, upstream = problem(n=200, h=64, scale=0.5)
    truth = loss_and_grads(reference_loss, hidden, weight, bias, targets, upstream)
    ref = loss_and_grads(reference_loss, hidden, weight, bias, targets, upstream, bf16=True)
    fused = loss_and_grads(lambda h, w, b, y: linear_cross_entropy(h, w, b, y, chunk=64),
                           hidden, weight, bias, targets, upstream, bf16=True)
    for f, r, t in zip(fused, ref, truth):
        assert f.dtype == t.dtype  # fp32 loss and fp32 gradients of fp32 leaves
        err_f, err_r = ((f - t).norm() / t.norm()).item(), ((r - t).norm() / t.norm()).item()
        assert err_f <= max(1.5 * err_r, 1e-6) and err_f < 0.02, (err_f, err_r)


def test_fused_loss_bf16_eval_is_the_fp32_log_softmax_of_the_bf16_logits():
    """Without gradients under bf16 autocast (torch operations) the NLL is exactly
    -log_softmax(fp32(h W^T in bf16) + b)_y with the bias added as one mixed-dtype add (bf16 + fp32 ->
    fp32 sums): casting the logits first, then adding the fp32 bias in place, is a faster route to
    the same bits. (The C++ kernel's exp rounds otherwise: tests/test_native.py.)"""
    hidden, weight, bias, targets, _ = problem()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), native.native_kernels(False):
        nll = linear_cross_entropy(hidden, weight, bias, targets, chunk=len(hidden))
    logits = torch.add(hidden.bfloat16() @ weight.bfloat16().t(), bias)
    assert logits.dtype == torch.float32
    assert torch.equal(nll, -torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets])


@pytest.mark.parametrize("grad", [True, False])
def test_fused_loss_bf16_keeps_the_bias_in_fp32(grad):
    """Under bf16 autocast the bias is added to the fp32 logits, not rounded to bf16: with
    h = 0 the logits are the bias alone, so the NLL is the fp32 one exactly (a bf16 bias, 8
    significant bits, is off by ~1e-2 nats here)."""
    hidden, weight, bias, targets, _ = problem()
    bias = bias * 7.0
    exact = -torch.log_softmax(bias.double(), -1)[targets]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = linear_cross_entropy(torch.zeros_like(hidden).requires_grad_(grad), weight, bias, targets, chunk=8)
    torch.testing.assert_close(nll.double().detach(), exact, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_without_grad_matches_and_is_deterministic(monkeypatch, dtype):
    """Under no_grad (evaluation) with parameters that require grad, each softmax sees one chunk
    of tokens and nothing of N x V is kept: memory stays at one chunk of logits whatever N. With
    gradients, the [N, V] buffer G exists (in fp32, as the softmax of the whole batch). Torch
    operations, whose softmax calls show the chunks (the C++ kernel takes the same chunks)."""
    monkeypatch.setattr(native, "_enabled", False)
    hidden, weight, bias, targets, _ = problem()
    weight.requires_grad_()
    sizes = []
    for name in ("softmax", "log_softmax", "empty"):
        original = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _f=original, **kw: sizes.append(
            a[0].numel() if isinstance(a[0], torch.Tensor) else math.prod(a[0] if isinstance(a[0], tuple) else a))
            or _f(*a, **kw))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        a = linear_cross_entropy(hidden, weight, bias, targets, chunk=4)
        b = linear_cross_entropy(hidden, weight, bias, targets, chunk=4)
    padded = V + (-V % 16 if dtype == torch.float32 else 0)  # (fp32 on CPU pads V to a multiple of 16)
    assert max(sizes) == 4 * padded
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        linear_cross_entropy(hidden, weight, bias, targets, chunk=4)  # with grad: the buffer is made
    rows = len(hidden) if dtype == torch.float32 else -(-len(hidden) // GEMM_ROWS) * GEMM_ROWS  # bf16: zero rows
    assert max(sizes) == rows * padded
    assert torch.equal(a, b)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=0.02, atol=0.05)
    torch.testing.assert_close(a, reference_loss(hidden, weight, bias, targets.detach()).detach(), **tol)


def tiny_model(encoder="lstm", layers=1, bidirectional=False, dropout=0.0):
    cfg = ModelConfig(emb_dim=12, latent_dim=4,
                      encoder=EncoderConfig(type=encoder, hidden_dim=10, num_layers=layers,
                                            bidirectional=bidirectional),
                      decoder=DecoderConfig(hidden_dim=14, input_dropout=dropout, output_dropout=dropout),
                      init="torch")
    torch.manual_seed(0)
    return TextVAE(cfg, V)


def ragged_batch(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [[1] + torch.randint(4, V, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist() + [2]
            for _ in range(n)]
    return collate(seqs)


def test_token_nll_fused_equals_reference_with_gradients():
    """The model's loss path: fused and reference token NLL agree, and so do all parameter
    gradients of a loss that weights sentences unequally."""
    model, batch = tiny_model(), ragged_batch()
    z = torch.randn(len(batch), 4, generator=torch.Generator().manual_seed(1))
    weights = torch.linspace(0.5, 2.0, len(batch))
    results = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        model.fused_loss = fused
        rec = model.token_nll(batch, z)
        (rec * weights).sum().backward()
        results.append((rec.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (rec_f, grads_f), (rec_r, grads_r) = results
    torch.testing.assert_close(rec_f, rec_r, rtol=1e-5, atol=1e-5)
    assert grads_f.keys() == grads_r.keys() and any(k.startswith("projection") for k in grads_f)
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-4, atol=1e-6, msg=name)


def packed_final_state(encoder, tokens, lengths):
    """The reference: run the packed batch and take the RNN's final state of the top layer."""
    packed = pack_padded_sequence(encoder.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
    _, h_n = encoder.rnn(packed)
    h_n = h_n[0] if isinstance(h_n, tuple) else h_n
    return last_layer_final_state(h_n, encoder.num_layers, encoder.num_directions)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_unpacked_encoder_equals_packed(rnn, layers):
    """One direction: the padded batch through the fused kernel, read at position length - 1,
    gives the packed RNN's final states and the same gradients (padding never leaks in)."""
    model = tiny_model(encoder=rnn, layers=layers)
    encoder, batch = model.encoder, ragged_batch()
    assert batch.lengths.min() < batch.tokens.shape[1]  # some padding to ignore
    outs = []
    for fn in (lambda: encoder(batch.tokens, batch.lengths),
               lambda: packed_final_state(encoder, batch.tokens, batch.lengths)):
        encoder.zero_grad(set_to_none=True)
        h = fn()
        (h * torch.arange(1.0, h.shape[1] + 1)).sum().backward()
        outs.append((h.detach(), [p.grad.clone() for p in encoder.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bidirectional_encoder_still_packed():
    model = tiny_model(bidirectional=True, layers=2)
    batch = ragged_batch()
    torch.testing.assert_close(model.encoder(batch.tokens, batch.lengths),
                               packed_final_state(model.encoder, batch.tokens, batch.lengths))


@pytest.fixture(params=[True, False], ids=["kernel", "torch-ops"])
def dropout_path(request):
    """The decoders' dropout through textvae's ``dropout`` kernel, and through torch operations."""
    with kernel_or_torch("dropout", request.param) as on:
        yield on


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_distribution(p, dtype, dropout_path):
    """Kept fraction ~ Binomial(n, 1 - p) (within 5 standard deviations), kept values scaled by
    1 / (1 - p), dropped ones 0; the gradient is the same mask times the scale."""
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(200, 500, dtype=dtype, requires_grad=True)
    y = drop(x)
    n = x.numel()
    kept = (y != 0).sum().item()
    assert y.dtype == dtype
    assert abs(kept - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))
    torch.testing.assert_close(y[y != 0], torch.full((kept,), 1 / (1 - p), dtype=dtype))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())
    # independent across elements: neighbouring positions agree as often as independence predicts
    same = ((y[:, 1:] != 0) == (y[:, :-1] != 0)).float().mean().item()
    assert abs(same - ((1 - p) ** 2 + p**2)) < 0.01


def test_dropout_follows_torch_s_seed_and_masks_its_gradient(dropout_path):
    """The same torch seed gives the same mask, another seed another one; the gradient of a
    non-contiguous input is masked where the output was."""
    drop = Dropout(0.5).train()
    x = torch.randn(40, 30).t()  # [30, 40], not contiguous
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        leaf = x.clone().requires_grad_()
        y = drop(leaf)
        upstream = torch.randn(y.shape)
        y.backward(upstream)
        outs.append(y.detach())
        torch.testing.assert_close(leaf.grad, torch.where(y != 0, upstream * 2.0, 0.0))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


@needs_cpu_bf16
def test_bf16_autocast_runs_recurrent_and_output_layers_in_bf16():
    """Under autocast the decoder's LSTM output is bf16 (the kernel ran in bf16), and so are the
    encoder's states before the latent head; mu, z, the KL and the reconstruction are fp32; the
    parameters' gradients are fp32 (the master weights)."""
    model, batch = tiny_model(), ragged_batch()
    model.train()
    seen = {}
    model.decoder.rnn.register_forward_hook(lambda m, i, o: seen.__setitem__("decoder", o[0].dtype))
    model.encoder.rnn.register_forward_hook(lambda m, i, o: seen.__setitem__("encoder", o[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert seen == {"decoder": torch.bfloat16, "encoder": torch.bfloat16}
    assert out.rec.dtype == out.kl.dtype == out.z.dtype == out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


@needs_cpu_bf16
def test_bf16_loss_close_to_fp32():
    """The same weights and noise give a bf16 loss within 1 % of the fp32 one."""
    model, batch = tiny_model(), ragged_batch(n=16)
    losses = []
    for bf16 in (False, True):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses.append(model(batch).loss.item())
    assert abs(losses[1] - losses[0]) < 0.01 * abs(losses[0])


def test_retain_freed_memory_applies_on_glibc():
    import platform

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() == glibc
    assert retain_freed_memory(False) == glibc  # back to the defaults, kept memory given back


@pytest.mark.parametrize("max_norm", [1e-3, 1e3, math.inf])
def test_clip_gradients_equals_clip_grad_norm(max_norm):
    """The loop's clip (no scaling pass when the factor is 1) leaves the same gradients, bit for
    bit, and returns the same norm as torch's clip_grad_norm_, whether it clips or not."""
    results = []
    for clip in (clip_gradients, lambda m, c: torch.nn.utils.clip_grad_norm_(m.parameters(), c)):
        model, batch = tiny_model(), ragged_batch()
        torch.manual_seed(0)
        model(batch).loss.backward()
        norm = clip(model, max_norm)
        results.append((norm, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (norm_a, grads_a), (norm_b, grads_b) = results
    assert torch.equal(norm_a, norm_b) and len(grads_a) == len(grads_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    if max_norm < 1:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads_a]))
        torch.testing.assert_close(total, torch.tensor(max_norm), rtol=1e-4, atol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_fused_takes_the_reference_adam_steps(weight_decay):
    """The loop's Adam is torch's fused kernel: after 30 steps on the same gradients (rescaled each
    step, so that the moments' bias corrections matter) every parameter equals the per-tensor
    for-loop Adam's, the slow reference, to rounding."""
    cfg = OptimConfig(name="adam", betas=[0.9, 0.99], weight_decay=weight_decay)
    models = [tiny_model(), tiny_model()]
    fused = build_optimizer(cfg, models[0], 3e-3)
    reference = torch.optim.Adam(models[1].parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=weight_decay,
                                 foreach=False)
    assert fused.defaults["fused"] and not reference.defaults["fused"]
    for step in range(30):
        for model in models:
            torch.manual_seed(step)  # the same dropout and z draws for both
            model.zero_grad(set_to_none=True)
            (model(ragged_batch()).loss * (1 + step % 3)).backward()
        fused.step()
        reference.step()
    start = tiny_model()
    for a, b, p0 in zip(models[0].parameters(), models[1].parameters(), start.parameters()):
        assert not torch.equal(a, p0)  # it trained
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_test_report_keeps_its_own_freed_memory(tmp_path, monkeypatch):
    """With train.retain_memory the loop retains during training, gives that memory back before the
    test report, retains again for the report (its IW pass re-makes the same chunk buffers), and
    ends with the kept memory given back."""
    import textvae.training.train as train_module
    from textvae.cli import main
    from textvae.tasks.sentences import SentenceTask
    from tests.test_train import tiny_args

    calls: list = []
    monkeypatch.setattr(train_module, "retain_freed_memory", lambda retain=True: calls.append(retain) or True)
    report = SentenceTask.test_report
    monkeypatch.setattr(SentenceTask, "test_report", lambda *a, **k: calls.append("report") or report(*a, **k))
    monkeypatch.setenv("TEXTVAE_CACHE", str(tmp_path / "cache"))
    main(["train", *tiny_args(tmp_path / "runs", "vae", "synthetic", "--data.max_sentences", "40",
                              "--train.max_steps", "2")])
    assert calls == [True, False, True, "report", False]


@pytest.mark.parametrize("n", [5, 64, 70, 300])
def test_bf16_zero_rows_of_the_loss_gemms_change_nothing(monkeypatch, n):
    """The bf16 loss pads its GEMMs' token dimension with zero rows (GEMM_ROWS); without them
    (GEMM_ROWS = 1) the NLL and every gradient are the same to bf16's last bit."""
    def run(rows):
        monkeypatch.setattr(fused_loss, "GEMM_ROWS", rows)
        hidden, weight, bias, targets, upstream = problem(n=n)
        leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nll = linear_cross_entropy(hidden, weight, bias, targets, chunk=128)
        (nll * upstream).sum().backward()
        return [nll.detach()] + [t.grad for t in leaves]

    for padded, plain in zip(run(GEMM_ROWS), run(1)):
        torch.testing.assert_close(padded, plain, rtol=0, atol=0)
