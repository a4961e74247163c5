"""Autoregressive decoders: (inputs, z) -> hidden states, one per input position.

The output projection to the vocabulary belongs to the model (:mod:`textvae.models.output_head`), so the
loss can project only the non-padding positions.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from textvae.data.special import PAD_ID
from textvae.models.lstm import run_rnn, run_rnn_shared
from textvae.models.native import native_kernel
from textvae.registry import Registry

DECODERS: Registry = Registry("decoder", recipe="model.decoder: {type: NAME, options: {PARAMETER: VALUE}}",
                              supplied=("vocab_size", "emb_dim", "hidden_dim", "latent_dim", "num_layers",
                                        "input_dropout", "output_dropout", "z_init", "z_concat"))


def register_decoder(name: str) -> Callable[[Any], Any]:
    """Decorator: a decoder class under ``name``, which ``model.decoder.type`` chooses; it is built with the
    supplied arguments it names (``DECODERS.supplied``) and ``model.decoder.options``."""
    return DECODERS.register(name)


def list_decoders() -> list[str]:
    """Every registered decoder, by name."""
    return DECODERS.names()


class _CountedDropout(torch.autograd.Function):
    """The ``dropout`` kernel's y = x * m / (1 - p), whose mask m is a function of (seed, element index):
    the backward recomputes it from the seed instead of keeping it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float, seed: int, kernel: Any) -> torch.Tensor:
        ctx.p, ctx.seed, ctx.kernel = p, seed, kernel
        return kernel.dropout(x.contiguous(), p, seed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor):
        # the gradient has x's shape, so its element i (contiguous) meets the mask's element i
        return ctx.kernel.dropout(grad.contiguous(), ctx.p, ctx.seed), None, None, None


class Dropout(nn.Module):
    """Inverted dropout, x * m / (1 - p) with m ~ Bernoulli(1 - p) per element: the distribution
    of ``nn.Dropout``. On CPU, fp32 or bf16, the mask comes from textvae's ``dropout`` kernel
    (:mod:`textvae.models.native`): m_i = [u_i >= p] with u_i a 32-bit uniform hashed from a seed drawn
    from torch's generator and the element's index (SplitMix64), so ``torch.manual_seed`` still fixes
    it. Elsewhere (or without the kernel) it is drawn as ``U(0, 1) >= p`` in fp32. Both are faster
    than ``nn.Dropout``, whose ``bernoulli_`` draws one element at a time from torch's CPU generator
    (two calls per training step of the recurrent decoders; ``benchmarks/throughput.py`` measures
    them)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return x * 0.0
        kernel = (native_kernel("dropout") if x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                  else None)
        if kernel is not None:
            seed = int(torch.empty((), dtype=torch.int64).random_())  # one draw of torch's generator
            return _CountedDropout.apply(x, self.p, seed, kernel)
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class Decoder(nn.Module):
    """What a registered decoder is: ``forward(inputs [B, T], z [B, D] or None, state=None)`` ->
    (hidden [B, T, out_dim], state), and :meth:`forward_samples`."""

    def forward_samples(self, inputs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Hidden states [S·B, T, out_dim] of every (sample, sentence) pair for inputs [B, T] and S
        samples z [S, B, D], rows sample-major: the forward of the batch repeated S times. A decoder
        whose computation on the inputs is the same for every sample overrides it to do that once."""
        s, b, d = z.shape
        return self(inputs.repeat(s, 1), z.reshape(s * b, d))[0]


class RNNDecoder(Decoder):
    """LSTM/GRU decoder conditioned on z the He et al. (2019) way.

    * initial state: c0 = W z (bias-free), h0 = tanh(c0), one slice of W per layer (``z_init``);
    * z concatenated to every input embedding (``z_concat``);
    * ordinary dropout on input embeddings and on RNN outputs.
    With ``latent_dim = 0`` it is the LSTM language model's decoder.
    """

    rnn_cls: type[nn.RNNBase]

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int,
                 num_layers: int = 1, input_dropout: float = 0.0, output_dropout: float = 0.0,
                 z_init: bool = True, z_concat: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.z_concat = z_concat and latent_dim > 0
        self.rnn = self.rnn_cls(emb_dim + (latent_dim if self.z_concat else 0), hidden_dim,
                                num_layers=num_layers, batch_first=True)
        self.init_proj = (nn.Linear(latent_dim, num_layers * hidden_dim, bias=False)
                          if z_init and latent_dim > 0 else None)
        self.input_dropout = Dropout(input_dropout)
        self.output_dropout = Dropout(output_dropout)
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.out_dim = hidden_dim

    def initial_state(self, z: Optional[torch.Tensor], batch_size: int, device: torch.device) -> Any:
        if self.init_proj is None or z is None:
            h0 = torch.zeros(self.num_layers, batch_size, self.hidden_dim, device=device)
            return (h0, h0) if self.rnn_cls is nn.LSTM else h0
        c0 = self.init_proj(z).view(batch_size, self.num_layers, self.hidden_dim).transpose(0, 1).contiguous()
        h0 = torch.tanh(c0)
        return (h0, c0) if self.rnn_cls is nn.LSTM else h0

    def forward(self, inputs: torch.Tensor, z: Optional[torch.Tensor], state: Any = None
                ) -> tuple[torch.Tensor, Any]:
        """inputs [B, T] token ids, z [B, D] or None -> (hidden [B, T, H], final state)."""
        emb = self.input_dropout(self.embedding(inputs))
        if self.z_concat:
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, emb.shape[1], -1)], dim=-1)
        if state is None:
            state = self.initial_state(z, inputs.shape[0], inputs.device)
        out, state = run_rnn(self.rnn, emb, state)
        return self.output_dropout(out), state

    def forward_samples(self, inputs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """As :meth:`Decoder.forward_samples`; in evaluation with z concatenated to the embeddings, the
        embeddings' share of the input projection is computed once per sentence where the LSTM kernel
        runs it (``run_rnn_shared``)."""
        if not self.training and self.z_concat:
            s, b, d = z.shape
            rows = z.reshape(s * b, d)
            out = run_rnn_shared(self.rnn, self.embedding(inputs), rows, self.initial_state(rows, s * b, inputs.device))
            if out is not None:
                return out
        return super().forward_samples(inputs, z)

    @staticmethod
    def reorder_state(state: Any, index: torch.Tensor) -> Any:
        """Select rows of the state (batch is dim 1 of each [L, B, H] tensor)."""
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)
        return state.index_select(1, index)


@DECODERS.register("lstm")
class LSTMDecoder(RNNDecoder):
    rnn_cls = nn.LSTM


@DECODERS.register("gru")
class GRUDecoder(RNNDecoder):
    rnn_cls = nn.GRU
