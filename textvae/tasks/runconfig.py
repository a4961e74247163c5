"""From ``textvae train`` arguments to a run configuration, for every task.

    [RECIPE | --config RECIPE] [--section.key value ...] [--resume]

A recipe is a YAML file or the name of a packaged one (``ptb/vae``; :mod:`textvae.packaged`).

The recipe's ``task`` key chooses the task (``sentences``, whose recipes do not name it, when
absent) and so the configuration class the arguments are read into (jsonargparse over the nested dataclasses: unknown keys and
wrongly typed values are one-line errors). No recipe means the embedded synthetic default.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from textvae.config import close_name, expand_dotted, from_dict, section_type, setting_names, unknown_key
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
    return named_task(path) or DEFAULT_TASK


def named_task(path: str) -> str | None:
    """The task a recipe's ``task`` key names; None where it has none (an overlay of a few settings) or cannot
    be read."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    task = values.get("task") if isinstance(values, dict) else None
    return task if isinstance(task, str) else None


def train_parser(config_class: type):
    from jsonargparse import ArgumentParser, set_parsing_settings

    # each setting's help is the docstring under its field in the configuration dataclasses
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="textvae train", exit_on_error=False, allow_abbrev=False,  # --model.lat: an error
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


def check_recipe(path: str, config_class: type) -> None:
    """One-line errors, naming the file, for a recipe that jsonargparse would describe in its own terms:
    not YAML, empty, not a mapping, or with a key that the task's configuration lacks (by its dotted
    name, with a close valid one where there is one)."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise TextVAEError(f"recipe {path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    sections = [f.name for f in dataclasses.fields(config_class) if section_type(f) is not None]
    if values is None:
        raise TextVAEError(f"recipe {path} is empty; a recipe sets some of the sections {', '.join(sections)}")
    if not isinstance(values, dict):
        raise TextVAEError(f"recipe {path}: a recipe is a mapping of sections to settings (model: {{latent_dim: 32}}), "
                           f"not a {type(values).__name__}")
    if "variants" in values and "variants" not in sections:  # the likeliest file of another kind
        raise TextVAEError(f"recipe {path}: a study file (it has variants); run it with textvae study {path}")
    _check_keys(config_class, expand_dotted(values, f"recipe {path}"), f"recipe {path}")  # model.latent_dim: 4 too


def _check_keys(cls: type, values: dict[str, Any], where: str, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields and not (key == "task" and not prefix):  # the default task's recipes may name it
            raise unknown_key(key, cls, where, prefix)
        sub = section_type(fields[key]) if key in fields else None
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, where, f"{prefix}{key}.")


def _has_task_key(config_class: type) -> bool:
    return "task" in getattr(config_class, "__dataclass_fields__", {})


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "NoneType": "null",
               "list": "a list ([a, b] on the command line, one - item per entry in YAML)"}


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


def recipes_first(argv: list[str]) -> list[str]:
    """Every ``--config FILE`` first, in its order, then the other arguments in theirs: jsonargparse applies
    arguments in order, and a value typed on the command line wins over every file, wherever it stands."""
    files, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            files += argv[i:i + 2]
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return files + rest


def _argument_error(message: str, argv: list[str], recipe_first: bool, task: str, config_class: type) -> str:
    """jsonargparse's error in plain words, with what the user likely meant for an unrecognised argument: a
    recipe out of place, study's ``--set``, a misspelt setting."""
    message = plain_type_error(message)
    if "unrecognized arguments" not in message.lower():
        return message
    stray = [a for i, a in enumerate(argv) if i and argv[i - 1] != "--config" and not a.startswith("-")
             and ((a.endswith((".yaml", ".yml")) and Path(a).is_file()) or packaged_file("recipe", a) is not None)]
    if stray and recipe_first:
        return message + f" (a second recipe: a run starts from one, and --config {stray[0]} overlays another on it)"
    if stray:
        return message + f" (the recipe {stray[0]} goes first, before the overrides)"
    if "--set" in argv:
        return message + " (--set is textvae study's; textvae train takes --SECTION.KEY VALUE)"
    given = re.search(r"unrecognized arguments: --(\S+)", message, re.IGNORECASE)  # the first one named
    if given is None:
        return message
    help_hint = f"textvae train {'RECIPE ' if task != DEFAULT_TASK else ''}--help lists the settings"
    name = given.group(1).split("=", 1)[0]
    other = other_task(name, task)
    if other:  # data.max_sentences on a dialogue run (whose cap is data.max_pairs)
        return message + f" (--{name} is a setting of the {other} task, and this recipe's is {task}; {help_hint})"
    return message + (close_name(given.group(1), setting_names(config_class), "--") or f" ({help_hint})")


def other_task(name: str, task: str) -> Optional[str]:
    """The first registered task but ``task`` that has the dotted setting ``name``, if any (``data.max_sentences``:
    the sentences task's, given to a dialogue run)."""
    return next((other for other in TASKS.names()
                 if other != task and name in setting_names(TASKS.get(other).config_class)), None)


def recipes_block(argv: list[str]) -> tuple[list[str], int, bool]:
    """``train``'s arguments with every recipe a ``--config FILE`` pair, those pairs first (the default recipe's
    where none is given; a packaged name as its file), the block's length, and whether the recipe was the first
    argument."""
    # --config=FILE as --config FILE, which the checks below look for
    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--config=") else [a])]
    recipe_first = bool(argv) and not argv[0].startswith("-")
    if recipe_first:
        argv = ["--config", argv[0]] + argv[1:]
    elif "--config" not in argv[:-1]:
        argv = ["--config", default_recipe()] + argv
    argv = recipes_first(argv)
    recipes = 0  # the length of the recipes' block, --config FILE pairs
    while argv[recipes:recipes + 1] == ["--config"] and recipes + 1 < len(argv):
        recipes += 2
    # every recipe a file: a path, or the name of a packaged one (ptb/vae); an unknown one is an error
    argv = [str(find_yaml("recipe", a)) if i and argv[i - 1] == "--config" else a for i, a in enumerate(argv)]
    return argv, recipes, recipe_first


def setting_source(argv: list[str], key: str) -> str | None:
    """Where the value of the setting ``key`` (dotted: ``data.batch_size``) that ``train``'s arguments ``argv``
    give came from: the command line, else the last recipe that sets it (None: neither, a built-in default)."""
    try:
        argv, recipes, _ = recipes_block(argv)
    except TextVAEError:
        return None
    parts = key.split(".")
    sections = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # data.batch_size: --data '{...}' too
    given = next((a.split("=")[0] for a in argv[recipes:] if a.startswith("--")
                  and a[2:].split("=")[0].removesuffix("+") in sections), None)  # --objective.remedies+ appends
    if given is not None:
        return f"{given} on the command line"
    for recipe in reversed(argv[1:recipes:2]):
        try:
            node: Any = expand_dotted(yaml.safe_load(Path(recipe).read_text()) or {}, recipe)
        except (OSError, yaml.YAMLError, TextVAEError):
            continue
        for part in key.split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        if node is not _UNSET:
            return f"{key} set in {recipe}"
    return None


_UNSET = object()


def traced(error: TextVAEError, argv: list[str]) -> TextVAEError:
    """``error``, with where ``argv`` set the setting it is about (of its ``settings``, one given on the command
    line first, then one a recipe sets): a bad value in a recipe that an overlay or a packaged name brought in is
    otherwise hard to find."""
    sources = [source for source in (setting_source(argv, key) for key in error.settings) if source]
    sources.sort(key=lambda source: not source.endswith("on the command line"))
    return TextVAEError(f"{error} ({sources[0]})") if sources else error


def parse_run_config(argv: list[str]) -> tuple[Any, bool]:
    """(run configuration, resume) from ``[RECIPE] [--overrides] [--resume]``."""
    from jsonargparse import ArgumentError

    argv, recipes, recipe_first = recipes_block(argv)
    if argv[:1] == ["--config"] and is_run_folder(Path(argv[1]).parent) and Path(argv[1]).name == "config.yaml":
        # a run folder's own settings: the run is that folder, wherever it was moved or copied to since
        # (its saved out_dir and name are where it was made), whatever name an overlay sets; --out_dir or
        # --name given still win
        folder = Path(argv[1]).parent.absolute()  # "config.yaml" given in the folder itself: the folder's own name
        argv = argv[:recipes] + ["--out_dir", str(folder.parent), "--name", folder.name] + argv[recipes:]
    task = recipe_task(argv[argv.index("--config") + 1]) if "--config" in argv[:-1] else DEFAULT_TASK
    config_class = TASKS.get(task).config_class
    for i, a in enumerate(argv[:-1]):
        named = named_task(argv[i + 1]) if a == "--config" else None
        if named is not None and named != task:  # its keys would read as unknown ones
            raise TextVAEError(f"recipe {argv[i + 1]} is a {named} recipe, and the first one "
                               f"({argv[argv.index('--config') + 1]}) a {task} one; a run has one task")
        if a == "--config":
            check_recipe(argv[i + 1], config_class)
        elif a == "--task" and argv[i + 1] != task:
            raise TextVAEError(f"--task {argv[i + 1]}: the task is the recipe's (its task key), and this recipe's is "
                               f"{task}; give a {argv[i + 1]} recipe instead (textvae list recipe)")
    parser = train_parser(config_class)
    try:
        if any(a in ("-h", "--help") for a in argv) and recipes:
            # jsonargparse's help shows the class defaults even after --config; show the recipes' together
            parser.set_defaults({key: value for key, value in parser.parse_args(argv[:recipes]).as_dict().items()
                                 if key not in ("config", "__path__", "resume")})
        values = parser.parse_args(argv).as_dict()
    except ArgumentError as e:
        message = " ".join(str(e).split())
        key = re.match(r'Parser key "([^"]+)"', message)
        raise TextVAEError(_argument_error(message, argv, recipe_first, task, config_class),
                           *([key.group(1)] if key else [])) from None
    resume = values.pop("resume")
    values.pop("config", None)
    values.pop("__path__", None)
    if not _has_task_key(config_class):
        values.pop("task", None)
    cfg = from_dict(config_class, values)
    if getattr(cfg, "task", task) != task:  # the sentence task's configuration has no task key
        raise TextVAEError(f"task {cfg.task!r}: the task is chosen by the recipe, which says {task!r}")
    return cfg, resume
