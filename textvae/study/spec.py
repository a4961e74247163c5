"""A study file: its format (the package's docstring), the override layers, and the plan of its
runs (variants x seeds, each with its checked configuration and the runs it starts from)."""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from textvae.config import RunConfig, UnknownKeyError, expand_dotted, section_type, unknown_key
from textvae.errors import TextVAEError
from textvae.packaged import find_yaml, packaged_file, packaged_names

STUDY_KEYS = ("name", "description", "base", "out", "seeds", "budget", "data", "overrides", "variants", "notes")
BUDGET_KEYS = {"epochs": "epochs", "max_steps": "max_steps", "seconds": "max_seconds"}  # -> train.*
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


@dataclasses.dataclass
class Study:
    name: str
    path: Path  # the study file
    base: Path  # the base recipe
    out: Path
    seeds: list[int]
    variants: dict[str, dict[str, Any]]  # name -> nested overrides
    common: list[dict[str, Any]]  # nested overrides for every run: data, budget, overrides, --set
    description: str = ""
    budget: dict[str, Any] = dataclasses.field(default_factory=dict)
    cli_overrides: list[str] = dataclasses.field(default_factory=list)  # --set, as typed
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # variant -> what it changes, for report.md
    archive: Optional[Path] = None  # --archive: finished runs kept as figures (textvae.study.archive)


@dataclasses.dataclass
class Run:
    variant: str
    seed: int
    dir: Path  # the run folder <out>/<variant>/seed<k>
    config: RunConfig
    needs: tuple[str, ...] = ()  # labels of the runs whose folders its settings name ("{run:v}")
    archived: Optional[dict[str, Any]] = None  # its entry in the study's archive, when only that holds it
    conflict: Optional[str] = None  # why its folder is not the study's run (--report leaves it out)

    @property
    def recipe(self) -> Path:
        return self.dir.with_suffix(".yaml")

    @property
    def log_file(self) -> Path:
        return self.dir.with_suffix(".log")

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any], cls: type = RunConfig,
                    where: str = "overrides", prefix: str = "") -> dict[str, Any]:
    """``values`` (a recipe dict for the dataclass ``cls``) with nested ``overrides`` applied.

    Keys are checked against ``cls``; dataclass-typed fields merge recursively, any other value is
    replaced. ``values`` is not modified."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in overrides.items():
        if key not in fields:
            raise unknown_key(key, cls, where, prefix)
        sub = section_type(fields[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise TextVAEError(f"{where}: {prefix + key!r} is a section; give a mapping, not {value!r}")
            out[key] = apply_overrides(out.get(key) or {}, value, sub, where, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def _find_base(name: str, study_dir: Path) -> Path:
    """A study's base recipe: next to the study file, in the current directory, or packaged."""
    for root in (study_dir, Path.cwd()):
        if (root / name).is_file():
            return (root / name).resolve()
    found = packaged_file("recipe", name)
    if found is None:
        raise TextVAEError(f"base recipe {name!r} not found next to the study file, in the current directory "
                           f"or among the packaged recipes ({', '.join(packaged_names('recipe'))})")
    return found.resolve()


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``--set`` ["train.max_seconds=600", "objective.kl_schedule={name: constant}"] -> nested overrides
    (values read as YAML)."""
    where = "--set"
    flat: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise TextVAEError(f"{where}: expected KEY=VALUE, got {item!r}")
        try:
            flat[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise TextVAEError(f"{where}: {key}: not a YAML value ({' '.join(str(e).split())})") from None
    return expand_dotted(flat, where)


def task_overrides(values: dict[str, Any], overrides: dict[str, Any], task: str, where: str) -> dict[str, Any]:
    """:func:`apply_overrides` against the settings of ``task``'s configuration; an unknown key that another task
    has is said to be that task's (``data.max_sentences`` on a dialogue study)."""
    from textvae.tasks import TASKS
    from textvae.tasks.runconfig import other_task

    try:
        return apply_overrides(values, overrides, TASKS.get(task).config_class, where=where)
    except UnknownKeyError as e:
        other = other_task(e.key, task)
        if other is None:
            raise
        raise TextVAEError(f"{e} ({e.key} is a setting of the {other} task, and the base recipe's is {task})") from None


def load_study(path: str | Path, out: Optional[str] = None, seeds: Optional[list[int]] = None,
               sets: Optional[list[str]] = None) -> Study:
    """Read and check a study file; ``out`` overrides its output folder, ``seeds`` its seeds,
    ``sets`` (``KEY=VALUE`` strings) add overrides for every run after the file's."""
    path = find_yaml("study", str(path))
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TextVAEError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(spec, dict):
        raise TextVAEError(f"{path}: a study file is a mapping with keys {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(spec) - set(STUDY_KEYS))
    if "variants" not in spec and set(unknown) & {"model", "objective", "optim", "train", "out_dir", "task"}:
        raise TextVAEError(f"{path}: a recipe, not a study (it has no variants); train it with textvae train "
                           f"{path}, or name it as a study's base")
    if unknown:
        raise TextVAEError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(STUDY_KEYS)}")
    name = str(spec.get("name") or path.stem)

    if spec.get("base") in (None, "default"):
        from textvae.tasks.runconfig import default_recipe
        base = Path(default_recipe())
    else:
        base = _find_base(str(spec["base"]), path.parent)

    where = f"{path}: seeds" if seeds is None else "--seeds"
    seeds = spec.get("seeds", [1]) if seeds is None else seeds
    if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds) or len(set(seeds)) != len(seeds)):
        raise TextVAEError(f"{where} must be a non-empty list of distinct integers, got {seeds!r}")

    budget = spec.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS):
        raise TextVAEError(f"{path}: budget takes {', '.join(BUDGET_KEYS)}; got {budget!r}")
    budget_train = {BUDGET_KEYS[k]: v for k, v in budget.items() if v is not None}

    given = parse_sets(sets or [])
    if given:  # an unknown key is --set's mistake, not that of the first variant it is applied to
        from textvae.tasks.runconfig import recipe_task

        task_overrides({}, given, recipe_task(str(base)), "--set")
    common = [{"data": expand_dotted(spec.get("data") or {}, f"{path}: data")},
              {"train": budget_train},
              expand_dotted(spec.get("overrides") or {}, f"{path}: overrides"), given]
    variants = spec.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise TextVAEError(f"{path}: variants must be a non-empty mapping of name -> overrides")
    checked = {}
    for vname, overrides in variants.items():
        if not VARIANT_NAME.match(str(vname)):
            raise TextVAEError(f"{path}: variant name {vname!r} is not a folder name (letters, digits, _.+=-)")
        checked[str(vname)] = expand_dotted(overrides or {}, f"{path}: variant {vname!r}")
    notes = spec.get("notes") or {}
    if not isinstance(notes, dict) or not all(isinstance(t, str) for t in notes.values()):
        raise TextVAEError(f"{path}: notes must be a mapping of variant -> text")
    if set(notes) - set(checked):
        raise TextVAEError(f"{path}: notes for unknown variant(s) {sorted(set(notes) - set(checked))}; "
                           f"valid: {', '.join(checked)}")
    out_dir = Path(out or spec.get("out") or Path("out") / name).resolve()
    return Study(name=name, path=path.resolve(), base=base, out=out_dir, seeds=seeds, variants=checked,
                 common=common, description=str(spec.get("description") or "").strip(), budget=budget,
                 cli_overrides=list(sets or []), notes={str(k): " ".join(v.split()) for k, v in notes.items()})


def threads_per_run(jobs: int) -> int:
    """The torch threads of each run that sets no ``train.threads``: ``OMP_NUM_THREADS`` where the user
    set it (as torch itself would take it), else this process's cores shared among the ``jobs``."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, _cores() // jobs)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan(study: Study, jobs: int = 1) -> list[Run]:
    """Every run of the study, seed-major, each with its checked configuration."""
    from textvae.tasks import TASKS
    from textvae.tasks.runconfig import parse_run_config, recipe_task

    base = yaml.safe_load(study.base.read_text()) or {}
    if not isinstance(base, dict):
        raise TextVAEError(f"{study.base}: a recipe is a mapping")
    task = recipe_task(str(study.base))
    config_class = TASKS.get(task).config_class  # a dialogue recipe's keys are its own
    threads = threads_per_run(jobs)
    runs = []
    for seed in study.seeds:
        for vname, overrides in study.variants.items():
            where = f"{study.path.name}: variant {vname!r}"
            values = base
            for layer in (*study.common, overrides):
                values = task_overrides(values, layer, task, where)
            run_dir = study.out / vname / f"seed{seed}"
            values = apply_overrides(values, {"name": run_dir.name, "out_dir": str(run_dir.parent),
                                              "train": {"seed": seed, "progress": False}}, config_class, where=where)
            needs: set[str] = set()
            values = resolve_run_references(values, study, seed, needs, where)
            if values["train"].get("threads") is None:
                values["train"]["threads"] = threads
            # Through the command line's parser, so types are checked exactly as `textvae train` does.
            with tempfile.TemporaryDirectory() as tmp:
                recipe = Path(tmp) / "recipe.yaml"
                recipe.write_text(yaml.safe_dump(values, sort_keys=False))
                try:
                    cfg, _ = parse_run_config([str(recipe)])
                except TextVAEError as e:
                    sets = f" (with --set {' '.join(study.cli_overrides)})" if study.cli_overrides else ""
                    raise TextVAEError(f"{where}{sets}: {e}") from None
            runs.append(Run(vname, seed, run_dir, cfg, tuple(f"{v}/seed{seed}" for v in sorted(needs))))
    check_no_cycle(runs, study.path.name)
    return runs


def check_no_cycle(runs: list[Run], where: str) -> None:
    """Runs that need each other (``{run:v}`` both ways, or round a longer loop) could never start."""
    needs = {r.label: r.needs for r in runs}
    done: set[str] = set()

    def visit(label: str, path: list[str]) -> None:
        if label in path:
            loop = " -> ".join(path[path.index(label):] + [label])
            raise TextVAEError(f"{where}: runs that need each other ({{run:...}}) can never start: {loop}")
        if label not in done:
            for need in needs[label]:
                visit(need, path + [label])
            done.add(label)

    for label in needs:
        visit(label, [])


RUN_REFERENCE = re.compile(r"\{run:([^{}]*)\}")


def resolve_run_references(value: Any, study: Study, seed: int, needs: set[str], where: str) -> Any:
    """``value`` (a recipe dict, list or scalar) with each ``{run:VARIANT}`` in its strings replaced
    by that variant's run folder for ``seed``; the variants named are added to ``needs``."""
    def folder(match: re.Match) -> str:
        name = match.group(1)
        if name not in study.variants:
            raise TextVAEError(f"{where}: {{run:{name}}} names no variant of the study; valid: "
                               f"{', '.join(study.variants)}")
        needs.add(name)
        return str(study.out / name / f"seed{seed}")

    return map_strings(value, lambda text: RUN_REFERENCE.sub(folder, text))


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (a config dict, list or scalar) with ``fn`` applied to every string in it."""
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, fn) for v in value]
    return fn(value) if isinstance(value, str) else value

