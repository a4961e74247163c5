"""The batch every model consumes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from textvae.data.special import PAD_ID
from textvae.reduction import token_counts


@dataclass
class Batch:
    """A padded batch of sentences.

    tokens:  LongTensor [B, T] holding ``<s> w1 .. wn </s>`` then ``<pad>``; T = max(lengths).
    lengths: LongTensor [B], n + 2 for each sentence (both special tokens included).
    index:   LongTensor [B], position of each sentence in its split (for probes and data order).
    extras:  optional per-sentence tensors (labels, dialogue context, ...), batch-first.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    index: Optional[torch.Tensor] = None
    extras: dict = field(default_factory=dict)

    @property
    def inputs(self) -> torch.Tensor:
        """Decoder inputs [B, T-1]: ``<s> w1 .. wn`` (and padding)."""
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        """Decoder targets [B, T-1]: ``w1 .. wn </s>`` (and padding)."""
        return self.tokens[:, 1:]

    @property
    def n_tokens(self) -> torch.Tensor:
        return token_counts(self.lengths)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return replace(
            self,
            tokens=self.tokens.to(device, non_blocking=True),
            lengths=self.lengths.to(device, non_blocking=True),
            index=None if self.index is None else self.index.to(device),
            extras={k: v.to(device) if torch.is_tensor(v) else v for k, v in self.extras.items()},
        )

    def select(self, idx: torch.Tensor) -> "Batch":
        """Sub-batch (or reordered batch) by row indices, trimmed to its own max length."""
        lengths = self.lengths[idx]
        t = int(lengths.max())
        return Batch(
            tokens=self.tokens[idx, :t],
            lengths=lengths,
            index=None if self.index is None else self.index[idx],
            extras={k: v[idx] if torch.is_tensor(v) else v for k, v in self.extras.items()},
        )


def collate(sequences: list[list[int]], index: Optional[list[int]] = None) -> Batch:
    """Pad id sequences that already hold ``<s> ... </s>`` into a :class:`Batch`."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    idx = None if index is None else torch.as_tensor(index, dtype=torch.long)
    return Batch(tokens=tokens, lengths=lengths, index=idx)
