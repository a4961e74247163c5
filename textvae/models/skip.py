"""Skip-VAE decoder (Dieng et al. 2019, "Avoiding latent variable collapse with generative skip
models"): z is connected to every layer, so no depth of the network can wash it out.

    h^1_t = LSTM_1([emb(w_t); z], h^1_{t-1}),   h^l_t = LSTM_l([h^{l-1}_t; z], h^l_{t-1}),
    output_t = [h^L_t; z],   p(w_{t+1} | w_<=t, z) = softmax(W_h h^L_t + W_z z + b)

(the output projection of TextVAE applied to [h^L_t; z] is exactly the paper's skip into the
softmax, so ``out_dim`` = hidden_dim + latent_dim). Initial states c0 = W z (bias-free), h0 =
tanh(c0) with ``z_init``, as the LSTM decoder. With latent_dim = 0 it is a plain stacked LSTM.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from textvae.data.special import PAD_ID
from textvae.models.decoders import DECODERS, Decoder, RNNDecoder

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [L, B, H]


@DECODERS.register("skip_lstm")
class SkipLSTMDecoder(Decoder):
    """Stacked single-layer LSTMs with z skipped into every layer and into the output (module docstring)."""

    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, latent_dim: int, num_layers: int = 1,
                 input_dropout: float = 0.0, output_dropout: float = 0.0, z_init: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        self.layers = nn.ModuleList(nn.LSTM((emb_dim if i == 0 else hidden_dim) + latent_dim, hidden_dim,
                                            batch_first=True) for i in range(num_layers))
        self.init_proj = (nn.Linear(latent_dim, num_layers * hidden_dim, bias=False)
                          if z_init and latent_dim > 0 else None)
        self.input_dropout = nn.Dropout(input_dropout)
        self.output_dropout = nn.Dropout(output_dropout)
        self.num_layers, self.hidden_dim = num_layers, hidden_dim
        self.out_dim = hidden_dim + latent_dim

    def initial_state(self, z: Optional[torch.Tensor], batch_size: int, device: torch.device) -> State:
        if self.init_proj is None or z is None:
            h0 = torch.zeros(self.num_layers, batch_size, self.hidden_dim, device=device)
            return h0, h0
        c0 = self.init_proj(z).view(batch_size, self.num_layers, self.hidden_dim).transpose(0, 1).contiguous()
        return torch.tanh(c0), c0

    def forward(self, inputs: torch.Tensor, z: Optional[torch.Tensor], state: Optional[State] = None
                ) -> tuple[torch.Tensor, State]:
        """inputs [B, T], z [B, D] or None -> (hidden [B, T, H + D], (h, c) each [L, B, H])."""
        if state is None:
            state = self.initial_state(z, inputs.shape[0], inputs.device)
        z_seq = None if z is None else z.unsqueeze(1).expand(-1, inputs.shape[1], -1)  # [B, T, D]
        x = self.input_dropout(self.embedding(inputs))
        hs, cs = [], []
        for layer, h0, c0 in zip(self.layers, state[0], state[1]):
            x, (h, c) = layer(x if z_seq is None else torch.cat([x, z_seq], -1), (h0[None], c0[None]))
            hs.append(h[0])
            cs.append(c[0])
        x = self.output_dropout(x)
        hidden = x if z_seq is None else torch.cat([x, z_seq], -1)
        return hidden, (torch.stack(hs), torch.stack(cs))

    reorder_state = staticmethod(RNNDecoder.reorder_state)
