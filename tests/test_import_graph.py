"""The package's static import graph (every ``import`` statement in src/memvos, lazy ones included): no
cycle, no private name of another module imported, and the benchmark module a leaf of the ``bench``
command (issue 12)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / "memvos").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name or None) of every absolute memvos import in ``path``."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "memvos"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "memvos":
                found += [(node.module, a.name) for a in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for module, imported in _imports(path):
            full = f"{module}.{imported}" if imported else module
            target = full if full in mods else module
            if target in mods and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


def test_cycle_finder_sees_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert "memvos.inference.session" in graph and graph["memvos.inference.session"]
    assert find_cycles(graph) == []


def test_no_private_name_is_imported_from_another_module():
    offenders = [
        f"{name}: from {module} import {imported}"
        for name, path in _modules().items()
        for module, imported in _imports(path)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert offenders == []


def test_benchmark_module_is_only_imported_by_the_bench_command():
    importers = sorted(
        name
        for name, path in _modules().items()
        if any(module == "memvos.benchmark" for module, _ in _imports(path)) and name != "memvos.benchmark"
    )
    assert importers == ["memvos.cli.bench"]


def test_package_metadata_version_is_the_code_version():
    import tomllib

    import memvos

    meta = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    assert meta["project"]["version"] == memvos.__version__
