"""qtune's packages import one way: no cycle between them, and the leaf registries import nothing above them.

Every import in the source counts, at module level or inside a function (qtune imports heavy
libraries lazily, so a lazy import is still a dependency). A "package" is a top-level unit of qtune:
``qtune/<name>/`` or ``qtune/<name>.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

QTUNE = Path(__file__).resolve().parents[1] / "qtune"
LEAVES = {"errors", "registry"}  # import nothing from qtune but each other
TOP = "cli"  # imported by nobody but qtune/__main__.py (python -m qtune)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "qtune" and len(parts) > 1 else None


def package_graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: 'file:line' of one such import}."""
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(QTUNE.rglob("*.py")):
        rel = path.relative_to(QTUNE)
        unit = rel.parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        edges = graph.setdefault(unit, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "qtune" else [])
            for target in targets:
                dst = _unit(target)
                if dst and dst != unit and ((QTUNE / dst).is_dir() or (QTUNE / f"{dst}.py").is_file()):
                    edges.setdefault(dst, f"qtune/{rel}:{node.lineno}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    graph = package_graph()
    found = cycles(graph)
    detail = [f"{' <-> '.join(c)}: " + "; ".join(f"{a} -> {b} ({graph[a][b]})" for a in c for b in c if b in graph[a])
              for c in found]
    assert not found, "import cycles between qtune's packages:\n" + "\n".join(detail)


def test_leaf_registries_import_no_feature_package():
    graph = package_graph()
    bad = {leaf: {dst: where for dst, where in graph.get(leaf, {}).items() if dst not in LEAVES} for leaf in LEAVES}
    assert not any(bad.values()), bad


def test_nothing_imports_the_cli():
    graph = package_graph()
    assert not [(src, where[TOP]) for src, where in graph.items() if TOP in where and src != "__main__"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ""}, "b": {}}) == []
