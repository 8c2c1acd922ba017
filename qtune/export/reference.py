"""The reference models' fidelity scores, measured once per run and reused by every later export.

Every export compares itself with the merged model (``merged``), and the merged export also with the
trained one (``trained``: the adapter on its dequantized base). Their scores depend only on the run,
the text, the eval split and the settings, so they are stored under
``<run>/fidelity-reference/<model>-<hash>.json`` (written atomically) with the key they were
measured from:

- the run (its resolved path), the merge base, qtune's version;
- name, size and modification time of every file the scores read: the base checkpoint, the adapter,
  the eval text and the recipe's data files; the recipe's ``quant`` and ``data`` sections;
- the fidelity settings (text, token and conversation budget, window, stride), the device type and
  the compute dtype.

A later export with an equal key reads the scores instead of measuring; any difference measures
again (and stores the new scores beside the old). Not in the key: the batch size and whether the
model was held in memory or streamed a layer at a time: both give the same figures within the bound
measured in tests/export/test_scoring.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qtune import __version__, rundir


def _files(roots: list[Path]) -> list[list]:
    """[path, size, mtime_ns] of every file under ``roots`` (files or folders), sorted by path."""
    found = sorted(f for r in roots for f in ([r] if r.is_file() else r.rglob("*")) if f.is_file())
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in found]


def reference_key(run_dir: Path, recipe, model: str, merge_base: str, settings_key: dict, device: str, dtype: str) -> dict:
    """What the stored scores of ``model`` (``merged`` or ``trained``) were measured from."""
    from qtune.eval.text import DEFAULT_TEXT
    from qtune.models.load import resolve_model_path

    texts = [Path(t) for t in settings_key.get("text") or []] or [DEFAULT_TEXT]
    sources = [*recipe.data.train, *([recipe.data.eval] if recipe.data.eval else [])]
    data = [Path(s.path) for s in sources if not s.is_hub and Path(s.path).exists()]
    roots = [Path(resolve_model_path(recipe.model.path)), Path(run_dir) / rundir.ADAPTER, *texts, *data]
    return json.loads(json.dumps({
        "model": model, "run": str(Path(run_dir).resolve()), "merge_base": merge_base if model == "merged" else "dequantized",
        "qtune": __version__, "quant": recipe.quant.model_dump(mode="json"), "data": recipe.data.model_dump(mode="json"),
        "settings": settings_key, "device": device, "dtype": dtype, "files": _files(roots),
    }))


def _path(run_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(run_dir) / rundir.FIDELITY_REFERENCE / f"{key['model']}-{digest}.json"


def stored(run_dir: Path, key: dict) -> dict | None:
    """The scores measured earlier from exactly ``key``, or None."""
    try:
        kept = rundir.read_json(_path(run_dir, key))
    except (OSError, ValueError):
        return None
    return kept.get("scores") if kept.get("key") == key else None


def store(run_dir: Path, key: dict, scores: dict) -> Path:
    path = _path(run_dir, key)
    rundir.write_json(path, {"key": key, "scores": scores})
    return path
