"""Resumable checkpoints in one safetensors file, written atomically, no pickle.

The file holds ``model.*`` (parameters and buffers), ``optim.<param>.<key>`` (optimiser state
tensors), ``rng.<rank>.torch`` / ``rng.<rank>.cuda`` (every rank's generator states, so that a
data-parallel run resumes exactly too) and, in the safetensors metadata, a JSON document with
everything else (the caller's ``meta``: step, epoch, batch within the epoch, lr-schedule state;
the optimiser's type and hyper-parameters).

Writing goes to ``<file>.tmp``, is flushed to disk, and is then renamed over the old file, so a
process killed at any moment (even mid-write) leaves the previous checkpoint intact and loadable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from textvae.errors import TextVAEError
from textvae.files import partial_file, write_safetensors
from textvae.rng import rng_state, set_rng_state

META_KEY = "textvae"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"type": type(optimizer).__name__, "param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any], rng_states: Optional[list[dict[str, torch.Tensor]]] = None) -> None:
    """Atomically write model, optimiser, RNG states and ``meta`` (JSON-serialisable) to ``path``.

    rng_states: one :func:`rng_state` per rank, in rank order (default: this process's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: tied weights share storage, which safetensors refuses to write twice.
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    for rank, state in enumerate(rng_states if rng_states is not None else [rng_state()]):
        tensors.update({f"rng.{rank}.{name}": value.cpu() for name, value in state.items()})
    document = {"meta": meta, "optimizer": optim_meta}
    try:
        write_safetensors(path, tensors, {META_KEY: json.dumps(document)})
    except Exception as e:
        raise write_failure(path, e) from None


def write_failure(path: Path, error: Exception) -> TextVAEError:
    """The one-line error for a checkpoint that could not be written (a full disk, say): the
    half-written partial file is gone, ``path`` -- the previous checkpoint -- is left as it was, and
    the message gives the command that resumes from it once the problem is fixed (a run keeps its
    ``config.yaml`` beside its checkpoint)."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    config = path.parent / "config.yaml"
    if path.is_file():
        previous, again = f"the previous checkpoint {path} is intact", f"resume: textvae train {config} --resume"
    else:  # the first checkpoint: nothing to resume, so the run starts again
        previous, again = f"there is no earlier checkpoint ({path})", f"start it again: textvae train {config}"
    return TextVAEError(f"cannot write checkpoint {partial_file(path)}: {reason}; {previous}; free space (or fix the "
                        f"cause) and {again}")


@dataclass
class Checkpoint:
    """A checkpoint file read into memory: CPU tensors by name and the JSON document."""

    path: Path
    tensors: dict[str, torch.Tensor]
    document: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.document["meta"]

    @property
    def rng_states(self) -> list[dict[str, torch.Tensor]]:
        """The generator states of each rank that wrote it, in rank order."""
        states: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in self.tensors.items():
            if name.startswith("rng."):
                _, rank, kind = name.split(".", 2)
                states.setdefault(int(rank), {})[kind] = value
        return [states[r] for r in sorted(states)]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; a missing, truncated, garbled or foreign file raises
    :class:`TextVAEError` naming it."""
    path = Path(path)
    metadata, tensors = _read(path, with_tensors=True)
    return Checkpoint(path, tensors, _document(path, metadata))


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta`` alone (its loop state, ...), without reading its tensors; errors as
    :func:`read_checkpoint`'s."""
    path = Path(path)
    metadata, _ = _read(path, with_tensors=False)
    return _document(path, metadata)["meta"]


def _read(path: Path, with_tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    if not path.is_file():
        raise TextVAEError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as e:  # safetensors raises several types for truncated or garbled files
        raise TextVAEError(f"corrupted checkpoint {path}: {str(e).splitlines()[0]}") from None
    return metadata, tensors


def _document(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    if META_KEY not in metadata:
        raise TextVAEError(f"{path} is not a textvae checkpoint (no {META_KEY!r} metadata)")
    try:
        return json.loads(metadata[META_KEY])
    except json.JSONDecodeError as e:
        raise TextVAEError(f"corrupted checkpoint {path}: metadata is not JSON ({e})") from None


def restore_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                       rank: Optional[int] = 0, device: Optional[torch.device] = None) -> dict[str, Any]:
    """Load ``ckpt`` into ``model`` / ``optimizer`` and, unless ``rank`` is None, set the RNG to
    the states that rank saved (when it saved any); returns ``meta``.

    A checkpoint of a model of another shape or vocabulary, or of another optimiser, raises
    :class:`TextVAEError` naming the file and the first difference.
    """
    model_sd = {k[len("model."):]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}
    if hasattr(model, "state_now"):  # weights an earlier version kept elsewhere
        model_sd = model.state_now(model_sd)
    expected = model.state_dict()
    mismatched = [k for k, v in model_sd.items() if k in expected and expected[k].shape != v.shape]
    missing = sorted(set(expected) - set(model_sd))
    unexpected = sorted(set(model_sd) - set(expected))
    if mismatched or missing or unexpected:
        if mismatched:
            what = mismatched[0]
            detail = f"{what} has shape {tuple(model_sd[what].shape)}, model expects {tuple(expected[what].shape)}"
        else:
            detail = f"{missing[0]} is missing" if missing else f"{unexpected[0]} is not in this model"
        raise TextVAEError(f"checkpoint {ckpt.path} does not fit this model (other vocabulary or shape?): {detail}")
    model.load_state_dict(model_sd)
    if optimizer is not None:
        saved = ckpt.document["optimizer"]
        if saved.get("type", type(optimizer).__name__) != type(optimizer).__name__:
            raise TextVAEError(f"checkpoint {ckpt.path} holds {saved['type']} state, but the optimiser is "
                               f"{type(optimizer).__name__} (was optim.name changed?)")
        optimizer.load_state_dict(_optimizer_state(ckpt.tensors, saved))
    states = ckpt.rng_states
    if rank is not None and rank < len(states):
        set_rng_state(states[rank], device)
    return ckpt.meta


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    restore_rng: bool = True) -> dict[str, Any]:
    """:func:`read_checkpoint` and :func:`restore_checkpoint` (RNG of rank 0) in one; returns ``meta``."""
    return restore_checkpoint(read_checkpoint(path), model, optimizer, rank=0 if restore_rng else None)
