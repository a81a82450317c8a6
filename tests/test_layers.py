"""Imports run one way: down the floors of the package, and never in a circle.

Every ``import`` in ``src/glioseg`` counts, at module level or inside a function (a lazy import
is still an arrow a reader has to follow).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import glioseg

ROOT = Path(glioseg.__file__).parent
# Bottom to top; a module may import from its own floor and from the floors below it.
FLOORS = (
    ("ground", ("glioseg", "glioseg.errors", "glioseg.precisions", "glioseg.config", "glioseg.devices",
                "glioseg.files", "glioseg.parallel", "glioseg.checkpoint_io", "glioseg.run_io",
                "glioseg.cpu_allocator")),
    ("data", ("glioseg.data",)),
    ("models", ("glioseg.models",)),
    ("evaluation", ("glioseg.evaluation",)),
    ("inference", ("glioseg.inference",)),
    ("training", ("glioseg.training",)),
    ("experiments", ("glioseg.experiments",)),
    ("commands", ("glioseg.commands", "glioseg.cli", "glioseg.__main__")),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def floor(module: str) -> int:
    """The floor of ``module``: the most specific prefix listed in :data:`FLOORS`."""
    best, level = -1, None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} is on no floor: add it to FLOORS"
    return level


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports(module: str) -> set[str]:
    """The glioseg modules ``module`` imports anywhere in its file."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # ``from .x import y``, relative to the module's package
                package = _package(module).split(".")
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # ``from glioseg.inference import inputs``: the submodule when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != module}
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_is_on_a_floor():
    assert all(floor(m) >= 0 for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_higher_floor(module):
    upward = sorted(f"{target} ({FLOORS[floor(target)][0]})" for target in GRAPH[module]
                    if floor(target) > floor(module))
    assert not upward, f"{module} ({FLOORS[floor(module)][0]}) imports from above: {', '.join(upward)}"


def _cycle() -> list[str] | None:
    """One import circle of :data:`GRAPH`, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_and_package_imports():
    # cli imports each command inside run_command; commands import their engines at the top
    assert {"glioseg.commands.predict", "glioseg.commands.demo"} <= GRAPH["glioseg.cli"]
    assert "glioseg.inference.pipeline" in GRAPH["glioseg.commands.predict"]
    assert "glioseg.models.registry" in GRAPH["glioseg.models"]
