"""The import graph of the packages has no cycle, and imports go one way between layers (STYLE.md rule 1).

Every import statement counts, module-level or inside a function: a function-level import hides a
cycle from Python at start-up but not from a reader, and breaks as soon as the order changes.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "state", "training")
# Every module belongs to one layer (a module or package named here) and imports only its own layer and
# the layers before it: pipeline's jobs (pipeline/__init__.py says what each holds), state, training.
LAYERS = ("pipeline.errors", "pipeline.format", "pipeline.load", "pipeline.make", "state", "training")


def package_modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that the file imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from a import b` imports the submodule a.b when there is one, else a name of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(name: str, layers: tuple[str, ...] = LAYERS) -> int | None:
    """Position in `layers` of the one that is `name` or a package holding it; None if none is."""
    return next((i for i, layer in enumerate(layers) if name == layer or name.startswith(layer + ".")), None)


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Every import of a module from a later layer than its own, as "a (layer) imports b (layer)"."""
    found = []
    for name in sorted(graph):
        own = layer_of(name, layers)
        for target in sorted(graph[name]):
            other = layer_of(target, layers)
            if own is not None and other is not None and other > own:
                found.append(f"{name} ({layers[own]}) imports {target} ({layers[other]})")
    return found


def test_find_cycle_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imported_modules_sees_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "one.py").write_text("def f():\n    from pkg.two import g\n")
    (package / "two.py").write_text("from . import one\nfrom .one import f\n")
    modules = {"pkg.one": package / "one.py", "pkg.two": package / "two.py"}
    assert imported_modules("pkg.one", package / "one.py", modules) == {"pkg.two"}
    assert imported_modules("pkg.two", package / "two.py", modules) == {"pkg.one"}


def test_packages_have_no_import_cycle():
    modules = package_modules()
    assert {"pipeline.load.loader", "pipeline.load.epochs", "state.store", "training.trainer"} <= set(modules)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_upward_imports_names_each_import_from_a_later_layer():
    layers = ("p.low", "p.high", "q")
    graph = {"p.low.x": {"p.high.y"}, "p.high.y": {"p.low.x", "p.high.z"}, "p.high.z": set(), "q": {"p.low.x"},
             "p": {"q"}}
    assert [layer_of(name, layers) for name in ("p.low.x", "p.high", "q", "p", "p.lowish")] == [0, 1, 2, None, None]
    assert upward_imports(graph, layers) == ["p.low.x (p.low) imports p.high.y (p.high)"]


def test_every_pipeline_module_is_in_one_of_its_jobs():
    loose = [name for name in package_modules() if layer_of(name) is None and name != "pipeline"]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}; put each in pipeline/format/, load/ or make/"


def test_imports_go_one_way_between_layers():
    """pipeline/format/ (what is on disk) imports neither make/ nor load/; load/ (dataset -> Batch) does not
    import make/ (raw -> dataset); pipeline imports nothing of state or training, state nothing of training."""
    modules = package_modules()
    assert {"pipeline.format.dataset", "pipeline.load.loader", "pipeline.make.convert"} <= set(modules)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    found = upward_imports(graph)
    assert not found, f"a layer imports only itself and the layers before it in {LAYERS}:\n" + "\n".join(found)
