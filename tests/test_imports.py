"""The package's import graph: no cycles, and no stage reaches into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unetscout"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every import in `path`, lazy ones inside functions included."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return [(target, names) for target, names in found if target.split(".")[0] == "unetscout"]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        edges = set()
        for target, names in imports_of(path):
            # `from unetscout.models import cell` imports the module unetscout.models.cell
            edges |= {f"{target}.{n}" for n in names if f"{target}.{n}" in modules} or {target}
        graph[module_name(path)] = edges - {module_name(path)}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_package_has_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_no_stage_imports_another_stages_private_names():
    offending = []
    for path in PACKAGE.rglob("*.py"):
        here = module_name(path)
        for target, names in imports_of(path):
            for name in names:
                private = name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
                if private and stage(target) != stage(here):
                    offending.append(f"{here} imports {target}.{name}")
    assert offending == []


@pytest.mark.parametrize("stage_name, forbidden", [
    ("models", ("train", "search", "evaluate", "stats", "width")),   # models never import training
    ("runs", ("train", "search")),                                     # the protocol sits below its users
    ("names", tuple(p.stem for p in PACKAGE.iterdir() if p.stem not in ("names", "__init__", "__pycache__"))),
])
def test_stages_import_only_what_comes_before_them(stage_name, forbidden):
    graph = import_graph()
    offending = [(m, t) for m, targets in graph.items() if stage(m) == stage_name or m == f"unetscout.{stage_name}"
                 for t in targets if stage(t) in forbidden]
    assert offending == []
