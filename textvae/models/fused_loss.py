"""The output layer's projection fused with its cross-entropy: nll = logsumexp(W h + b) - (W h + b)_y
computed chunk by chunk without keeping the [N, V] logits, with the gradient formed in the same pass.

:mod:`textvae.models.output_head` calls it for every model's full-softmax loss.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from textvae.models.native import native_kernel

# Tokens per chunk of the fused loss without gradients (evaluation) and in bf16: bounds its fp32
# softmax scratch to 256 x V floats (10 MB at V = 10k) whatever the number of tokens, so
# evaluation memory does not grow with its batch.
LOSS_CHUNK_TOKENS = 256
# The same in evaluation where the C++ kernel takes the chunk's bf16 logits (no fp32 scratch): 512 x V
# bf16 (10 MB at V = 10k), whose GEMM runs faster than two of 256 (benchmarks/throughput.py, iw section).
KERNEL_EVAL_CHUNK_TOKENS = 512
# Outside fp32 the loss's GEMMs go to oneDNN, which builds (JIT-compiles) a kernel for each new shape
# and caches it; on CPUs with AMX that build costs several times the GEMM itself. The token count N
# changes from batch to batch, so the GEMMs' N is padded with zero rows to a multiple of this: a
# few shapes, each built once (benchmarks/throughput.py). Zero rows add nothing to dW and their dh and
# NLL are dropped. A divisor of LOSS_CHUNK_TOKENS, so that every chunk's GEMM has a padded shape.
GEMM_ROWS = 64
# An evaluation call (no gradients) of at least this many tokens in bf16 makes W^T contiguous for its
# chunks' GEMMs (benchmarks/throughput.py, iw section).
CONTIGUOUS_WT_TOKENS = 8 * LOSS_CHUNK_TOKENS


class _LinearCrossEntropy(torch.autograd.Function):
    """nll_i = logsumexp_v(l_i)_v - l_{i, y_i} with l_i = W h_i + b, fused with its gradient.

    The reference path (``F.linear`` then ``F.cross_entropy(logits.float())``) writes the [N, V]
    logits, an fp32 copy and the fp32 log-softmax, and its backward passes over them again
    (NLL backward, log-softmax backward, cast back). Here each chunk of n tokens makes fp32
    logits [n, V] (the bias-free GEMM in the compute dtype, cast to fp32, then the fp32 bias
    added in place: the bias is never rounded to bf16) and turns them into their softmax p in place
    (without gradients, into their log-softmax, and nothing else); the NLL needs no log-softmax:

        log p_y = l_y - lse,  lse = max_v l - log max_v p   (max_v p >= 1/V never underflows),

    and, when gradients are needed, dl = p - onehot(y) is stored in the compute dtype as G [N, V]
    (its target entries formed in fp32, so p_y near 1 keeps its precision). The backward is
    then two GEMMs for any upstream gradient g [N] (db as one more column of the second):

        dh = (G W) * g[:, None],   [dW | db] = G^T [h * g[:, None] | g].

    With gradients in fp32 the whole batch is one chunk (its softmax *is* G, no scratch);
    otherwise chunks bound the fp32 scratch to ``chunk`` x V. fp32 on CPU pads the vocabulary
    to a multiple of 16 with zero rows of W and bias -inf (probability 0, gradient 0): MKL's
    fp32 GEMM h W^T is markedly faster when its output width is a multiple of 16 (measured by
    ``benchmarks/throughput.py``); the padded copy of W costs one V x H write.

    In bf16 on CPU the elementwise part (cast, bias, softmax, NLL, G) of each chunk is one C++ kernel
    where it builds (``softmax_rows``, :mod:`textvae.models.native`): one pass per row in cache
    instead of torch's passes over the whole [n, V] chunk; the same formulas, its own exp.

    It is the exact full-vocabulary cross-entropy (no sampling): only rounding differs.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                targets: torch.Tensor, dtype: torch.dtype, chunk: Optional[int], grad_enabled: bool) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.float()  # added to the fp32 logits, never rounded to bf16
            n_tokens, vocab = h.shape[0], w.shape[0]
            pad = -vocab % 16 if dtype == torch.float32 and h.device.type == "cpu" else 0
            if pad:
                w = F.pad(w, (0, 0, 0, pad))
                b = F.pad(w.new_zeros(vocab) if b is None else b, (0, pad), value=-math.inf)
            # (needs_input_grad is set for parameters even under no_grad: evaluation must not pay
            # for a gradient buffer it never uses)
            need_grad = grad_enabled and any(ctx.needs_input_grad[:3])
            rows_kernel = native_kernel("softmax_rows") if dtype == torch.bfloat16 and h.device.type == "cpu" else None
            if need_grad and dtype == torch.float32:
                chunk = max(n_tokens, 1)
            elif chunk is None:
                chunk = KERNEL_EVAL_CHUNK_TOKENS if rows_kernel is not None and not need_grad else LOSS_CHUNK_TOKENS
            nll = torch.empty(n_tokens, device=h.device, dtype=torch.float32)
            grad_logits = None  # G [N, V + pad]
            if dtype != torch.float32:  # h and G get zero rows up to a multiple of GEMM_ROWS (see there)
                h = F.pad(h, (0, 0, 0, -n_tokens % GEMM_ROWS))
                if need_grad:
                    grad_logits = torch.empty(h.shape[0], vocab + pad, device=h.device, dtype=dtype)
                    grad_logits[n_tokens:] = 0
            # [H, V + pad]. In training a view: torch's transposing copy costs more than its few chunks'
            # GEMMs gain (the bf16 working copy is kept transposed instead, so its view is contiguous).
            # An evaluation call of many chunks (the IW pass: ~64) pays for the copy many times over.
            w_t = w.t()
            if not need_grad and not w_t.is_contiguous() and n_tokens >= CONTIGUOUS_WT_TOKENS and dtype != torch.float32:
                w_t = w_t.contiguous()
            if rows_kernel is not None and b is None:
                b = torch.zeros(vocab, device=h.device)
            for start in range(0, n_tokens, chunk):
                yc = targets[start:start + chunk]
                logits = torch.mm(h[start:start + chunk], w_t)[:yc.shape[0]]  # [n, V + pad] in the compute dtype
                if rows_kernel is not None:  # cast, bias, softmax, NLL and G in one pass per row
                    nll[start:start + chunk] = (
                        rows_kernel.nll_and_grad(logits, b, yc, grad_logits[start:start + yc.shape[0]]) if need_grad
                        else rows_kernel.nll_only(logits, b, yc))
                    continue
                rows = torch.arange(yc.shape[0], device=h.device)
                # fp32 logits [n, V + pad]; the bias rides in this pass, not in the GEMM (addmm
                # first writes the broadcast bias into its output, one more pass over [n, V]). The
                # cast comes first: on CPU the mixed-dtype add (bf16 logits + fp32 bias, the same
                # fp32 sums) takes a slow element-by-element path, far slower than the cast plus an fp32 add_
                logits = logits.float()
                logits = logits if b is None else logits.add_(b)
                if not need_grad:  # evaluation: one pass, in place, nothing kept
                    nll[start:start + chunk] = -torch.log_softmax(logits, -1, out=logits)[rows, yc]
                    continue
                logit_y, logit_max = logits[rows, yc], logits.amax(-1)
                probs = torch.softmax(logits, -1, out=logits)  # in place: the logits are not needed again
                nll[start:start + chunk] = logit_max - probs.amax(-1).log() - logit_y
                probs[rows, yc] -= 1.0
                if grad_logits is None:  # fp32: one chunk, the scratch is G itself
                    grad_logits = probs
                else:
                    grad_logits[start:start + probs.shape[0]] = probs
        ctx.save_for_backward(h, w, grad_logits)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.vocab, ctx.n_tokens = vocab, n_tokens
        return nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_nll: torch.Tensor):
        h, w, grad_logits = ctx.saved_tensors  # h and G with their zero rows (GEMM_ROWS)
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        n_tokens = ctx.n_tokens
        g = F.pad(grad_nll.to(grad_logits.dtype), (0, h.shape[0] - n_tokens))  # [N (+ zero rows)]
        grad_h = grad_w = grad_b = None
        with torch.autocast(h.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_h = (grad_logits @ w)[:n_tokens].mul_(g[:n_tokens].unsqueeze(1)).to(h_dtype)  # [N, H]
            if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
                n, hid = h.shape
                rhs = h * g.unsqueeze(1)  # [N, H]
                if ctx.needs_input_grad[2]:
                    # db = G^T g rides in dW's GEMM as one more column of its right operand (zero-padded
                    # to 16 columns, aligned): one pass over G instead of a second one for a GEMV
                    rhs = torch.cat([rhs, g.unsqueeze(1), rhs.new_zeros(n, 15)], dim=1)  # [N, H + 16]
                # dW in W's own layout. W stored transposed (the bf16 working copy, textvae.training.
                # working_copies): dW^T = rhs^T G is one GEMM with contiguous operands, and its transpose
                # is dW as autograd keeps it; otherwise G^T rhs, whose [V, H] slice is copied contiguous
                transposed = w.t().is_contiguous() and not w.is_contiguous()
                both = ((rhs.t().contiguous() @ grad_logits).t() if transposed
                        else grad_logits.t() @ rhs)  # [V + pad, H (+ 16)]; padding rows dropped below
                if ctx.needs_input_grad[2]:
                    grad_b = both[:ctx.vocab, hid].to(b_dtype).contiguous()  # [V]
                if ctx.needs_input_grad[1]:
                    grad_w = both[:ctx.vocab, :hid].to(w_dtype)  # [V, H]
                    grad_w = grad_w if transposed else grad_w.contiguous()
        return grad_h, grad_w, grad_b, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         targets: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """Per-token NLL [N] of ``targets`` [N] under softmax(hidden [N, H] W^T + b), fused (see
    :class:`_LinearCrossEntropy`). The matmuls run in the autocast dtype when autocast is on (bf16
    on CPU), else in the dtype of ``hidden``; softmax statistics are always fp32. ``chunk``: tokens
    per chunk (None: :data:`LOSS_CHUNK_TOKENS`, or :data:`KERNEL_EVAL_CHUNK_TOKENS` where the C++
    kernel evaluates)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, dtype, chunk, torch.is_grad_enabled())
