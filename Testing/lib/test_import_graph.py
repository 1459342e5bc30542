"""The import graph of the library and the Slicer module, read from the code's own imports (``ast``):
no module imports itself round a circle, and no module imports one of a higher layer.

``LAYERS`` is the one statement of the layer order in code (docs/ARCHITECTURE.md, "Layers",
describes each layer). A module belongs to the layer whose prefix names it most closely; every
module must belong to one. Imports inside functions count as much as those at the top of a
module: a function-level import still runs the module it names, and it is no licence to reach
upwards or round a circle (there is no exception today; one would be named here).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

ROOTS = {"LesionFactorizerLib": REPO, "LesionFactorizerModuleLib": REPO / "LesionFactorizer"}
SLICER_MODULE = REPO / "LesionFactorizer" / "LesionFactorizer.py"

# Lowest first. A module may import its own layer and the layers before it.
LAYERS = (
    # the folder of torch-free facts and rules the Slicer GUI may import (test_core_torch_free.py)
    ("core", ("LesionFactorizerLib", "LesionFactorizerLib.core")),
    ("networks", ("LesionFactorizerLib.nn", "LesionFactorizerLib.presets")),
    ("model files", ("LesionFactorizerLib.modelfile", "LesionFactorizerLib.catalog")),
    ("pipeline", ("LesionFactorizerLib.pipeline",)),
    ("data and evaluation", ("LesionFactorizerLib.datalist", "LesionFactorizerLib.datasets",
                             "LesionFactorizerLib.phantoms", "LesionFactorizerLib.evaluation")),
    ("applications", ("LesionFactorizerLib.cli", "LesionFactorizerLib.serve", "LesionFactorizerLib.demo",
                      "LesionFactorizerLib.__main__", "LesionFactorizerLib.processmemory")),
    ("Slicer module", ("LesionFactorizerModuleLib", "LesionFactorizer")),
)


def module_files() -> dict[str, Path]:
    modules = {"LesionFactorizer": SLICER_MODULE}
    for package, base in ROOTS.items():
        for path in (base / package).rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its file. ``from P import x`` names
    the module ``P.x`` when that is one, else ``P``; ``import P.x.y`` names the deepest module."""

    def ours(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(ours(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else ours(base) for a in node.names)
    return found - {None, name}


def layer_of(module: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (module.startswith(prefix + ".") and prefix != "LesionFactorizerLib")
            if covers and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return None if best is None else best[1]


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter = counter + 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter = counter + 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def edges():
    return graph()


def test_the_graph_is_read_from_the_code(edges):
    """Guard against a vacuous pass: known imports, at the top and inside functions, are seen."""
    assert "LesionFactorizerLib.core.tasks" in edges["LesionFactorizerLib.core.spec"]            # module level
    assert "LesionFactorizerLib.presets" in edges["LesionFactorizerLib.modelfile"]      # inside a function
    assert "LesionFactorizerModuleLib.worker" in edges["LesionFactorizer"]
    assert len(edges) > 100


def test_every_module_has_a_layer(edges):
    assert [m for m in sorted(edges) if layer_of(m) is None] == []


def test_no_import_cycles(edges):
    assert cycles(edges) == []


def test_no_import_reaches_a_higher_layer(edges):
    upward = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                    for m, targets in edges.items() for t in targets if layer_of(t) > layer_of(m))
    assert upward == []


def test_cycles_and_upward_imports_are_found():
    """The checks can fail: a circle and an upward import in a made-up graph are reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("LesionFactorizerLib.pipeline.segment") > layer_of("LesionFactorizerLib.core.settings")
    assert layer_of("LesionFactorizerLib.core.layout") < layer_of("LesionFactorizerLib.nn.unet")
    assert layer_of("LesionFactorizerLib.core.anything_new") == 0   # the folder states the rule
    assert layer_of("LesionFactorizerLib.somewhere_new") is None   # a new module must be placed
