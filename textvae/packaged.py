"""The recipes and studies that ship inside the package (``textvae/recipes``, ``textvae/studies``),
found by name from any directory and after a non-editable install.

A recipe argument is a YAML file when one exists at that path; otherwise it names a packaged one,
with or without its folder and suffix: ``recipes/ptb/vae.yaml``, ``ptb/vae.yaml`` and ``ptb/vae`` are
the same recipe (the first is the checkout-relative path the docs used before the recipes moved
into the package, so commands written then still run). Studies alike: ``studies/ptb_reproduce.yaml``,
``ptb_reproduce``.
"""
from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path
from typing import Optional

from textvae.errors import TextVAEError

FOLDERS = {"recipe": "recipes", "study": "studies"}
log = logging.getLogger("textvae")


def packaged_folder(kind: str) -> Path:
    return Path(str(resources.files("textvae") / FOLDERS[kind]))


def packaged_names(kind: str) -> list[str]:
    """Every packaged ``kind`` (recipe or study) by the name that finds it: ``ptb/vae``."""
    root = packaged_folder(kind)
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def packaged_file(kind: str, name: str) -> Optional[Path]:
    """The packaged file ``name`` names, else None. A leading ``recipes/`` (``studies/``), after any
    ``../`` (a study file's ``base: ../recipes/ptb/vae.yaml`` copied out of the package), is the
    package folder's own name, and ``.yaml`` may be left out."""
    if Path(name).is_absolute():
        return None
    parts = list(Path(name).parts)
    while parts[:1] in (["."], [".."]):  # a study file's ../recipes/..., copied out of the package
        parts = parts[1:]
    if parts[:1] == [FOLDERS[kind]]:
        parts = parts[1:]
    if not parts or ".." in parts:  # a packaged name never leaves its folder
        return None
    path = packaged_folder(kind).joinpath(*parts)
    for candidate in (path, path.with_name(path.name + ".yaml")):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    return None


def find_yaml(kind: str, name: str) -> Path:
    """``name`` as a file where there is one, else the packaged ``kind`` it names; an error listing
    the packaged names when neither exists."""
    found = packaged_file(kind, name)
    if Path(name).is_file():
        if found is not None and found.resolve() != Path(name).resolve():
            log.info("%s %s: the file %s, not the packaged one of that name", kind, name, Path(name).resolve())
        return Path(name)
    if found is None and kind == "recipe" and (Path(name) / "config.yaml").is_file():  # its settings file is meant
        raise TextVAEError(f"{name} is a run folder; give its settings file, {Path(name) / 'config.yaml'}")
    if found is None:
        raise TextVAEError(f"no such {kind}: {name} (neither a file nor a packaged {kind}; packaged: "
                           f"{', '.join(packaged_names(kind))}; textvae list {kind} says what each is)")
    return found


SUMMARY_CHARS = 200


def summary(path: Path) -> str:
    """The first sentence of a recipe's or study's opening comment (what it is), cut at a clause
    boundary to at most ``SUMMARY_CHARS`` characters and " ..." for a listing."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"(?<! al)(?<!e\.g)(?<!i\.e)\.(\s|$)", text)  # not "et al." nor "e.g."
    text = text[:end.start() + 1] if end else text
    if len(text) <= SUMMARY_CHARS:
        return text
    cut = max(text.rfind(mark, 0, SUMMARY_CHARS) for mark in (": ", "; ", ", "))
    if cut < SUMMARY_CHARS // 2:  # no clause boundary in the second half: the last word boundary
        cut = text.rfind(" ", 0, SUMMARY_CHARS)
    return text[:cut if cut > 0 else SUMMARY_CHARS] + " ..."
