"""The compatibility boundary: no module outside ``qtune/compat/`` touches another library's private name, and every
private name a compat module touches exists, with the parameters qtune passes, on the installed versions.

Run alone against the newest versions pyproject.toml allows by ``scripts/check_newest.sh`` (first, before the suite).

What counts as touching a private name, found in the syntax tree of every qtune module:
- ``from lib import _name`` or an import of a module path with a ``_part``, ``lib`` not qtune;
- ``obj._name`` where ``obj`` is not ``self``/``cls`` and not a name the file binds to qtune (its own classes and
  functions, or an import from qtune); ``super()._name`` always;
- ``getattr/setattr/hasattr/delattr(obj, "_name")`` on such an ``obj``;
- in a class that derives from a library's class: a method ``_name`` that a library base defines (an override),
  and a read of ``self._name`` that the class itself neither defines nor assigns (so it is the base's).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOUNDARY = "qtune/compat/"
ACCESSORS = {"getattr", "setattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _own_names(tree: ast.Module) -> set[str]:
    """Names the file binds to its own definitions or to imports from qtune."""
    own = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "qtune":
            own |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            own |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "qtune"}
    return own


def _library_bases(module: str, cls: str) -> list[type]:
    """The non-qtune classes in the MRO of ``module.cls`` (empty where the class cannot be looked up)."""
    obj = getattr(importlib.import_module(module), cls, None)
    if not isinstance(obj, type):
        return []
    return [b for b in obj.__mro__[1:] if b is not object and not b.__module__.startswith("qtune")]


def private_touches(path: Path, module: str | None = None) -> list[str]:
    """'file:line: what' for every touch of a library's private name in ``path`` (module docstring)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _own_names(tree)
    where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
    found = []

    def foreign(obj: ast.expr) -> bool:
        if isinstance(obj, ast.Name):
            return obj.id not in own and obj.id not in ("self", "cls")
        return True

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] != "qtune" and not node.level:
            parts = (node.module or "").split(".")
            found += [f"{where}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if _private(a.name) or any(_private(p) for p in parts)]
        elif isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] != "qtune" and any(_private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name) and node.value.func.id == "super":
                found.append(f"{where}:{node.lineno}: super().{node.attr}")
            elif foreign(node.value):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node.value)}.{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ACCESSORS
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and foreign(node.args[0])):
            found.append(f"{where}:{node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, {node.args[1].value!r})")
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.bases and module):
        bases = _library_bases(module, cls.name)
        if not bases:
            continue
        mine = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)} | {
            t.attr for n in ast.walk(cls) if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Attribute) and ast.unparse(t.value) == "self"}
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef) and _private(node.name):
                owner = next((b for b in bases if node.name in vars(b)), None)
                if owner is not None:
                    found.append(f"{where}:{node.lineno}: {cls.name}.{node.name} overrides {owner.__qualname__}'s")
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value) == "self"
                  and _private(node.attr) and node.attr not in mine):
                found.append(f"{where}:{node.lineno}: self.{node.attr} of {cls.name}'s library base")
    return found


def test_only_the_boundary_touches_private_names():
    found = []
    for path in sorted((REPO / "qtune").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if not rel.startswith(BOUNDARY):
            found += private_touches(path, rel.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
    assert not found, ("private names of other libraries touched outside qtune/compat/ (move each use into the "
                       "library's compat module):\n" + "\n".join(found))


@pytest.mark.parametrize("text, expected", [
    ("from bitsandbytes.functional import _inverse\n", "from bitsandbytes.functional import _inverse"),
    ("import torch._dynamo\n", "import torch._dynamo"),
    ("def f(m):\n    return m._buffers\n", "m._buffers"),
    ("def f(ds):\n    return getattr(ds, '_fingerprint')\n", "getattr(ds, '_fingerprint')"),
    ("class T(Base):\n    def f(self):\n        return super()._save_checkpoint()\n", "super()._save_checkpoint"),
])
def test_the_scan_finds_each_kind_of_touch(tmp_path, text, expected):
    f = tmp_path / "m.py"
    f.write_text(text)
    assert [t.split(": ", 1)[1] for t in private_touches(f)] == [expected]


def test_the_scan_leaves_qtune_own_private_names(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from qtune.kernels.dequant import _cast\n\ndef _helper():\n    pass\n\n"
                 "class W:\n    def __init__(self):\n        self._buffers = {}\n\n    def g(self):\n"
                 "        return self._buffers, _helper, W._g\n\n    def _g(self):\n        pass\n")
    assert private_touches(f) == []


def test_an_override_of_a_library_private_method_is_found(tmp_path, monkeypatch):
    f = tmp_path / "probe_override.py"
    f.write_text("import torch\n\n\nclass M(torch.nn.Module):\n    def _apply(self, fn, recurse=True):\n"
                 "        self._mine = 1\n        return self._modules, self._mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [t.split(": ", 1)[1] for t in private_touches(f, "probe_override")] == [
        "M._apply overrides Module's", "self._modules of M's library base"]


COMPAT = ["transformers", "bitsandbytes", "liger", "datasets", "torch"]
# Attributes that exist on instances only: how to make one
INSTANCES = {
    "torch.nn.Module": lambda: importlib.import_module("torch").nn.Module(),
    "datasets.Dataset": lambda: importlib.import_module("datasets").Dataset.from_dict({"text": ["a"]}),
    "transformers.PretrainedConfig": lambda: importlib.import_module("transformers").LlamaConfig(),
}


def _resolve(path: str):
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for i, name in enumerate(parts[cut:]):
            owner = ".".join(parts[: cut + i])
            if not hasattr(obj, name) and owner in INSTANCES:
                obj = INSTANCES[owner]()
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("lib", COMPAT)
def test_every_touched_symbol_exists_with_its_signature(lib):
    compat = importlib.import_module(f"qtune.compat.{lib}")
    if compat.VERSION is None:
        pytest.skip(f"{lib} is not installed")
    for path, params in compat.TOUCHES:
        obj = _resolve(path)  # AttributeError names what is gone
        if params is not None:
            have = list(inspect.signature(obj).parameters)
            assert have[: len(params)] == params or set(params) <= set(have), \
                f"{path}{inspect.signature(obj)}: qtune calls it with {params} ({lib} {compat.VERSION})"
    print(f"{lib} {compat.VERSION} (supported {compat.SUPPORTED}): {len(compat.TOUCHES)} symbols as expected")


def test_attention_calls_the_rotary_global_the_swap_replaces():
    from qtune.compat.transformers import ROTARY_CALLERS

    for path in ROTARY_CALLERS:
        assert "apply_rotary_pos_emb(" in inspect.getsource(_resolve(path)), f"{path} no longer calls apply_rotary_pos_emb"


def test_trainer_hooks_name_nothing_trainer_has():
    import transformers

    from qtune.compat.transformers import TrainerHooks

    public = [n for n in vars(TrainerHooks) if not n.startswith("_")]
    assert not [n for n in public if hasattr(transformers.Trainer, n)], public


def test_a_version_outside_the_range_is_one_line():
    from qtune.compat.versions import require
    from qtune.errors import QtuneError

    installed = re.escape(importlib.import_module("qtune.compat.torch").VERSION)
    with pytest.raises(QtuneError, match=rf"^qtune.compat.torch: torch {installed} is installed, but qtune's use of its "
                                         rf"internals is checked for torch<2\.0 only; pip install 'torch<2\.0'$"):
        require("torch", "<2.0", "qtune.compat.torch")
    assert require("no-such-distribution", ">=1", "m") is None
