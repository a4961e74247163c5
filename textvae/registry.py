"""Named registries of components (timm-style ``register_*`` / ``list_*`` / ``create_*``).

Every swappable part (encoders, decoders, posteriors, priors, remedies, corpora, tokenizer kinds,
schedules, optimisers, metrics, tasks) lives in a :class:`Registry`; an unknown name raises :class:`~textvae.errors.TextVAEError` listing the
valid names, so a typo in a recipe is a one-line error.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, TypeVar

from textvae.errors import TextVAEError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("lstm")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise TextVAEError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def build(self, name: str, params: dict[str, Any], /, *args: Any, **context: Any) -> Any:
        """Create ``name`` with user ``params`` (from a recipe) plus ``args`` and ``context`` supplied
        by the caller. Unknown user parameters are an error listing the valid ones; a context entry
        is passed only when the constructor names it, so parts take just the facts they need.
        """
        factory = self.get(name)
        target = factory.__init__ if inspect.isclass(factory) else factory
        signature = inspect.signature(target).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
        unknown = sorted(set(params) - set(signature)) if not takes_any else []
        if unknown:
            valid = sorted(p for p in signature if p not in ("self", *context) and
                           signature[p].kind is not inspect.Parameter.VAR_POSITIONAL)
            raise TextVAEError(f"{self.kind} {name!r}: unknown parameter(s) {unknown}; valid: {valid}")
        kwargs = {k: v for k, v in context.items() if k in signature or takes_any}
        kwargs.update(params)
        try:
            return factory(*args, **kwargs)  # type: ignore[operator]
        except TypeError as e:
            raise TextVAEError(f"{self.kind} {name!r}: {e}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
