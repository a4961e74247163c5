"""From ``textvae train`` arguments to a run configuration, for every task.

    [RECIPE | --config RECIPE] [--section.key value ...] [--resume]

A recipe is a YAML file or the name of a packaged one (``ptb/vae``; :mod:`textvae.packaged`).

The recipe's ``task`` key chooses the task (``sentences``, whose recipes do not name it, when
absent) and so the configuration class the arguments are read into (jsonargparse over the nested dataclasses: unknown keys and
wrongly typed values are one-line errors). No recipe means the embedded synthetic default.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from textvae.config import from_dict
from textvae.errors import TextVAEError
from textvae.packaged import find_yaml, packaged_file, packaged_folder
from textvae.tasks.base import TASKS

DEFAULT_TASK = "sentences"


def default_recipe() -> str:
    return str(packaged_folder("recipe") / "synthetic.yaml")


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a training run (its checkpoint or its best model), not just a recipe."""
    return (folder / "checkpoint.safetensors").is_file() or (folder / "model").is_dir()


def recipe_task(path: str) -> str:
    """The task a recipe names (``DEFAULT_TASK`` when it names none or cannot be read: the
    parser then reports what is wrong with it)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return DEFAULT_TASK
    task = values.get("task", DEFAULT_TASK) if isinstance(values, dict) else DEFAULT_TASK
    return task if isinstance(task, str) else DEFAULT_TASK


def train_parser(config_class: type):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="textvae train", exit_on_error=False,
                            description="Train a text VAE, LM or dialogue CVAE from a YAML recipe with overrides. "
                                        "The defaults shown are those the run uses: the recipe's values (with no "
                                        "recipe, those of the embedded textvae/recipes/synthetic.yaml), and the "
                                        "configuration's built-in defaults for the keys the recipe leaves out.")
    parser.add_argument("--config", action="config", help="recipe: a YAML file or a packaged recipe's name, e.g. "
                                                          "ptb/vae (textvae list recipe); also accepted as the "
                                                          "first argument")
    parser.add_argument("--resume", action="store_true", help="continue the run in out_dir/name")
    if not _has_task_key(config_class):  # the default task's recipes may still say `task: sentences`
        parser.add_argument("--task", choices=[DEFAULT_TASK], default=DEFAULT_TASK,
                            help="the task (chosen by the recipe's task key)")
    parser.add_class_arguments(config_class, None)
    return parser


def _has_task_key(config_class: type) -> bool:
    return "task" in getattr(config_class, "__dataclass_fields__", {})


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "NoneType": "null"}


def plain_type_error(message: str) -> str:
    """jsonargparse's message for a value of the wrong type, as ``train.max_steps must be an integer or null,
    got 'x'``; any other message as it is."""
    union = re.fullmatch(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes Subtypes: '
                         r'\[(.*?)\].* Given value: (.*)', message)
    single = re.fullmatch(r"Parser key \"([^\"]+)\": Expected a <class '(\w+)'>\. Got value: (.*)", message)
    if union:
        key, types, value = union.group(1), re.findall(r"<class '(\w+)'>", union.group(2)), union.group(3)
    elif single:
        key, types, value = single.group(1), [single.group(2)], single.group(3)
    else:
        return message
    if not types or any(t not in _TYPE_NAMES for t in types):
        return message
    return f"{key} must be {' or '.join(_TYPE_NAMES[t] for t in types)}, got {value!r}"


def parse_run_config(argv: list[str]) -> tuple[Any, bool]:
    """(run configuration, resume) from ``[RECIPE] [--overrides] [--resume]``."""
    from jsonargparse import ArgumentError

    # --config=FILE as --config FILE, which the checks below look for
    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    if argv and argv[0].startswith("-") and "--config" in argv[1:-1]:
        # first, as a recipe given first is: overrides win wherever they stand (a second recipe after a
        # first one stays where it is, an overlay applied in order)
        at = argv.index("--config")
        argv = argv[at:at + 2] + argv[:at] + argv[at + 2:]
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0]] + argv[1:]
    elif "--config" not in argv:
        argv = ["--config", default_recipe()] + argv
    # every recipe a file: a path, or the name of a packaged one (ptb/vae); an unknown one is an error
    argv = [str(find_yaml("recipe", a)) if i and argv[i - 1] == "--config" else a for i, a in enumerate(argv)]
    if argv[:1] == ["--config"] and is_run_folder(Path(argv[1]).parent) and Path(argv[1]).name == "config.yaml":
        # a run folder's own settings: the run is that folder, wherever it was moved or copied to since
        # (its saved out_dir and name are where it was made); --out_dir or --name after it still win
        folder = Path(argv[1]).parent.absolute()  # "config.yaml" given in the folder itself: the folder's own name
        argv = argv[:2] + ["--out_dir", str(folder.parent), "--name", folder.name] + argv[2:]
    task = recipe_task(argv[argv.index("--config") + 1]) if "--config" in argv[:-1] else DEFAULT_TASK
    config_class = TASKS.get(task).config_class
    parser = train_parser(config_class)
    try:
        recipe = argv.index("--config") + 1
        if any(a in ("-h", "--help") for a in argv) and recipe < len(argv):
            # jsonargparse's help shows the class defaults even after --config; show the recipe's
            parser.set_defaults({key: value for key, value in parser.parse_path(argv[recipe]).items()
                                 if key not in ("config", "__path__", "resume")})
        values = parser.parse_args(argv).as_dict()
    except ArgumentError as e:
        message = plain_type_error(" ".join(str(e).split()))
        stray = [a for a in argv[2:] if not a.startswith("-") and ((a.endswith((".yaml", ".yml")) and Path(a).is_file())
                                                                     or packaged_file("recipe", a) is not None)]
        if "unrecognized arguments" in message.lower() and stray:
            message += f" (the recipe {stray[0]} goes first, before the overrides)"
        elif "unrecognized arguments" in message.lower() and "--set" in argv:
            message += " (--set is textvae study's; textvae train takes --SECTION.KEY VALUE)"
        raise TextVAEError(message) from None
    resume = values.pop("resume")
    values.pop("config", None)
    values.pop("__path__", None)
    if not _has_task_key(config_class):
        values.pop("task", None)
    cfg = from_dict(config_class, values)
    if getattr(cfg, "task", task) != task:  # the sentence task's configuration has no task key
        raise TextVAEError(f"task {cfg.task!r}: the task is chosen by the recipe, which says {task!r}")
    return cfg, resume
