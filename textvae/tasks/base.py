"""The task registry (timm-style ``register_task`` / ``list_tasks`` / ``create_task``)."""
from __future__ import annotations

from typing import Any

from textvae.errors import TextVAEError
from textvae.registry import Registry
from textvae.training import train
from textvae.training.task import Task

TASKS: Registry = Registry("task", recipe="task: NAME (top level of the recipe)", supplied=("cfg",))


def register_task(name: str):
    """Decorator for a :class:`~textvae.training.task.Task` subclass with a ``config_class``: its
    run configuration, a nested dataclass of its own (one class per task). A recipe of any task
    but the default one (``sentences``) says ``task: <name>``."""
    return TASKS.register(name)


def list_tasks() -> list[str]:
    return TASKS.names()


def task_name(cfg: Any) -> str:
    """The registered task whose ``config_class`` the run configuration ``cfg`` is."""
    for name in TASKS.names():
        if TASKS.get(name).config_class is type(cfg):
            return name
    raise TextVAEError(f"{type(cfg).__name__} is the configuration of no task; valid: "
                       f"{', '.join(TASKS.get(n).config_class.__name__ for n in TASKS.names())}")


def create_task(cfg: Any) -> Task:
    """The task of the run configuration ``cfg``, built from it."""
    return TASKS.create(task_name(cfg), cfg)


def run_training(cfg: Any, resume: bool = False, data: Any = None) -> dict[str, Any]:
    """Train (or continue) the run that ``cfg`` describes with the one loop,
    :func:`textvae.training.train.run_training`; returns its test report."""
    return train.run_training(create_task(cfg), resume, data)
