"""Torch's generator states: saved with a checkpoint (training) and after each batch of a resumable
IW pass (metrics), so that a stopped process resumes drawing where it stopped."""
from __future__ import annotations

from typing import Optional

import torch


def rng_state(device: Optional[torch.device] = None) -> dict[str, torch.Tensor]:
    """This process's generator states: the CPU one, and that of the CUDA ``device`` (default: the
    current device when CUDA is in use) -- the one device a training process draws on."""
    state = {"torch": torch.get_rng_state()}
    if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: Optional[torch.device] = None) -> None:
    """Restore what :func:`rng_state` returned; a CUDA state only where ``device`` is a CUDA device (a
    checkpoint trained on a GPU resumes on a CPU without opening a CUDA context there)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)


def numbered_streams(seed: int, n: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """``n`` generators on ``device`` (where the draws they make are made), the i-th seeded from (``seed``, i):
    item i of a batch drawn with them is the same whatever ``n`` is, so that asking for five samples prints the
    three of ``n = 3``, then two more."""
    import numpy as np

    return [torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            for i in range(n)]
