"""Transformer parts (Vaswani et al. 2017), randomly initialised: a causal decoder that reads z
Optimus-style and a mean-pooling encoder. Both are pre-LayerNorm stacks of ``num_layers`` layers of
width ``hidden_dim`` with ``num_heads`` heads and feed-forward width ``ff_dim`` (default 4·hidden_dim).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from textvae.data.special import PAD_ID
from textvae.errors import TextVAEError
from textvae.models.decoders import DECODERS, Decoder
from textvae.models.encoders import ENCODERS

Z_INJECTIONS = ("memory", "embedding", "both")


class Positions(nn.Module):
    """Position encodings [T, H]: ``learned`` (an embedding of up to ``max_length`` positions) or
    ``sinusoidal``, PE[t, 2i] = sin(t / 10000^{2i/H}), PE[t, 2i+1] = cos(t / 10000^{2i/H})."""

    def __init__(self, kind: str, hidden_dim: int, max_length: int, where: str):
        super().__init__()
        if kind not in ("learned", "sinusoidal"):
            raise TextVAEError(f"{where}: unknown positions {kind!r}; valid: learned, sinusoidal")
        self.kind, self.hidden_dim, self.max_length, self.where = kind, hidden_dim, max_length, where
        self.embedding = nn.Embedding(max_length, hidden_dim) if kind == "learned" else None

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        if self.embedding is not None:
            if length > self.max_length:
                raise TextVAEError(f"{self.where}: sequence of {length} positions exceeds "
                                   f"max_length={self.max_length}")
            return self.embedding.weight[:length]
        t = torch.arange(length, dtype=torch.float32, device=device)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, self.hidden_dim, 2, device=device) / self.hidden_dim)
        angles = t * freq  # [T, ceil(H/2)]
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :self.hidden_dim]


def _check_heads(hidden_dim: int, num_heads: int, where: str) -> None:
    if num_heads < 1 or hidden_dim % num_heads:
        raise TextVAEError(f"{where}: hidden_dim={hidden_dim} must be a multiple of num_heads={num_heads}")


@DECODERS.register("transformer")
class TransformerDecoder(Decoder):
    """Causal Transformer decoder conditioned on z as in Optimus (Li et al. 2020), from scratch:

        x_t = W_in emb(w_t) + pos_t (+ W_e z  with z_inject 'embedding' or 'both'),
        each layer: causal self-attention, then (with 'memory' or 'both') cross-attention to the
        single memory vector m = W_m z, then the feed-forward block; a final LayerNorm.

    Self-attention masks positions > t, so hidden t depends on inputs <= t only. Decoding state: all
    earlier input tokens; each step recomputes the prefix (simple and exact).
    """

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int, num_layers: int = 1,
                 input_dropout: float = 0.0, output_dropout: float = 0.0, num_heads: int = 4,
                 ff_dim: Optional[int] = None, dropout: float = 0.1, positions: str = "learned",
                 max_length: int = 512, z_inject: str = "both"):
        super().__init__()
        where = "decoder transformer"
        _check_heads(hidden_dim, num_heads, where)
        if z_inject not in Z_INJECTIONS:
            raise TextVAEError(f"{where}: unknown z_inject {z_inject!r}; valid: {', '.join(Z_INJECTIONS)}")
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.input = nn.Linear(emb_dim, hidden_dim)
        self.positions = Positions(positions, hidden_dim, max_length, where)
        use_z = latent_dim > 0
        self.z_embed = nn.Linear(latent_dim, hidden_dim) if use_z and z_inject != "memory" else None
        self.z_memory = nn.Linear(latent_dim, hidden_dim) if use_z and z_inject != "embedding" else None
        layer_cls = nn.TransformerDecoderLayer if self.z_memory is not None else nn.TransformerEncoderLayer
        self.layers = nn.ModuleList(layer_cls(hidden_dim, num_heads, ff_dim or 4 * hidden_dim, dropout,
                                              batch_first=True, norm_first=True) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.input_dropout = nn.Dropout(input_dropout)
        self.output_dropout = nn.Dropout(output_dropout)
        self.out_dim = hidden_dim

    def forward(self, inputs: torch.Tensor, z: Optional[torch.Tensor], state: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, T], z [B, D] or None, state: earlier tokens [B, T0] -> (hidden [B, T, H],
        all tokens so far [B, T0 + T])."""
        tokens = inputs if state is None else torch.cat([state, inputs], dim=1)
        length = tokens.shape[1]
        x = self.input(self.input_dropout(self.embedding(tokens))) + self.positions(length, tokens.device)
        if self.z_embed is not None:
            x = x + self.z_embed(z).unsqueeze(1)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)  # -inf above diagonal
        if self.z_memory is not None:
            memory = self.z_memory(z).unsqueeze(1)  # [B, 1, H]
            for layer in self.layers:
                x = layer(x, memory, tgt_mask=mask, tgt_is_causal=True)
        else:
            for layer in self.layers:
                x = layer(x, src_mask=mask, is_causal=True)
        hidden = self.output_dropout(self.norm(x)[:, length - inputs.shape[1]:])
        return hidden, tokens

    @staticmethod
    def reorder_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)


@ENCODERS.register("transformer")
class TransformerEncoder(nn.Module):
    """Transformer sentence encoder: x_t = W_in emb(w_t) + pos_t, ``num_layers`` self-attention layers
    with padding positions masked out as keys, a final LayerNorm, and the mean over the real
    positions, h = (1/n) Σ_{t < n} x_t. ``bidirectional`` does not apply and is not taken; ``dropout``
    is the layers' dropout."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, num_layers: int = 1,
                 dropout: float = 0.0, num_heads: int = 4, ff_dim: Optional[int] = None,
                 positions: str = "sinusoidal", max_length: int = 512):
        super().__init__()
        where = "encoder transformer"
        _check_heads(hidden_dim, num_heads, where)
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.input = nn.Linear(emb_dim, hidden_dim)
        self.positions = Positions(positions, hidden_dim, max_length, where)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(hidden_dim, num_heads, ff_dim or 4 * hidden_dim,
                                                               dropout, batch_first=True, norm_first=True)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.out_dim = hidden_dim

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T], lengths [B] -> h [B, hidden_dim]."""
        padding = torch.arange(tokens.shape[1], device=tokens.device) >= lengths.to(tokens.device)[:, None]
        x = self.input(self.embedding(tokens)) + self.positions(tokens.shape[1], tokens.device)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        real = (~padding).unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        return (self.norm(x) * real).sum(1) / real.sum(1)
