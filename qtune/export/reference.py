"""The reference models' fidelity scores, measured once per run and reused by every later export and the report.

Every export (:mod:`qtune.export.scoring`) compares itself with the merged model (``merged``), and the
merged export also with the trained one (``trained``: the adapter merged into its dequantized base,
which equals the adapter on the base the recipe loads). Their scores depend only on the run,
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

``qtune report`` takes its ``fine-tuned`` row's perplexity and eval loss from the stored ``trained``
scores (:func:`report_figures`) when an export measured them on the report's own inputs: on CPU, in
float32, the report's text, token cap, window and stride, and the whole eval split (e.g. ``qtune export
RUN --format gguf --fidelity-tokens 4096 --fidelity-examples 0`` for the report's CPU defaults).
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
    """The scores measured earlier from exactly ``key``, or None (none stored, or a damaged file: measured again)."""
    from qtune.errors import QtuneError

    path = _path(run_dir, key)
    if not path.is_file():
        return None
    try:
        kept = rundir.read_json(path)
    except QtuneError:
        return None
    return kept.get("scores") if isinstance(kept, dict) and kept.get("key") == key else None


def store(run_dir: Path, key: dict, scores: dict) -> Path:
    path = _path(run_dir, key)
    rundir.write_json(path, {"key": key, "scores": scores})
    return path


def report_figures(run_dir: Path, recipe, settings, device: str) -> dict | None:
    """The ``perplexity`` and ``eval`` parts of the report's ``fine-tuned`` row from the stored ``trained`` scores
    measured on exactly the report's inputs (``settings``: its EvalSettings, filled for the device), or None."""
    if device != "cpu" or recipe.quant.compute_dtype != "float32":
        return None  # on a GPU the report runs the 4-bit kernels, the export a merged model: not the same numbers
    want = {"text": list(settings.text), "max_tokens": settings.max_tokens, "examples": 0,
            "window": settings.window, "stride": settings.stride}
    key = reference_key(run_dir, recipe, "trained", "dequantized", want, device, "float32")
    scores = stored(run_dir, key)
    if scores is None:
        return None
    t = scores["text"]
    return {
        "perplexity": {"perplexity": scores["perplexity"], "scored_tokens": t["scored_tokens"], "text_tokens": t.get("text_tokens"),
                       "max_tokens": settings.max_tokens, "window": t["window"], "stride": t["stride"], "text": t["text"]},
        "eval": {"eval_loss": scores["eval_loss"], "eval_examples": scores["eval_examples"],
                 "eval_data": recipe.data.eval.path if recipe.data.eval else None},
        "notes": [f"perplexity and eval loss: the scores qtune export stored in {_path(run_dir, key)} "
                  "(the adapter merged into its dequantized base, on these inputs), not measured again"],
    }
