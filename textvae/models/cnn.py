"""Convolutional parts: the dilated causal CNN decoder and a CNN sentence encoder."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from textvae.data.special import PAD_ID
from textvae.errors import TextVAEError
from textvae.models.decoders import DECODERS, Decoder
from textvae.models.encoders import ENCODERS


class CausalConvBlock(nn.Module):
    """Residual block x <- x + relu(conv_d([x; z])): a causal convolution with kernel k and dilation
    d over the block input, with z concatenated at every position when the block reads it
    (``latent_dim > 0``), left-padded by (k-1)·d so that output t sees inputs t - (k-1)d .. t only."""

    def __init__(self, hidden_dim: int, latent_dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.reads_z = latent_dim > 0
        self.conv = nn.Conv1d(hidden_dim + latent_dim, hidden_dim, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, H, T], z [B, D] or None -> [B, H, T]."""
        if self.reads_z and z is not None:
            x_in = torch.cat([x, z.unsqueeze(-1).expand(-1, -1, x.shape[-1])], dim=1)
        else:
            x_in = x
        return x + F.relu(self.conv(F.pad(x_in, (self.left_pad, 0))))


Z_INTO = ("every_block", "first_block")


@DECODERS.register("cnn")
class DilatedCNNDecoder(Decoder):
    """Dilated causal CNN decoder (Yang et al. 2017, "Improved variational autoencoders for text
    modeling using dilated convolutions").

    embedding -> linear to ``hidden_dim`` -> ``num_layers`` repetitions of one residual block per
    entry of ``dilations`` (kernel ``kernel_size``). ``z_into`` says which blocks read z, concatenated
    to their input at every position: ``every_block`` (the default: z reaches each layer directly) or
    ``first_block`` (z enters once, with the embedded words, as TextBox's CNNVAE feeds it, after
    kefirski/contiguous-succotash; no code of the authors' was found, and the paper's text on where z
    enters could not be read here). A small receptive field weakens the decoder, which is what keeps
    z in use. Output t depends on inputs t - R + 1 .. t with

        R = receptive_field = 1 + (kernel_size - 1) · num_layers · Σ dilations.

    Decoding state: the last R - 1 input tokens, over which each step is recomputed.
    """

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int, num_layers: int = 1,
                 input_dropout: float = 0.0, output_dropout: float = 0.0,
                 dilations: Sequence[int] = (1, 2, 4), kernel_size: int = 3, z_into: str = "every_block"):
        super().__init__()
        if kernel_size < 1 or not dilations or min(dilations) < 1 or num_layers < 1:
            raise TextVAEError(f"decoder cnn: need kernel_size >= 1, num_layers >= 1 and positive dilations, "
                               f"got kernel_size={kernel_size}, num_layers={num_layers}, dilations={list(dilations)}")
        if z_into not in Z_INTO:
            raise TextVAEError(f"decoder cnn: z_into {z_into!r}; valid: {', '.join(Z_INTO)}")
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.input = nn.Linear(emb_dim, hidden_dim)
        depth = [d for _ in range(num_layers) for d in dilations]
        self.blocks = nn.ModuleList(
            CausalConvBlock(hidden_dim, latent_dim if i == 0 or z_into == "every_block" else 0, kernel_size, d)
            for i, d in enumerate(depth))
        self.input_dropout = nn.Dropout(input_dropout)
        self.output_dropout = nn.Dropout(output_dropout)
        self.receptive_field = 1 + (kernel_size - 1) * num_layers * sum(dilations)
        self.out_dim = hidden_dim

    def forward(self, inputs: torch.Tensor, z: Optional[torch.Tensor], state: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, T], z [B, D] or None, state: earlier tokens [B, <= R-1] -> (hidden [B, T, H],
        the last R - 1 tokens)."""
        tokens = inputs if state is None else torch.cat([state, inputs], dim=1)
        x = self.input(self.input_dropout(self.embedding(tokens))).transpose(1, 2)  # [B, H, T']
        for block in self.blocks:
            x = block(x, z)
        hidden = self.output_dropout(x.transpose(1, 2)[:, -inputs.shape[1]:])
        keep = min(self.receptive_field - 1, tokens.shape[1])
        return hidden, tokens[:, tokens.shape[1] - keep:]

    @staticmethod
    def reorder_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)


@ENCODERS.register("cnn")
class CNNEncoder(nn.Module):
    """Convolutional sentence encoder (Kim 2014; as the encoder of Semeniuta et al. 2017):

        x = embedding, then ``num_layers`` times x <- relu(conv_k(x)) ('same' padding),
        h = max over the real positions t < length of x_t.

    Padding positions are zeroed before every convolution, so a sentence encodes the same alone or
    padded in a batch. ``bidirectional`` does not apply and is not taken.
    """

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, num_layers: int = 1,
                 dropout: float = 0.0, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or num_layers < 1:
            raise TextVAEError(f"encoder cnn: need kernel_size >= 1 and num_layers >= 1, "
                               f"got {kernel_size}, {num_layers}")
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim if i == 0 else hidden_dim, hidden_dim, kernel_size)
                                   for i in range(num_layers))
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)  # 'same' length, also for even kernels
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden_dim

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T], lengths [B] -> h [B, hidden_dim]."""
        real = (torch.arange(tokens.shape[1], device=tokens.device) < lengths.to(tokens.device)[:, None])
        real = real.unsqueeze(1)  # [B, 1, T]
        x = self.embedding(tokens).transpose(1, 2)  # [B, E, T]
        for conv in self.convs:
            x = F.relu(conv(F.pad(self.dropout(x) * real, self.pad)))
        return x.masked_fill(~real, float("-inf")).amax(dim=-1)
