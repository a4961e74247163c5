"""Resumable checkpoints in one safetensors file, written atomically, no pickle.

The file holds ``model.*`` (parameters and buffers), ``optim.<param>.<key>`` (optimiser state
tensors), ``rng.*`` (torch RNG states) and, in the safetensors metadata, a JSON document with
everything else (step, epoch, batch within the epoch, lr-schedule state, optimiser hyper-parameters).
Writing goes to ``<file>.tmp`` and is then renamed over the old file, so a crash during the write
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from textvae.errors import TextVAEError

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
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


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
                    meta: dict[str, Any]) -> None:
    """Atomically write model, optimiser, RNG states and ``meta`` (JSON-serialisable) to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: tied weights share storage, which safetensors refuses to write twice.
    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    document = {"meta": meta, "optimizer": optim_meta}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(document)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into ``model`` / ``optimizer``; returns ``meta``.

    A truncated or garbled file, or one from a model of another shape or vocabulary, raises
    :class:`TextVAEError` naming the file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TextVAEError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            document = json.loads(f.metadata()[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise TextVAEError(f"corrupted checkpoint {path}: {str(e).splitlines()[0]}") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    mismatched = [k for k, v in model_sd.items() if k in expected and expected[k].shape != v.shape]
    missing = sorted(set(expected) - set(model_sd))
    if mismatched or missing:
        what = mismatched[0] if mismatched else missing[0]
        detail = (f"{what} has shape {tuple(model_sd[what].shape)}, model expects {tuple(expected[what].shape)}"
                  if mismatched else f"{what} is missing")
        raise TextVAEError(f"checkpoint {path} does not fit this model (other vocabulary or shape?): {detail}")
    model.load_state_dict(model_sd)
    if optimizer is not None:
        optimizer.load_state_dict(_optimizer_state(tensors, document["optimizer"]))
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
    return document["meta"]
