"""Sampled softmax for training only (Jean et al. 2015, "On Using Very Large Target Vocabulary for
Neural Machine Translation"; Bengio & Senécal 2008's importance sampling of the normaliser).

The full reconstruction term needs every token's log-normaliser log Σ_v exp(l_v), l = W h + b, which
is about 70 % of the FLOPs of a PTB 256/256/32 training step (V = 10k). Here one set S of n
candidate words is drawn per step from a proposal q (the training unigram^alpha), shared by every
token of the batch, duplicates removed; each word's inclusion probability is
P(w in S) = 1 - (1 - q_w)^n. Each token's loss is then the cross-entropy over its target and the
candidates, with logits corrected by the log inclusion probability:

    l'_w = l_w - log P(w in S),   nll ~= -l'_y + log(exp(l'_y) + Σ_{w in S, w != y} exp(l'_w)),

which costs H·|S| instead of H·V multiply-adds per token. It is a biased, consistent estimate of
the softmax over the words the proposal can draw (as n -> ∞; ``<pad>`` and ``<s>``, never targets, have
proposal 0, so their logits get no gradient here, and their small share of the full softmax that
evaluation uses stays as initialised), so it is a training lever only: the model scores the full softmax whenever it is
in ``eval()`` mode, and the training loop validates with that.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from textvae.data.special import BOS_ID, PAD_ID
from textvae.errors import TextVAEError


GEMM_ALIGN = 64


class SampledSoftmax:
    """Draws the shared candidates and computes per-token sampled-softmax NLLs.

    ``counts`` [V]: training token counts, on the model's device (the proposal is counts^alpha,
    never proposing ``<pad>`` or ``<s>``, which are never targets); ``num_samples``: draws per
    step (n above).
    """

    def __init__(self, counts: torch.Tensor, num_samples: int, alpha: float = 0.75):
        if num_samples <= 0:
            raise TextVAEError(f"sampled softmax needs num_samples > 0, got {num_samples}")
        q = counts.double().clamp(min=1.0).pow(alpha)
        q[[PAD_ID, BOS_ID]] = 0.0
        self.q = (q / q.sum()).float()  # [V]
        self.num_samples = num_samples
        # log P(w in S) for every word: -expm1(n log1p(-q)) keeps rare words' tiny values exact
        self.log_inclusion = torch.log(-torch.expm1(num_samples * torch.log1p(-self.q.double()))).float()

    def candidates(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The distinct sampled word ids [|S|] of one step."""
        draws = torch.multinomial(self.q, self.num_samples, replacement=True, generator=generator)
        return torch.unique(draws)

    def __call__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 targets: torch.Tensor, candidates: Optional[torch.Tensor] = None, sparse: bool = False
                 ) -> torch.Tensor:
        """Per-token sampled NLL [N] of ``targets`` [N] given ``hidden`` [N, H] (the decoder
        output), the output layer ``weight`` [V, H] / ``bias`` [V]; ``candidates`` defaults to a
        fresh draw. ``sparse``: the weight's gradient holds only the rows read (targets and
        candidates) instead of a dense [V, H] mostly of zeros. The matmuls follow autocast; the
        log-sum-exp is fp32."""
        cand = self.candidates() if candidates is None else candidates
        n, s = hidden.shape[0], cand.shape[0]
        # The GEMM's free dimensions are padded to multiples of GEMM_ALIGN: |S| is random and N
        # varies, and oneDNN (bf16 on CPU) builds and JIT-compiles a primitive for each new shape,
        # three per step (benchmarks/throughput.py measures the cost).
        # Padded candidates are <pad>'s row, masked out by position; padded tokens are zero rows.
        cand = F.pad(cand, (0, -s % GEMM_ALIGN), value=PAD_ID)  # [S'] (S' >= |S|)
        # [N, H], [S', H]
        w_y, w_s = F.embedding(targets, weight, sparse=sparse), F.embedding(cand, weight, sparse=sparse)
        true = (hidden.float() * w_y.float()).sum(-1)  # [N], fp32: N x H work only
        neg = (F.pad(hidden, (0, 0, 0, -n % GEMM_ALIGN)) @ w_s.t())[:n].float()  # [N, S'], the GEMM (autocast dtype)
        if bias is not None:
            true, neg = true + bias[targets], neg + bias[cand]
        true = true - self.log_inclusion[targets]
        # an accidental hit (a candidate equal to the target) is the target itself: counted once
        drop = (cand.unsqueeze(0) == targets.unsqueeze(1)) | (torch.arange(cand.shape[0], device=cand.device) >= s)
        neg = (neg - self.log_inclusion[cand]).masked_fill(drop, float("-inf"))
        return torch.logaddexp(true, torch.logsumexp(neg, dim=-1)) - true
