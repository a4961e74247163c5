"""Sentence encoders: token ids -> one context vector per sentence.

An encoder owns its embedding (He et al. 2019 keep encoder and decoder embeddings apart) and returns
h [B, out_dim]; the posterior head turns h into q(z|x).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from textvae.data.special import PAD_ID
from textvae.models.lstm import run_rnn
from textvae.registry import Registry

ENCODERS: Registry = Registry("encoder", recipe="model.encoder: {type: NAME, options: {PARAMETER: VALUE}}",
                              supplied=("vocab_size", "emb_dim", "hidden_dim", "num_layers", "bidirectional",
                                        "dropout"))


def register_encoder(name: str) -> Callable[[Any], Any]:
    """Decorator: a sentence encoder class under ``name``, which ``model.encoder.type`` chooses; it is built
    with the supplied arguments it names (``ENCODERS.supplied``) and ``model.encoder.options``."""
    return ENCODERS.register(name)


def list_encoders() -> list[str]:
    """Every registered encoder, by name."""
    return ENCODERS.names()


def last_layer_final_state(h_n: torch.Tensor, num_layers: int, num_directions: int) -> torch.Tensor:
    """Final hidden state of the top layer, both directions concatenated: [B, dirs * H].

    ``h_n`` is [layers * dirs, B, H] with layer-major order. Reshaping it with ``view(B, -1)`` (as
    some published code does) interleaves different sentences; split the leading axis instead.
    """
    _, batch, hidden = h_n.shape
    top = h_n.view(num_layers, num_directions, batch, hidden)[-1]  # [dirs, B, H]
    return top.transpose(0, 1).reshape(batch, num_directions * hidden)


class RNNEncoder(nn.Module):
    """LSTM/GRU encoder: h is the top layer's final state at each sentence's last token (both
    directions' concatenated with ``bidirectional``), as He et al. 2019."""

    rnn_cls: type[nn.RNNBase]

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.rnn = self.rnn_cls(emb_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                                bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.out_dim = hidden_dim * self.num_directions

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (``<s> w1 .. wn </s>``), lengths [B] -> h [B, out_dim].

        The final state must be that of each sentence's own last token, not of its padding.
        One direction: the RNN is causal, so the top layer's output at position length - 1 *is*
        that state; the padded batch runs through the fused (oneDNN on CPU, cuDNN on GPU) kernel
        and padding costs only its own few positions (< 5 % with length bucketing). Two
        directions: the backward pass must start at each sentence's end, so the batch is packed.
        """
        emb = self.embedding(tokens)  # [B, T, E]
        if self.num_directions == 1:
            out, _ = run_rnn(self.rnn, emb)  # [B, T, H], top layer
            return out[torch.arange(len(lengths), device=out.device), lengths.to(out.device) - 1]
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
            h_n = h_n[0]
        return last_layer_final_state(h_n, self.num_layers, self.num_directions)


@ENCODERS.register("lstm")
class LSTMEncoder(RNNEncoder):
    rnn_cls = nn.LSTM


@ENCODERS.register("gru")
class GRUEncoder(RNNEncoder):
    rnn_cls = nn.GRU
