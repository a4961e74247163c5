"""The shape of the code: imports run one way (no cycle, counting imports inside functions), no
function (of the package or the benchmarks) is longer than 80 lines, and the training loop calls ``backward`` in one place."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "textvae"
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (top level or inside a
    function): ``from a.b import c`` imports the module a.b.c when there is one, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {t for t in targets if t in known and t != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found."""
    (tmp_path / "a.py").write_text("import pkg.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg import a\n")
    graph = {n: imports_of(n, tmp_path / f"{n[4:]}.py", {"pkg.a", "pkg.b"}) for n in ("pkg.a", "pkg.b")}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def functions() -> list[tuple[str, int]]:
    """(``file:line name``, length in lines) of every function and method of the package and of the
    benchmarks (the scripts behind the published figures are read as often as the package)."""
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", node.end_lineno - first + 1))
    return found


def test_no_function_is_longer_than_80_lines():
    assert functions(), "no function found: the walk is broken"
    assert [(where, n) for where, n in functions() if n > MAX_FUNCTION_LINES] == []


def backward_calls() -> list[str]:
    """``file function`` of every ``.backward(`` call in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                         and c.func.attr == "backward"]
                found += [f"{path.relative_to(PACKAGE.parent).as_posix()} {node.name}"] * len(calls)
    return found


def test_one_backward_call_for_the_training_loop():
    """One training step's backward (the loop's) and the aggressive remedy's inner encoder steps;
    nothing else in the package takes gradients of a loss (evaluation never does)."""
    assert sorted(backward_calls()) == ["textvae/remedies/aggressive.py _encoder_step",
                                        "textvae/training/train.py train_step"]


# Layers from the bottom; a module may import only from its own layer or those below.
LAYERS = [
    ("base", ["textvae", "textvae.config", "textvae.errors", "textvae.registry", "textvae.reduction",
              "textvae.plugins"]),
    ("data", ["textvae.data", "textvae.dialogue.config", "textvae.dialogue.data"]),
    ("model parts", ["textvae.models"]),
    ("objective", ["textvae.objective", "textvae.remedies", "textvae.schedules"]),
    ("models", ["textvae.models.textvae", "textvae.models.decoding", "textvae.dialogue.model"]),
    ("metrics", ["textvae.metrics", "textvae.dialogue.metrics", "textvae.dialogue.generation"]),
    ("training", ["textvae.training"]),
    ("tasks", ["textvae.tasks"]),
    ("front ends", ["textvae.cli", "textvae.study", "textvae.sweeps", "textvae.plots", "textvae.dialogue",
                    "textvae.pretrained"]),
]


def layer_of(module: str) -> int:
    """The layer of the longest prefix naming ``module`` (a package names its submodules)."""
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def test_imports_run_one_way():
    """data -> model parts -> objective / remedies -> models -> metrics -> training -> tasks -> front ends."""
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in import_graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == []
    assert layer_of("textvae.models.textvae") > layer_of("textvae.objective") > layer_of("textvae.models.decoders")
