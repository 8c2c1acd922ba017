"""qtune's layers, declared here and enforced: every import runs down the floors, and no files import each other
in a loop.

Floors, from the ground up (a package may import its own files and any package on a lower floor; packages
on the same floor do not import each other):

==  ==========================================  ===============================================================
 0  ``qtune`` (its version), errors, noise,     leaves: import nothing of qtune
    json_stdout, cachedir
 1  rundir, device, memory                      the run directory's names, the device resolver, the one
                                                peak-memory measure (their errors are qtune's)
 2  registry, compat, tracking                  the names every layer chooses from (families, choices, exports);
                                                the only modules that touch other libraries' private names;
                                                the tracker set-up (the run's tensorboard folder)
 3  recipe                                      the schema a run is read into
 4  kernels, models                             4-bit kernels; resolving and loading every kind of model
 5  data                                        readers, templates, masking, the tokenized cache
 6  eval                                        metrics of a loaded model: loss, perplexity, generation, footprint
 7  train                                       the training run as named steps (its evaluation reads eval's loss)
 8  export                                      merge, GPTQ, AWQ, GGUF of a finished run
 9  report, plan                                report reads export's outputs; plan measures train's steps
10  flags                                       the command line's numeric and size flags (sizes parsed as plan does)
11  cli                                         the command line; export after training runs here, above both
12  ``qtune.__main__``                          ``python -m qtune``
==  ==========================================  ===============================================================

Every import in the source counts: at module level, inside a function, under ``if TYPE_CHECKING``. qtune
imports heavy libraries lazily, so a lazy import is still a dependency. An import is an edge from one file to
another: ``from qtune.kernels import blocks`` is an edge to ``qtune/kernels/blocks.py`` (a module), ``from
qtune.kernels import apply`` one to ``qtune/kernels/__init__.py`` (a name the package face hands on).

The checker runs on any source tree, so the tests at the end prove that it fails on an upward import and on a
loop inside one package, on synthetic trees.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = [
    {"qtune", "errors", "noise", "json_stdout", "cachedir"},
    {"rundir", "device", "memory"},
    {"registry", "compat", "tracking"},
    {"recipe"},
    {"kernels", "models"},
    {"data"},
    {"eval"},
    {"train"},
    {"export"},
    {"report", "plan"},
    {"flags"},
    {"cli"},
    {"__main__"},
]
# No import against the floors is allowed (export after training runs in the CLI, above both train and export).
ALLOWED: set[tuple[str, str]] = set()


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root/qtune``."""
    out = {}
    for path in sorted((root / "qtune").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _targets(node: ast.AST, module: str, path: Path, known: dict[str, Path]) -> list[str]:
    """The qtune modules an import statement depends on."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = _package_of(module, path).split(".")
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        # `from pkg import sub` depends on the submodule where one of that name exists, else on the package face
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in known:  # `import qtune.x.y` of a name inside a module: the module
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(root: Path) -> dict[str, dict[str, str]]:
    """module -> {imported module: 'file:line' of its first such import}, over every import statement."""
    known = modules(root)
    graph: dict[str, dict[str, str]] = {}
    for module, path in known.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(node, module, path, known):
                edges.setdefault(target, f"{path.relative_to(root)}:{node.lineno}")
    return graph


def unit(module: str) -> str:
    """The package a module belongs to: ``qtune.export.merge`` -> ``export``; ``qtune`` itself -> ``qtune``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def floor_of(name: str) -> int | None:
    return next((i for i, floor in enumerate(FLOORS) if name in floor), None)


def against_the_floors(graph: dict[str, dict[str, str]], allowed=frozenset()) -> list[str]:
    """One line per import that runs sideways or up, and per package that stands on no floor."""
    bad = sorted({f"qtune/{unit(m)}: on no floor; add it to FLOORS in tests/test_layers.py"
                  for m in graph if floor_of(unit(m)) is None})
    for src, edges in sorted(graph.items()):
        for dst, where in sorted(edges.items()):
            a, b = unit(src), unit(dst)
            fa, fb = floor_of(a), floor_of(b)
            if a == b or fa is None or fb is None or fb < fa or (src, dst) in allowed:
                continue
            how = "above it" if fb > fa else "beside it on the same floor"
            bad.append(f"{where}: {src} imports {dst}: {a} (floor {fa}) may not import {b} (floor {fb}, {how})")
    return bad


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
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


def check_floors(root: Path, allowed=frozenset()) -> None:
    bad = against_the_floors(import_graph(root), allowed)
    assert not bad, "imports against qtune's floors (tests/test_layers.py declares them):\n" + "\n".join(bad)


def check_no_cycles(root: Path) -> None:
    graph = import_graph(root)
    found = cycles(graph)
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{a} -> {b} ({graph[a][b]})" for a in c for b in c if b in graph[a])
              for c in found]
    assert not found, "modules that import each other in a loop:\n" + "\n".join(detail)


def test_imports_run_down_the_floors():
    check_floors(REPO, ALLOWED)


def test_no_module_imports_another_in_a_loop():
    check_no_cycles(REPO)



def test_the_package_never_imports_scripts():
    for path in (REPO / "qtune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] == "scripts"], f"{path.relative_to(REPO)}:{node.lineno}"


# The checker itself, on synthetic trees.

def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"qtune/__init__.py": "", "qtune/errors.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _floor(package: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if package in floor)


def test_an_upward_import_inside_a_function_fails(tmp_path):
    root = _tree(tmp_path, {
        "qtune/data/__init__.py": "",
        "qtune/data/cache.py": "from qtune.errors import QtuneError\n\ndef path():\n    from qtune.train.run import train\n",
        "qtune/train/__init__.py": "",
        "qtune/train/run.py": "from qtune.data import cache\n",
    })
    data, train = _floor("data"), _floor("train")
    with pytest.raises(AssertionError, match=rf"qtune/data/cache.py:4: qtune.data.cache imports qtune.train.run: "
                                             rf"data \(floor {data}\) may not import train \(floor {train}, above it\)"):
        check_floors(root)
    check_floors(root, allowed={("qtune.data.cache", "qtune.train.run")})


def test_an_import_beside_on_the_same_floor_fails(tmp_path):
    root = _tree(tmp_path, {"qtune/models/__init__.py": "", "qtune/models/load.py": "from qtune.kernels import apply\n",
                            "qtune/kernels/__init__.py": "apply = None\n"})
    floor = _floor("models")
    with pytest.raises(AssertionError, match=rf"qtune.models.load imports qtune.kernels: models \(floor {floor}\) may not "
                                             rf"import kernels \(floor {floor}, beside it on the same floor\)"):
        check_floors(root)


def test_a_package_on_no_floor_fails(tmp_path):
    root = _tree(tmp_path, {"qtune/serve/__init__.py": "", "qtune/serve/http.py": "import qtune.errors\n"})
    with pytest.raises(AssertionError, match=r"qtune/serve: on no floor"):
        check_floors(root)


def test_a_loop_inside_one_package_fails(tmp_path):
    root = _tree(tmp_path, {
        "qtune/export/__init__.py": "",
        "qtune/export/merge.py": "def merged():\n    from qtune.export.layerwise import MergedWeights\n",
        "qtune/export/layerwise.py": "from . import shards\n\nclass MergedWeights:\n"
                                     "    def get(self):\n        from .merge import merged\n",
        "qtune/export/shards.py": "",
    })
    with pytest.raises(AssertionError, match=r"qtune.export.layerwise <-> qtune.export.merge: "
                                             r"qtune.export.layerwise -> qtune.export.merge \(qtune/export/layerwise.py:5\)"):
        check_no_cycles(root)
    check_floors(root)  # a loop inside one package is no floor's business


def test_a_loop_through_a_package_face_is_found(tmp_path):
    # the face hands on a name of dispatch; blocks takes a NAME from the face (not a submodule): a loop
    root = _tree(tmp_path, {
        "qtune/kernels/__init__.py": "from qtune.kernels.dispatch import apply\n",
        "qtune/kernels/dispatch.py": "def apply():\n    import qtune.kernels.blocks as blocks\n",
        "qtune/kernels/blocks.py": "from qtune.kernels import apply\n",
        "qtune/kernels/peft_layers.py": "",
    })
    assert cycles(import_graph(root)) == [["qtune.kernels", "qtune.kernels.blocks", "qtune.kernels.dispatch"]]
    (root / "qtune/kernels/blocks.py").write_text("from qtune.kernels import peft_layers\n")  # a module: no loop
    assert cycles(import_graph(root)) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ""}, "b": {}}) == []
