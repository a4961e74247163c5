"""The ``lstm_bf16`` kernel (textvae.models.lstm) against a float64 LSTM, and where it applies.

The kernel tests skip where the kernel does not run (no C++ compiler, or a CPU without AMX): the LSTM is
then torch's own, which every other test exercises.
"""
import pytest
import torch
from torch import nn

from textvae.models import native
from textvae.models.decoders import LSTMDecoder
from textvae.models.lstm import _kernel_for, run_rnn, run_rnn_shared


@pytest.fixture
def lstm_kernel():
    module = native.native_kernel("lstm_bf16")
    if module is None or not module.available():
        reason = native.native_status() if module is None else "this CPU has no AMX"
        pytest.skip(f"the lstm_bf16 kernel does not run here ({reason})")
    return module


def lstm_pass(lstm, x, h0, c0, upstream, dtype=None, kernel=True):
    """Outputs (out, h_n, c_n) and the gradients of sum(out * d_out) + sum(h_n * d_h) + sum(c_n * d_c)
    with respect to x, h0, c0 and the LSTM's parameters, as float64 tensors. ``dtype``: run a copy of
    the LSTM in that dtype (the reference); None: under bf16 autocast, through run_rnn (with the kernel,
    or torch's LSTM if not ``kernel``)."""
    ref = lstm if dtype is None else type(lstm)(lstm.input_size, lstm.hidden_size, batch_first=True).to(dtype)
    if dtype is not None:
        ref.load_state_dict(lstm.state_dict())
    inputs = [t.to(dtype or t.dtype).clone().requires_grad_() for t in (x, h0, c0)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is None), native.native_kernels(kernel):
        out, (h_n, c_n) = run_rnn(ref, inputs[0], (inputs[1][None], inputs[2][None]))
    loss = sum((y.double() * d).sum() for y, d in zip((out, h_n[0], c_n[0]), upstream))
    grads = torch.autograd.grad(loss, inputs + list(ref.parameters()))
    return [t.detach().double() for t in (out, h_n[0], c_n[0], *grads)]


@pytest.mark.parametrize("batch, steps, inp, hidden, threads",
                         [(32, 9, 40, 64, 2), (3, 1, 10, 32, 1), (5, 6, 18, 80, 2), (7, 4, 12, 48, 3)])
def test_kernel_against_float64(lstm_kernel, batch, steps, inp, hidden, threads):
    """Every output and gradient within 1 % (relative, norm) of a float64 LSTM, and no further from it than
    2x torch's own bf16 LSTM (oneDNN): rounding, not a different function. Shapes with one step, an odd
    batch, and hidden blocks that do not split evenly over the threads."""
    lstm = nn.LSTM(inp, hidden, batch_first=True)
    x, h0, c0 = torch.randn(batch, steps, inp), torch.randn(batch, hidden) * 0.5, torch.randn(batch, hidden)
    upstream = [torch.randn(batch, steps, hidden).double(), torch.randn(batch, hidden).double(),
                torch.randn(batch, hidden).double()]
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert _kernel_for(lstm, x) is None  # outside autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _kernel_for(lstm, x) is lstm_kernel
        exact = lstm_pass(lstm, x, h0, c0, upstream, dtype=torch.float64)
        mine = lstm_pass(lstm, x, h0, c0, upstream)
        onednn = lstm_pass(lstm, x, h0, c0, upstream, kernel=False)
    finally:
        torch.set_num_threads(was)
    names = ["out", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    for name, m, o, e in zip(names, mine, onednn, exact):
        err, err_onednn = float((m - e).norm() / e.norm()), float((o - e).norm() / e.norm())
        assert err < 1e-2 and err < 2 * err_onednn + 1e-4, (name, err, err_onednn)


def scoring_pass(lstm, shared, per_row, h0, c0, dtype=None, kernel=True):
    """Outputs [R, T, H] (float64) of ``lstm`` on rows whose input is cat(shared[r mod B, t], per_row[r]):
    ``dtype`` a copy of the LSTM in that dtype on the explicit input (the reference); None: without
    gradients under bf16 autocast, run_rnn_shared (the kernel's scoring pass), or if not ``kernel``
    torch's LSTM on the explicit input (where run_rnn_shared returns None)."""
    state = (h0[None], c0[None])
    x = torch.cat([shared.repeat(per_row.shape[0] // shared.shape[0], 1, 1),
                   per_row[:, None].expand(-1, shared.shape[1], -1)], -1)
    with torch.no_grad():
        if dtype is not None:
            ref = nn.LSTM(lstm.input_size, lstm.hidden_size, batch_first=True).to(dtype)
            ref.load_state_dict(lstm.state_dict())
            return ref(x.to(dtype), tuple(t.to(dtype) for t in state))[0].double()
        with torch.autocast("cpu", dtype=torch.bfloat16), native.native_kernels(kernel):
            out = run_rnn_shared(lstm, shared, per_row, state)
            assert (out is None) == (not kernel)
            return (lstm(x, state)[0] if out is None else out).double()


@pytest.mark.parametrize("batch, samples, steps, emb, latent, hidden, threads",
                         [(4, 3, 6, 10, 4, 32, 2), (3, 5, 1, 8, 2, 16, 1), (5, 9, 7, 12, 6, 48, 3), (2, 40, 3, 6, 3, 16, 2)])
def test_scoring_pass_against_float64(lstm_kernel, batch, samples, steps, emb, latent, hidden, threads):
    """The scoring pass (input projection given per sentence and per row, rows split over the threads) within
    1 % of a float64 LSTM on the explicit concatenated input, and no further from it than 2x torch's bf16
    LSTM: one step, rows that fill no whole block of 32, several blocks over 1-3 threads."""
    lstm = nn.LSTM(emb + latent, hidden, batch_first=True)
    rows = batch * samples
    shared, per_row = torch.randn(batch, steps, emb), torch.randn(rows, latent)
    h0, c0 = torch.randn(rows, hidden) * 0.5, torch.randn(rows, hidden)
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert _kernel_for(lstm, shared, training=False) is lstm_kernel
            assert _kernel_for(lstm, shared) is None  # the training pass needs gradients
        exact = scoring_pass(lstm, shared, per_row, h0, c0, dtype=torch.float64)
        mine = scoring_pass(lstm, shared, per_row, h0, c0)
        onednn = scoring_pass(lstm, shared, per_row, h0, c0, kernel=False)
    finally:
        torch.set_num_threads(was)
    assert mine.shape == exact.shape == (rows, steps, hidden)
    err, err_onednn = float((mine - exact).norm() / exact.norm()), float((onednn - exact).norm() / exact.norm())
    assert err < 1e-2 and err < 2 * err_onednn + 1e-4, (err, err_onednn)


def test_decoder_scores_samples_the_same_with_and_without_the_kernel(lstm_kernel):
    """The decoder's hidden states for S samples per sentence under bf16 autocast: the kernel's scoring pass
    (embeddings projected once per sentence) and torch's LSTM on the repeated batch agree to bf16 rounding."""
    torch.manual_seed(2)
    dec = LSTMDecoder(vocab_size=50, emb_dim=16, hidden_dim=32, latent_dim=4).eval()
    tokens, z = torch.randint(0, 50, (3, 5)), torch.randn(6, 3, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with native.native_kernels(True):
            mine = dec.forward_samples(tokens, z).float()
        with native.native_kernels(False):
            ref = dec(tokens.repeat(6, 1), z.reshape(18, 4))[0].float()
    assert mine.shape == ref.shape == (18, 5, 32)
    assert float((mine - ref).norm() / ref.norm()) < 2e-2


def test_kernel_dtypes_and_shapes(lstm_kernel):
    """The same dtypes and shapes as autocast's LSTM: bf16 outputs, each gradient in its input's dtype."""
    lstm = nn.LSTM(8, 16, batch_first=True)
    x = torch.randn(4, 5, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = run_rnn(lstm, x)
        ref_out, (ref_h, ref_c) = lstm(x)
    for mine, ref in ((out, ref_out), (h_n, ref_h), (c_n, ref_c)):
        assert mine.shape == ref.shape and mine.dtype == ref.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.shape == x.shape
    assert all(p.grad.dtype == torch.float32 and p.grad.shape == p.shape for p in lstm.parameters())


@pytest.mark.parametrize("case", ["no autocast", "no gradients", "two layers", "bidirectional", "gru", "odd input"])
def test_where_the_kernel_does_not_apply(case):
    """Evaluation, fp32, and the LSTMs the kernel does not compute stay torch's own."""
    shapes = {"two layers": dict(num_layers=2), "bidirectional": dict(bidirectional=True)}
    cls = nn.GRU if case == "gru" else nn.LSTM
    rnn = cls(9 if case == "odd input" else 8, 16, batch_first=True, **shapes.get(case, {}))
    x = torch.randn(2, 3, rnn.input_size)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case != "no autocast"), \
            torch.set_grad_enabled(case != "no gradients"):
        assert _kernel_for(rnn, x) is None


def test_decoder_trains_the_same_with_and_without_the_kernel(lstm_kernel):
    """A decoder's loss and gradients under bf16 autocast agree with and without the kernel to bf16 rounding."""
    torch.manual_seed(1)
    dec = LSTMDecoder(vocab_size=50, emb_dim=16, hidden_dim=32, latent_dim=4)
    tokens, z = torch.randint(0, 50, (6, 7)), torch.randn(6, 4)
    results = []
    for on in (True, False):
        dec.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), native.native_kernels(on):
            out, _ = dec(tokens, z)
        out.float().square().mean().backward()
        results.append([out.detach().float()] + [p.grad.clone() for p in dec.parameters() if p.grad is not None])
    for mine, ref in zip(*results):
        assert float((mine - ref).norm() / ref.norm()) < 2e-2


def test_kernel_rejects_what_it_cannot_read(lstm_kernel):
    """A tensor of another dtype or layout, or inconsistent shapes: an error naming it, not a wrong result."""
    bf16, threads = torch.bfloat16, 1
    x, h0, c0 = torch.zeros(3, 2, 8, dtype=bf16), torch.zeros(2, 16, dtype=bf16), torch.zeros(2, 16)
    w_ih, w_hh, bias = torch.zeros(64, 8, dtype=bf16), torch.zeros(64, 16, dtype=bf16), torch.zeros(64)
    lstm_kernel.forward_pass(x, h0, c0, w_ih, w_hh, bias, threads)
    with pytest.raises(RuntimeError, match="x: a contiguous CPU"):
        lstm_kernel.forward_pass(x.transpose(0, 1).contiguous().transpose(0, 1), h0, c0, w_ih, w_hh, bias, threads)
    with pytest.raises(RuntimeError, match="c0: a contiguous CPU Float"):
        lstm_kernel.forward_pass(x, h0, c0.to(bf16), w_ih, w_hh, bias, threads)
    with pytest.raises(RuntimeError, match="inconsistent shapes"):
        lstm_kernel.forward_pass(x, h0, c0, w_ih[:32], w_hh, bias, threads)
    e, z = torch.zeros(2, 3, 64), torch.zeros(4, 64)  # 2 sentences, 2 samples
    h0, c0 = torch.zeros(4, 16, dtype=bf16), torch.zeros(4, 16)
    assert lstm_kernel.score_pass(e, z, w_hh, h0, c0, threads).shape == (4, 3, 16)
    with pytest.raises(RuntimeError, match="e: a contiguous CPU Float"):
        lstm_kernel.score_pass(e.to(bf16), z, w_hh, h0, c0, threads)
    with pytest.raises(RuntimeError, match="inconsistent shapes"):  # 4 rows are not a whole number of 3 sentences
        lstm_kernel.score_pass(torch.zeros(3, 3, 64), z, w_hh, h0, c0, threads)
    assert not lstm_kernel.supports(8, 24, 1) and not lstm_kernel.supports(7, 16, 1)
    assert not lstm_kernel.supports(8, 32, 3) and lstm_kernel.supports(8, 32, 2)


def test_kernel_keeps_a_nan(lstm_kernel):
    """A NaN in the input reaches the outputs and the gradients as NaN (the bf16 rounding could turn one into
    a finite number), so the training loop's non-finite check sees a diverging run."""
    lstm = nn.LSTM(8, 16, batch_first=True)
    x = torch.randn(2, 4, 8)
    x[1, 2, 3] = float("nan")
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _kernel_for(lstm, x) is lstm_kernel
        out, (h_n, _) = run_rnn(lstm, x)
    assert torch.isnan(out[1, 2:]).all() and torch.isfinite(out[0]).all() and torch.isnan(h_n[0, 1]).all()
    out.float().sum().backward()
    assert torch.isnan(lstm.weight_hh_l0.grad).any() and torch.isnan(x.grad[1]).any()
