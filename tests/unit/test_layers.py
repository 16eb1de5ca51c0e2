"""node/ is layered: its import graph, drawn from the source with `ast`, has no cycle, neither
between modules nor between its parts (node/engine, node/memory, node/options.py, ...), and
node never imports the router."""

from __future__ import annotations

import ast
from pathlib import Path

NODE = Path(__file__).resolve().parents[2] / "node"

Graph = dict[str, set[str]]


def module_names(package: Path) -> dict[str, Path]:
    """Every module of `package` by its dotted name (a package by its own name)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        names[".".join(parts).removesuffix(".__init__")] = path
    return names


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function bodies and TYPE_CHECKING too):
    `from a.b import c` names a.b.c as well as a.b, as c may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}: use absolute imports"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: Path) -> Graph:
    modules = module_names(package)
    return {name: (imported_names(path) & modules.keys()) - {name}
            for name, path in modules.items()}


def part_of(module: str) -> str:
    """node.memory.backends.cpu is part of node.memory; node.options is a part of its own."""
    return ".".join(module.split(".")[:2])


def parts_graph(graph: Graph) -> Graph:
    parts: Graph = {}
    for module, imported in graph.items():
        part = part_of(module)
        parts.setdefault(part, set()).update(part_of(name) for name in imported)
        parts[part].discard(part)
    return parts


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of `graph` as the path around it, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return None
        for imported in sorted(graph.get(name, ())):
            if cycle := visit(imported, [*path, name]):
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := visit(name, []):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_holds_imports_at_every_depth():
    graph = import_graph(NODE)
    assert "node.runtime" in graph["node.server"]
    assert "node.server" in graph["node.cli"]  # imported inside a function


def test_no_node_module_imports_itself_back():
    cycle = find_cycle(import_graph(NODE))
    assert cycle is None, " -> ".join(cycle)


def test_no_part_of_node_imports_a_part_that_imports_it_back():
    cycle = find_cycle(parts_graph(import_graph(NODE)))
    assert cycle is None, " -> ".join(cycle)


def test_node_never_imports_the_router():
    offenders = sorted(name for name, path in module_names(NODE).items()
                       if any(imported.split(".")[0] == "router"
                              for imported in imported_names(path)))
    assert offenders == []
