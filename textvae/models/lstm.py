"""The recurrent layers' bf16 passes on CPUs with AMX, in textvae's ``lstm_bf16`` kernel.

Under bf16 autocast a one-layer LSTM's forward and backward are oneDNN's fused kernels; at PTB's sizes
(batch 32, hidden 256) the backward dominates, most of it around each step's small GEMM
(benchmarks/NOTES.md, "bf16 LSTM").
The kernel (:mod:`textvae.models.native`, ``csrc/lstm_bf16.cpp``) runs both recurrences in one parallel
region per pass, each thread owning a block of hidden units with their four gates, each step's GEMM on
oneDNN's AMX micro-kernel with the weights packed once per call; the forward saves the gates, so the
backward has no recomputation. The weight and input gradients are then three GEMMs over all steps here.
The arithmetic is autocast's (bf16 operands, fp32 sums and cell state) to rounding: the gates are summed
in fp32 where oneDNN's are too, the biases are added in fp32 (autocast rounds them to bf16 first).

It applies to a one-layer, one-direction, batch-first ``nn.LSTM`` with biases, in training (gradients
on), under CPU bf16 autocast, where the kernel builds and the CPU has AMX; everything else is ``rnn(x)``.

Scoring S samples of z per sentence (the importance-weighted likelihood, no gradients) has its own entry,
:func:`run_rnn_shared`: the input of row (s, b) at step t is (x_{b,t}, z_{s,b}), so W_ih's x part is
applied once per sentence and its z part once per row, and only W_hh h_{t-1} is left for each step.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from textvae.models.native import native_kernel

_BF16 = torch.bfloat16


class _LSTMLayer(torch.autograd.Function):
    """(out [B, T, H] bf16, h_n [B, H] bf16, c_n [B, H] bf16) of a batch-first LSTM layer, by the kernel."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_ih: torch.Tensor,
                w_hh: torch.Tensor, b_ih: torch.Tensor, b_hh: torch.Tensor, kernel: Any, threads: int):
        x_tm = x.to(_BF16).transpose(0, 1).contiguous()  # [T, B, I]: each step's rows contiguous
        w_ih16, w_hh16 = w_ih.to(_BF16), w_hh.to(_BF16)
        hbuf, cbuf, gates, tc = kernel.forward_pass(
            x_tm, h0.to(_BF16).contiguous(), c0.float().contiguous(), w_ih16, w_hh16, b_ih.float() + b_hh.float(),
            threads)
        ctx.save_for_backward(x_tm, hbuf, cbuf, gates, tc, w_ih16, w_hh16)
        ctx.kernel, ctx.threads = kernel, threads
        ctx.dtypes = (x.dtype, h0.dtype, c0.dtype, w_ih.dtype, w_hh.dtype, b_ih.dtype, b_hh.dtype)
        # hbuf [T + 1, B, H]: h0, then the outputs
        return hbuf[1:].transpose(0, 1), hbuf[-1], cbuf[-1].to(_BF16)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_out: Optional[torch.Tensor], d_hn: Optional[torch.Tensor], d_cn: Optional[torch.Tensor]):
        x_tm, hbuf, cbuf, gates, tc, w_ih16, w_hh16 = ctx.saved_tensors
        steps, batch, hidden = tc.shape
        d_out = (torch.zeros_like(tc, dtype=_BF16) if d_out is None
                 else d_out.to(_BF16).transpose(0, 1).contiguous())  # [T, B, H]
        d_hn, d_cn = (tc.new_zeros(batch, hidden) if d is None else d.float().contiguous() for d in (d_hn, d_cn))
        da, db, dh0, dc0 = ctx.kernel.backward_pass(cbuf, gates, tc, w_hh16, d_out, d_hn, d_cn, ctx.threads)
        da = da.view(steps * batch, 4 * hidden)  # rows (t, b), as x_tm's and hbuf's
        need = ctx.needs_input_grad
        grads = [
            (da @ w_ih16).view(steps, batch, -1).transpose(0, 1) if need[0] else None,  # dx [B, T, I]
            dh0, dc0,
            da.t() @ x_tm.view(steps * batch, -1) if need[3] else None,  # dW_ih
            da.t() @ hbuf[:steps].view(steps * batch, hidden) if need[4] else None,  # dW_hh, h_{t-1} for every t
            db, db]
        return tuple(None if g is None else g.to(dt) for g, dt in zip(grads, ctx.dtypes)) + (None, None)


def _kernel_for(rnn: nn.RNNBase, x: Any, training: bool = True) -> Optional[Any]:
    """The ``lstm_bf16`` kernel where it runs this call (its training pass with gradients on, its
    scoring pass with them off), else None."""
    if not (type(rnn) is nn.LSTM and rnn.num_layers == 1 and not rnn.bidirectional and rnn.batch_first
            and rnn.proj_size == 0 and rnn.bias and isinstance(x, torch.Tensor) and x.device.type == "cpu"
            and x.dim() == 3 and x.shape[0] > 0 and x.shape[1] > 0 and torch.is_grad_enabled() == training
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == _BF16):
        return None
    kernel = native_kernel("lstm_bf16")
    if kernel is None or not kernel.available():
        return None
    threads = torch.get_num_threads()
    fits = (kernel.supports(x.shape[2], rnn.hidden_size, threads) if training  # units split over the threads
            else kernel.splits(rnn.hidden_size, 1))  # rows split over the threads: H a multiple of 16
    return kernel if fits else None


def _bf16_values(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bf16, as fp32: an fp32 GEMM of such operands sums their exact products in fp32, as the
    bf16 GEMMs of autocast and of the kernel do."""
    return t.to(_BF16).float()


def run_rnn_shared(rnn: nn.RNNBase, shared: torch.Tensor, per_row: torch.Tensor, state: Any) -> Optional[torch.Tensor]:
    """Outputs [R, T, H] of ``rnn`` over R = S·B rows whose input at step t is cat(shared[r mod B, t],
    per_row[r]) (shared [B, T, E], per_row [R, D]; rows sample-major, as ``shared.repeat(S, 1, 1)``),
    from ``state`` (h0, c0), each [1, R, H], where the kernel's ``score_pass`` runs it: without
    gradients, under CPU bf16 autocast, a one-layer batch-first LSTM with biases. The input projection
    is then x W_x^T + b (per sentence) + z W_z^T (per row), each summed in fp32 from bf16 operands,
    instead of a [R, T, E + D] input. None elsewhere: the caller runs ``rnn`` on that input."""
    kernel = _kernel_for(rnn, shared, training=False)
    if kernel is None:
        return None
    batch, steps, width = shared.shape
    w_ih = rnn.weight_ih_l0  # [4H, E + D]: the x part, then the z part
    with torch.autocast("cpu", enabled=False):
        bias = rnn.bias_ih_l0.float() + rnn.bias_hh_l0.float()
        e = torch.addmm(bias, _bf16_values(shared).view(batch * steps, width), _bf16_values(w_ih[:, :width]).t())
        z = _bf16_values(per_row) @ _bf16_values(w_ih[:, width:]).t()  # [R, 4H]
        h0, c0 = state
        return kernel.score_pass(e.view(batch, steps, -1), z, rnn.weight_hh_l0.to(_BF16), h0[0].to(_BF16).contiguous(),
                                 c0[0].float().contiguous(), torch.get_num_threads())


def run_rnn(rnn: nn.RNNBase, x: Any, state: Any = None) -> tuple[torch.Tensor, Any]:
    """``rnn(x, state)``; a one-layer batch-first LSTM trained under CPU bf16 autocast runs in the
    ``lstm_bf16`` kernel where it can (same outputs, dtypes and state shapes as autocast's)."""
    kernel = _kernel_for(rnn, x)
    if kernel is None:
        return rnn(x, state)
    batch, hidden = x.shape[0], rnn.hidden_size
    h0, c0 = ((x.new_zeros(batch, hidden),) * 2 if state is None else (s[0] for s in state))  # [1, B, H] -> [B, H]
    params = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    with torch.autocast("cpu", enabled=False):
        out, h_n, c_n = _LSTMLayer.apply(x, h0, c0, *params, kernel, torch.get_num_threads())
    return out, (h_n.unsqueeze(0), c_n.unsqueeze(0))
