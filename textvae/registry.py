"""Named registries of components (timm-style ``register_*`` / ``list_*`` / ``create_*``).

Every swappable part (encoders, decoders, posteriors, priors, remedies, corpora, tokenizer kinds,
schedules, optimisers, metrics, tasks) lives in a :class:`Registry`; an unknown name raises :class:`~textvae.errors.TextVAEError` listing the
valid names, so a typo in a recipe is a one-line error. Each registry also says how a recipe names
its entries and which arguments its caller supplies, so that ``textvae list`` can show every part
with the parameters a recipe may set.
"""
from __future__ import annotations

import inspect
import sys
import types
import typing
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from torch import nn

from textvae.config import Range
from textvae.errors import TextVAEError
from textvae.plugins import ENV as PLUGINS_ENV

T = TypeVar("T")
_REGISTRIES: list[Registry[Any]] = []  # every registry, in the order of creation


class Registry(Generic[T]):
    """``recipe``: how a recipe chooses an entry and sets its parameters (shown by ``textvae list``).
    ``supplied``: the arguments the caller passes from the model or the configuration; a recipe may
    not set them, and a caller may pass no other (:meth:`build`)."""

    def __init__(self, kind: str, recipe: str = "", supplied: tuple[str, ...] = ()):
        if any(r.kind == kind for r in _REGISTRIES):
            raise ValueError(f"a registry of {kind!r} exists already")
        self.kind = kind
        self.recipe = recipe
        self.supplied = supplied
        self._entries: dict[str, T] = {}
        self._origins: dict[str, Optional[str]] = {}  # where each entry was defined (:meth:`register`)
        self._modules: dict[str, Optional[str]] = {}  # the module that defined it, lambdas too (:func:`part_modules`)
        _REGISTRIES.append(self)

    def register(self, name: str, origin: Optional[str] = None, module: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("lstm")`` adds the decorated object under ``name``. The same definition
        registered again (``origin``, by default a class's or function's ``module.qualname``: a notebook cell
        run twice, a module reloaded) replaces the entry; anything else under a name in use is an error.
        ``module``: the module that defined it (by default a class's or function's own)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind}: the register decorator takes the entry's name, @register_...(\"NAME\") "
                            f"over the definition, got {name!r}")

        def add(obj: T) -> T:
            where = origin or _origin(obj)
            if name in self._entries and (where is None or self._origins.get(name) != where):
                taken = self._origins.get(name)
                raise ValueError(f"{self.kind} {name!r} is taken{f' by {taken}' if taken else ''}; register this "
                                 f"one under another name")
            self._entries[name], self._origins[name] = obj, where
            self._modules[name] = module or (obj.__module__ if isinstance(obj, (type, types.FunctionType)) else None)
            return obj

        return add

    def own_module(self, name: str) -> Optional[str]:
        """The module outside textvae that registered ``name`` (a plugin's, a script's), else None."""
        module = self._modules.get(name)
        return module if module and module.split(".")[0] != "textvae" else None

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise TextVAEError(f"unknown {self.kind} {name!r}; valid: {valid} (a part of your own: name the module "
                               f"that registers it in {PLUGINS_ENV})") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def build(self, name: str, params: dict[str, Any], /, *args: Any, **context: Any) -> Any:
        """Create ``name`` with user ``params`` (from a recipe) plus ``args`` and ``context`` supplied
        by the caller. Unknown user parameters are an error listing the valid ones; a context entry
        is passed only when the constructor names it, so parts take just the facts they need.
        """
        undeclared = sorted(set(context) - set(self.supplied))
        if undeclared:  # a programming error: the registry's list of supplied arguments is out of date
            raise ValueError(f"{self.kind}: the caller passes {undeclared}, which `supplied` does not declare")
        factory = self.get(name)
        signature = _signature(factory)
        self.check(name, params, given=self.positional(name, len(args)))
        kwargs = {k: v for k, v in context.items() if k in signature or _takes_any(signature)}
        kwargs.update(params)
        try:
            return factory(*args, **kwargs)  # type: ignore[operator]
        except TypeError as e:
            raise TextVAEError(f"{self.kind} {name!r}: {e}") from None

    def positional(self, name: str, n: int) -> list[str]:
        """The names of the first ``n`` parameters of ``name``'s constructor: those a caller passing ``n``
        arguments by position gives (whatever the entry calls them)."""
        return [p for p in _signature(self.get(name)) if p != "self"][:n]

    def check(self, name: str, params: dict[str, Any], given: Sequence[str] = ()) -> None:
        """What :meth:`build` checks of a recipe's ``name`` and ``params`` before it creates anything (the
        name, unknown, missing or supplied parameters, values of the wrong type, numbers outside the bounds the
        part declares in its ``RANGES``, parameter -> :class:`~textvae.config.Range`, and NaN or infinite
        numbers anywhere), so a run can check its recipe before it loads its data. ``given``: parameters the
        caller passes by position."""
        factory = self.get(name)
        signature = _signature(factory)
        unknown = sorted(set(params) - set(signature)) if not _takes_any(signature) else []
        if unknown:
            raise TextVAEError(f"{self.kind} {name!r}: unknown parameter(s) {unknown}; "
                               f"valid: {sorted(self.parameters(name))}")
        taken = sorted(set(params) & set(self.supplied))
        if taken:
            raise TextVAEError(f"{self.kind} {name!r}: {taken} come(s) from the model or the configuration, "
                               f"not from the recipe; valid: {sorted(self.parameters(name))}")
        required = [p for p, default in self.parameters(name).items() if default is inspect.Parameter.empty]
        missing = [p for p in required if p not in params and p not in given]
        if missing:
            raise TextVAEError(f"{self.kind} {name!r}: missing parameter(s) {missing}; valid: "
                               f"{sorted(set(self.parameters(name)) - set(given))}")
        hints, ranges = _hints(factory), getattr(factory, "RANGES", {})
        for key, value in params.items():
            _check_type(self.kind, name, key, value, hints.get(key))
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            # a parameter without declared bounds still refuses NaN and inf (every Range does)
            problem = ranges.get(key, Range()).violation(value) if number else None
            if problem:
                raise TextVAEError(f"{self.kind} {name!r}: {key} {problem}, got {value!r}")

    @property
    def key(self) -> str:
        """The kind as ``textvae list`` takes it: lower case, ``_`` for spaces (``kl_schedule``)."""
        return self.kind.lower().replace(" ", "_")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The names in the order they were registered (a table's row order: a new entry comes last)."""
        return list(self._entries)

    def parameters(self, name: str) -> dict[str, Any]:
        """The parameters a recipe may set for ``name``, each with its default (``inspect.Parameter.empty``
        where it has none): the constructor's, less those the caller supplies."""
        factory = self.get(name)
        if not callable(factory):
            return {}
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return {p.name: p.default for p in _signature(factory).values()
                if p.name != "self" and p.name not in self.supplied and p.kind not in skip}

    def takes(self, name: str, argument: str) -> bool:
        """Whether :meth:`build` hands the supplied ``argument`` to ``name`` (its constructor names it)."""
        signature = _signature(self.get(name))
        return argument in signature or _takes_any(signature)

    def doc(self, name: str) -> tuple[str, str]:
        """(the entry's own docstring, the docstring of the module that defines it); either may be "".
        A class without one takes its nearest base's from the same module (``lstm``: ``RNNDecoder``'s);
        an entry that is an object rather than a class or function gives its own as ``.doc``."""
        entry = self.get(name)
        if inspect.isclass(entry):
            own = next((c.__dict__["__doc__"] for c in entry.__mro__
                        if c.__module__ == entry.__module__ and c.__dict__.get("__doc__")), "")
        elif inspect.isfunction(entry):
            own = entry.__doc__ or ""
        else:
            return inspect.cleandoc(getattr(entry, "doc", "") or ""), ""
        module = sys.modules.get(entry.__module__)
        return inspect.cleandoc(own), inspect.cleandoc(getattr(module, "__doc__", None) or "")

    def summary(self, name: str) -> str:
        """The first paragraph of the entry's own docstring, else of its module's, on one line."""
        own, module = self.doc(name)
        return " ".join((own or module).split("\n\n")[0].split())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def list_registries() -> list[Registry[Any]]:
    """Every registry created so far (importing a package creates and fills its registries)."""
    return list(_REGISTRIES)


# what a recipe value of an annotated parameter may be: YAML gives 1 for 1.0, and 1e4 is 10000.0
_ACCEPTS = {float: ((int, float), "a number"), int: ((int, float), "an integer"), bool: ((bool,), "true or false"),
            str: ((str,), "a string")}


def _hints(factory: Any) -> dict[str, Any]:
    """The constructor's type annotations, resolved (``{}`` where they cannot be)."""
    try:
        return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # a name only a type checker resolves: no check rather than a failure
        return {}


def _check_type(kind: str, name: str, key: str, value: Any, hint: Any) -> None:
    """A recipe value of the wrong type for a plainly annotated parameter (``float``, ``Optional[int]``, ...)
    is a one-line error naming the parameter, not the message of whatever the constructor does with it."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    plain = [a for a in args if a is not type(None)] if optional else [hint]
    if len(plain) != 1 or plain[0] not in _ACCEPTS or (optional and value is None):
        return
    accepted, what = _ACCEPTS[plain[0]]
    fractional = plain[0] is int and isinstance(value, float) and not value.is_integer()
    if not isinstance(value, accepted) or (isinstance(value, bool) and plain[0] is not bool) or fractional:
        raise TextVAEError(f"{kind} {name!r}: {key} must be {what}{' or null' if optional else ''}, got {value!r}")


def part_modules() -> list[str]:
    """The modules outside textvae that registered parts in this process, whether a plugin
    (``TEXTVAE_PLUGINS``) or a script imported them: a run records them with the code it ran, so that reading
    it without them is explained. ``__main__`` is left out: it cannot be imported again."""
    modules = {registry.own_module(name) for registry in _REGISTRIES for name in registry._modules}
    return sorted(m for m in modules if m is not None and m != "__main__")


def _origin(obj: Any) -> Optional[str]:
    """Where a registered class or function was defined, ``module.qualname``; None for an instance or a lambda
    (every lambda of a scope has one qualname)."""
    qualname = getattr(obj, "__qualname__", None) if isinstance(obj, (type, types.FunctionType)) else None
    return f"{obj.__module__}.{qualname}" if qualname and "<lambda>" not in qualname else None


def _signature(factory: Any) -> dict[str, inspect.Parameter]:
    if inspect.isclass(factory):
        owner = next(c for c in factory.__mro__ if "__init__" in vars(c))
        if owner in (object, nn.Module):  # a part without a constructor of its own takes nothing
            return {}  # (nn.Module's takes *args, **kwargs only to refuse them)
        return dict(inspect.signature(factory.__init__).parameters)
    return dict(inspect.signature(factory).parameters)


def _takes_any(signature: dict[str, inspect.Parameter]) -> bool:
    """Whether a constructor with this signature takes any keyword (``**kwargs``)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
