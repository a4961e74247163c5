"""Parts of one's own, registered from outside textvae: modules that the ``textvae`` command imports before it
runs, so that their ``register_*`` calls (a remedy, a metric, a decoder, a corpus, a schedule, a task) have
filled the registries by then, for every command and every process a command starts.

* ``TEXTVAE_PLUGINS``: module names, comma-separated (``TEXTVAE_PLUGINS=my_remedies,lab.metrics``),
  importable from ``PYTHONPATH`` or the current directory. A study's subprocess runs and ``torchrun``'s
  ranks inherit the variable, so they load the same parts.
* an installed package: an entry point in the group ``textvae.plugins`` (in its pyproject.toml,
  ``[project.entry-points."textvae.plugins"]`` with ``mine = "my_package.textvae_parts"``).

A run's config.yaml names the parts it was made with, not their modules (its ``source`` record lists the
plugins loaded): evaluating or resuming it needs them loaded again. Code that imports textvae as a library
imports its own modules instead.
"""
from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Callable

from textvae.errors import TextVAEError

ENV = "TEXTVAE_PLUGINS"
GROUP = "textvae.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import the modules ``TEXTVAE_PLUGINS`` names and the ``textvae.plugins`` entry points (each once);
    returns what was loaded, by name. A module that cannot be imported is a one-line error naming it."""
    names = [name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip()]
    try:
        here = os.getcwd()
    except OSError:  # the current directory was removed: nothing there to import
        here = None
    if names and here is not None and here not in sys.path:  # the console script's sys.path lacks it (python -m
        sys.path.append(here)  # has it first); last, so that a file there shadows no installed module
    for name in names:
        _load(name, lambda name=name: importlib.import_module(name), f"{ENV}: module {name!r}")
    for point in entry_points(group=GROUP):
        _load(f"{point.name}={point.value}", point.load, f"entry point {point.name!r} ({point.value}) of {GROUP}")
    return loaded_plugins()


def loaded_plugins() -> list[str]:
    """What :func:`load_plugins` has loaded in this process (module names, ``name=module`` entry points),
    for a run's record of the code it ran."""
    return sorted(_loaded)


def _load(key: str, load: Callable[[], Any], what: str) -> None:
    if key in _loaded:
        return
    try:
        load()
    except ImportError as e:
        raise TextVAEError(f"{what} cannot be imported: {e}") from None
    except Exception as e:  # noqa: BLE001 (a registration's own error, e.g. a name registered twice)
        raise TextVAEError(f"{what} failed as it was imported: {type(e).__name__}: {e}") from None
    _loaded.add(key)
