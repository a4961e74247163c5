"""Z-forcing auxiliary cost (Goyal et al. 2017, "Z-Forcing: Training Stochastic Recurrent
Networks"), for a sentence VAE with one latent z.

A backward LSTM reads the decoder targets y = w1 .. wn </s> from right to left; its state b_t
summarises the rest of the sentence y_t .. y_n. z must predict those states under a diagonal
Gaussian whose mean and log-variance an MLP computes from z:

    [m, l] = clamp(MLP(z_b), -8, 8)
    extra_b = weight * Σ_{t=1}^{n+1} -log N(sg(b_t); tanh(m), diag exp(l))   [+ backward LM]

The clamp and the tanh on the mean are the authors' code's (``sordonia/zforcing``, ``model.py``: an
LSTM state lies in (-1, 1), and the clamp bounds the log-variance); their MLP's hidden unit is a
clamped leaky ReLU, here tanh.

The paper's latents z_t are per step and predict b_t each; with a single z, the same prediction
serves every step, so z has to encode what the future looks like throughout the sentence. The
target is detached (sg): the aux cost trains z, the encoder and the MLP, never b, which could
otherwise make itself trivially predictable. In the paper b is trained through the inference
network, which reads it; our posterior does not, so ``backward_lm: true`` (default) trains the
backward LSTM as a right-to-left language model, b_{t+1} predicting y_t, which is what keeps its
states informative about the future.

``weight`` is constant and the backward LM always trains; the authors' training script instead anneals
the auxiliary weight linearly per update (from ``aux_sta`` to ``aux_end``) and trains the backward LM only
while that weight is positive.

Batch use: each sentence is reversed within its own length (padding stays at the end), packed so
padding never enters the LSTM, and the states are put back in left-to-right order; all sums are
masked to each sentence's n + 1 target positions.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from textvae.config import NON_NEGATIVE
from textvae.data.special import PAD_ID
from textvae.models.distributions import DiagGaussian
from textvae.remedies.base import Remedy, register_remedy


def reverse_index(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """[B, T] index that reverses the first lengths[b] positions of each row and keeps the rest."""
    pos = torch.arange(t, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(pos < n, n - 1 - pos, pos)


@register_remedy("zforcing")
class ZForcing(Remedy):
    """Z-forcing (Goyal et al. 2017): extra_b = weight Σ_t -log N(sg(b_t); tanh(m), diag exp(l)),
    [m, l] = clamp(MLP(z_b), -8, 8), b_t the states of a backward LSTM over the targets."""

    RANGES = {"weight": NON_NEGATIVE}

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int,
                 weight: float = 1.0, backward_lm: bool = True):
        super().__init__()
        self.weight = weight
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.rnn = nn.LSTM(emb_dim, hidden_dim, batch_first=True)
        self.predictor = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Tanh(),
                                       nn.Linear(hidden_dim, 2 * hidden_dim))
        self.lm = nn.Linear(hidden_dim, vocab_size) if backward_lm else None

    def backward_states(self, targets: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """b [B, T, H] in left-to-right order: b_t has read y_n .. y_t (zeros past each length)."""
        t = targets.shape[1]
        index = reverse_index(n, t)  # [B, T]
        reversed_tokens = targets.gather(1, index)
        packed = pack_padded_sequence(self.embedding(reversed_tokens), n.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t)
        return out.gather(1, index.unsqueeze(-1).expand_as(out))

    def extra_loss(self, model: Any, batch: Any, z: torch.Tensor, h: torch.Tensor, step: int) -> torch.Tensor:
        targets, n = batch.targets, batch.n_tokens
        b = self.backward_states(targets, n)  # [B, T, H]
        valid = targets != PAD_ID  # [B, T]
        mean, logvar = self.predictor(z).clamp(-8.0, 8.0).unsqueeze(1).chunk(2, dim=-1)  # each [B, 1, H]
        mean = torch.tanh(mean)
        nll = -DiagGaussian(mean, logvar).log_prob(b.detach())  # [B, T]
        loss = self.weight * (nll * valid).sum(-1)
        if self.lm is not None:
            # b_{t+1} (which has read y_n .. y_{t+1}) predicts y_t, for t = 1 .. n.
            mask = valid[:, 1:]
            logits = self.lm(b[:, 1:][mask])
            token_nll = F.cross_entropy(logits.float(), targets[:, :-1][mask], reduction="none")
            rows = torch.arange(len(n), device=n.device).unsqueeze(1).expand_as(mask)[mask]
            loss = loss.index_add(0, rows, token_nll.to(loss.dtype))
        return loss
