"""Data-parallel training over processes started by ``torchrun``: one process ("rank") per device.

    torchrun --nproc_per_node 4 -m textvae.cli train recipes/ptb/vae.yaml
    torchrun --nnodes 2 --node_rank 0 --master_addr host0 --nproc_per_node 8 -m textvae.cli train ...

The launcher sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``);
without them :class:`World` has one rank and every method below is a no-op, so the training loop
has one code path. What makes an R-process run the same optimisation as a one-process run:

* ``data.batch_size`` is the *global* batch. Every rank builds the same length-bucketed plan of
  global batches from (seed, epoch) and takes a contiguous share of each (:meth:`World.shard`):
  data order, bucketing and mid-epoch resumption do not depend on R.
* Shares may differ by one sentence, or be empty. Rank r, holding B_r of the B sentences,
  back-propagates ``weight · loss_r`` with weight = B_r·R/B, and DDP averages the gradients:

      (1/R) Σ_r (B_r R / B) ∇ (1/B_r) Σ_{b in r} loss_b = ∇ (1/B) Σ_b loss_b,

  the gradient of the global batch mean, whatever the shares.
* Random numbers (z noise, dropout masks, word dropout) come from one stream per rank, seeded by
  (seed, rank) (:func:`rank_seed`): a shared stream would give the sentences at the same position
  of every share the same noise. Noise therefore differs from a one-process run (in distribution
  it is the same); with dropout off and deterministic noise the runs agree to rounding
  (``tests/test_ddp.py``).
* Rank 0 alone reads and writes the run folder (logs, checkpoints, best model) and evaluates; the
  others wait for its result (:meth:`World.on_main`) on a CPU (gloo) group with a long time-out, so
  an importance-weighted evaluation of a whole test set cannot trip the NCCL watchdog. Figures are
  then exactly those of a one-process evaluation of the same weights.

Not equal to one process: remedies that use statistics of the training batch (BN-VAE's batch
norm, ``free_bits_kingma2016`` and ``target_kl``, which clamp batch-averaged KL) see each rank's
share; remedies that take optimiser steps inside a training step (``aggressive``) are refused.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from textvae.errors import TextVAEError
from textvae.training.signals import StopRequested

T = TypeVar("T")

# How long ranks wait for rank 0 (evaluation, final IW-NLL report, checkpoint writes).
WAIT_TIMEOUT = datetime.timedelta(hours=6)


def parameters_may_go_unused(model: nn.Module) -> bool:
    """Whether a training step's loss may not reach every trainable parameter: a remedy that
    drops the KL term for a phase (encoder pretraining) takes a learned prior's parameters out of
    the graph. Every other term keeps its parameters in the graph, with a zero gradient at worst."""
    drops_kl = any(remedy.drops_kl_term for remedy in model.objective.remedies)
    return drops_kl and bool(model.prior_parameters())


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank ``rank``'s random stream, decorrelated from ``seed`` itself (which draws the
    initial weights) and from the other ranks' streams."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


class World:
    """The ranks of a run: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        if not 0 <= rank < size:
            raise TextVAEError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={size})")
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self._wait_group: Any = None

    @classmethod
    def from_environment(cls) -> "World":
        """The ranks that ``torchrun`` describes in the environment (one rank when it is unset)."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as e:
            raise TextVAEError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None
        return cls(rank, size, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL for CUDA, gloo for CPU); returns this rank's device
        (``cuda:LOCAL_RANK`` when training on GPUs)."""
        if self.size == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", rank=self.rank, world_size=self.size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=self.rank, world_size=self.size)
        self._wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
        return device

    def close(self, clean: bool) -> None:
        """Leave the process group; after a clean finish first wait for every rank (a rank that
        destroys the group early would break the others' last collective calls)."""
        if self.size == 1 or not dist.is_initialized():
            return
        if clean:
            dist.barrier(group=self._wait_group)
        dist.destroy_process_group()

    # ---- data and gradients ----------------------------------------------------------------
    def shard(self, index: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's contiguous share of a global batch and its loss weight B_r·R/B.

        A rank whose share is empty (a global batch of fewer than R sentences) gets the batch's
        first sentence with weight 0: it still runs forward and backward, as DDP needs every rank
        in every gradient all-reduce, but adds nothing to the gradient.
        """
        share = np.array_split(index, self.size)[self.rank]
        if len(share) == 0:
            return index[:1], 0.0
        return share, len(share) * self.size / len(index)

    def wrap(self, module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` in DistributedDataParallel (itself with one rank).

        ``find_unused_parameters``: some step's loss may not reach every parameter (see
        :func:`parameters_may_go_unused`); DDP then walks the loss's autograd graph each step. Set
        where it is not needed, DDP warns on every rank that the walk found nothing.
        """
        if self.size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=find_unused_parameters)

    def sync_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (after rank 0 reloaded the best
        model, or a remedy re-drew weights from per-rank random streams)."""
        if self.size == 1:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.detach(), src=0)

    def weighted_mean(self, values: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Global means of per-rank means (scalar tensors) over ``count`` sentences per rank."""
        if self.size == 1:
            return {k: float(v) for k, v in values.items()}
        device = next(iter(values.values())).device
        stacked = torch.stack([v.detach().double().to(device) * count for v in values.values()]
                              + [torch.tensor(float(count), dtype=torch.float64, device=device)])
        dist.all_reduce(stacked)
        return {k: float(v) for k, v in zip(values, stacked[:-1] / stacked[-1])}

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise logical or of a bool tensor over the ranks."""
        if self.size == 1:
            return flags
        as_int = flags.to(torch.int32)
        dist.all_reduce(as_int, op=dist.ReduceOp.MAX)
        return as_int.bool()

    # ---- objects and waiting ---------------------------------------------------------------
    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; the others' argument is ignored)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._wait_group)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj, group=self._wait_group)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by rank 0 alone, its result given to every rank. When it fails, every rank
        raises (a :class:`TextVAEError` keeps its message; a stop on a signal, such as the test report's,
        is a :class:`StopRequested` on every rank), so no rank is left waiting."""
        if self.size == 1:
            return fn()
        result: Optional[T] = None
        error: Optional[str] = None
        stopped = False
        caught: Optional[BaseException] = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # re-raised below, after the others learnt of it
                caught, stopped = e, isinstance(e, KeyboardInterrupt)
                error = (str(e) or "rank 0 was interrupted" if isinstance(e, (TextVAEError, KeyboardInterrupt))
                         else f"rank 0 failed: {type(e).__name__}: {e}")
        result, error, stopped = self.broadcast((result, error, stopped))
        if caught is not None:
            raise caught
        if error is not None:
            raise StopRequested(error) if stopped else TextVAEError(error)
        return result  # type: ignore[return-value]

    def node_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank, by rank 0 of each node first: it fills a per-node cache (a
        generated or downloaded corpus) that the node's other ranks then only read. An error on any rank
        (a :class:`TextVAEError` with its message, another as ``rank N failed: ...``) is raised on all of
        them, so none waits on the others."""
        first = self._agree(lambda: fn() if self.local_rank == 0 else None)
        return self._agree(lambda: first if self.local_rank == 0 else fn())

    def _agree(self, fn: Callable[[], T]) -> T:
        try:
            result, error = fn(), None
        except TextVAEError as e:
            result, error = None, str(e)
        except Exception as e:  # a download's OSError, a decoding error, ...: the others must not wait on it
            result, error = None, f"rank {self.rank} failed: {type(e).__name__}: {e}"
        errors = [e for e in self.gather(error) if e is not None]
        if errors:
            raise TextVAEError(errors[0])
        return result  # type: ignore[return-value]
