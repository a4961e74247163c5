"""bf16 working copies of the weights that only enter bf16 matrix products (``train.bf16_weight_copies``).

Mixed-precision training as Micikevicius et al. (2018, "Mixed Precision Training") describe it: fp32
master weights, which the optimiser updates, and a low-precision copy of each, which the forward and
backward passes use. Under plain autocast every step pays for that copy twice, in passes over the
whole weight in memory: the forward casts the fp32 weight to bf16 (read 4 B, write 2 B per element)
and the backward widens the bf16 gradient to fp32 (read 2, write 4), which the clip and SGD then read
again. Here the forward and backward run on bf16 leaf tensors (autocast leaves bf16 inputs as they
are, so their gradients stay bf16), and one pass per weight applies SGD to the master from the bf16
gradient and writes the new bf16 copy (the ``sgd_bf16`` kernel of :mod:`textvae.models.native`,
or torch operations where it does not build).

The arithmetic is autocast's over the masters: the forward sees the same bf16 values, the gradients
are the same bf16 values (autocast's backward only widens them exactly), and the update

    master <- master - lr * s * grad,   s = min(1, clip / (||g|| + 1e-6))   (the clip's scale)

differs only in rounding (lr * s is one factor here, torch scales the gradient first).

Which weights: those of every ``nn.LSTM`` and the output projection of a model with the fused
full-softmax loss (not one tied to an embedding, whose gradient is sparse, nor the sampled softmax's
rows). Where: bf16 on the CPU, one process, plain SGD (momentum and weight decay 0, so the update is the
kernel's), :func:`working_copies_apply`. A master changed anywhere else (a remedy's own optimiser
steps, the plateau schedule's best-model reload, a resumed checkpoint, a re-initialised decoder)
has a new version counter, and its copy is cast anew before the next forward. The output projection's
master, and so its copy, is laid out transposed in memory (:data:`TRANSPOSED`; the same values), and the
gradient norm that the clip needs is summed from the copies' bf16 gradients by the same kernel, without
an fp32 copy of each.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.func import functional_call

from textvae.config import RunConfig
from textvae.models.native import native_kernel
from textvae.models.output_head import OutputHead


# Masters (and so their copies and the copies' gradients) kept transposed in memory, a [V, H] view of a
# contiguous [H, V] tensor: the fused loss's forward GEMM then reads W^T contiguous, and its backward
# writes dW^T = [h | 1]^T G as one GEMM whose transpose is the gradient in the copy's own layout, which
# autograd keeps without copying (textvae.models.fused_loss). Saved checkpoints are contiguous as always.
TRANSPOSED = ("projection.weight",)


def clip_scale(norm: float, max_norm: float) -> float:
    """The factor gradient clipping multiplies every gradient by: min(1, max_norm / (norm + 1e-6)),
    as ``torch.nn.utils.clip_grad_norm_``."""
    return max_norm / (norm + 1e-6) if norm + 1e-6 > max_norm else 1.0


def working_copy_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get working copies: every ``nn.LSTM`` weight, and ``projection.weight``
    where the output head computes the fused full softmax; never a parameter shared by two modules."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    names = [f"{prefix}.{name}" for prefix, module in model.named_modules() if isinstance(module, nn.LSTM)
             for name, _ in module.named_parameters(recurse=False) if name.startswith("weight_")]
    if isinstance(model, OutputHead) and model.fused_loss and model.sampled_softmax is None:
        names.append("projection.weight")
    params = dict(model.named_parameters())
    return [n for n in names if n in params and params[n].requires_grad and counts[id(params[n])] == 1]


def working_copies_apply(cfg: RunConfig, world_size: int, device: torch.device) -> bool:
    """Whether ``train.bf16_weight_copies`` takes effect: bf16 on the CPU (on a GPU the casts are cheap
    next to the step), one process (DDP all-reduces the masters' gradients), plain SGD (the update
    is :func:`WorkingCopies.step`'s)."""
    return (cfg.train.bf16_weight_copies and cfg.train.precision == "bf16" and device.type == "cpu"
            and world_size == 1 and cfg.optim.plain_sgd)


class WorkingCopies:
    """The bf16 copies of ``model``'s parameters ``names``, with their update (see the module's docstring)."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.model, self.names = model, list(names)
        params = dict(model.named_parameters())
        for name in TRANSPOSED:
            if name in self.names:
                params[name].data = params[name].data.t().contiguous().t()  # same values, [H, V] in memory
        self.copies: dict[str, torch.Tensor] = {}  # name -> bf16 leaf tensor (requires grad)
        self.cast_from: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (master, its version) at the cast

    def refresh(self) -> dict[str, torch.Tensor]:
        """The copies, each cast anew from its master if the master changed since."""
        params = dict(self.model.named_parameters())
        for name in self.names:
            master = params[name]
            seen = self.cast_from.get(name)
            if seen is None or seen[0] is not master or seen[1] != master._version:
                # the copy takes the master's layout (``to`` keeps a dense tensor's strides)
                self.copies[name] = master.detach().to(torch.bfloat16).requires_grad_()
                self.cast_from[name] = (master, master._version)
        return self.copies

    def __call__(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)`` (the model) with the copies in place of their masters."""
        return functional_call(module, self.refresh(), args, kwargs, tie_weights=False, strict=False)

    def gradients(self) -> list[torch.Tensor]:
        """The copies' bf16 gradients of the last backward pass."""
        return [c.grad for c in self.copies.values() if c.grad is not None]

    def gradient_norm(self) -> Optional[torch.Tensor]:
        """The 2-norm (fp32 scalar) of all the copies' gradients taken together, each element read in fp32;
        None when none has one. The ``sgd_bf16`` kernel sums the squares without an fp32 copy of each
        gradient (torch's ``vector_norm(g, dtype=float32)`` first writes one)."""
        grads = self.gradients()
        if not grads:
            return None
        kernel = native_kernel("sgd_bf16")
        if kernel is not None:
            return torch.tensor(math.sqrt(kernel.sum_squares(grads)), dtype=torch.float32)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))

    def drop(self, params: Iterable[nn.Parameter]) -> None:
        """Clear the copies' gradients of these masters: the next :meth:`step` leaves them untouched
        (a remedy restricting an update)."""
        ids = {id(p) for p in params}
        for name, (master, _) in self.cast_from.items():
            if id(master) in ids:
                self.copies[name].grad = None

    def step(self, optimizer: torch.optim.Optimizer, scale: float) -> None:
        """SGD on each master whose copy has a gradient, at its parameter group's lr and the clip's
        ``scale``, and the copy rewritten from it; the copies' gradients are cleared."""
        lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        kernel = native_kernel("sgd_bf16")
        for name, copy in self.copies.items():
            master = self.cast_from[name][0]
            if copy.grad is not None:
                alpha = -lrs[id(master)] * scale
                with torch.no_grad():
                    if kernel is not None:  # writes both through their data: no version change
                        m, g, c = master.detach(), copy.grad, copy.detach()
                        if not c.is_contiguous():  # a TRANSPOSED weight: the same update on the transposes
                            m, g, c = m.t(), g.t(), c.t()
                        kernel.sgd_update(m, g, c, alpha)
                    else:
                        master.add_(copy.grad.float(), alpha=alpha)
                        copy.copy_(master)
                self.cast_from[name] = (master, master._version)
            copy.grad = None


def working_copies_for(cfg: RunConfig, model: nn.Module, world_size: int,
                       device: torch.device) -> Optional[WorkingCopies]:
    """The run's working copies, or None where they do not apply or the model has no such weight."""
    if not working_copies_apply(cfg, world_size, device):
        return None
    names = working_copy_names(model)
    return WorkingCopies(model, names) if names else None
