"""Where each consumer reads a model's stop tokens (:mod:`qtune.data.stops`) from, written and read back.

- transformers (and vLLM) read ``generation_config.json``'s ``eos_token_id`` (a list): the run's
  adapter folder gets one at the end of training, and the merged, GPTQ and AWQ exports copy it
  (:mod:`qtune.export.stream`); the base's own ids (Llama 3's ``<|eom_id|>``) are kept after the run's;
- llama.cpp reads ``tokenizer.ggml.eos_token_id`` and ``tokenizer.ggml.eot_token_id`` from the GGUF
  (:mod:`qtune.export.gguf_export` writes the latter where the converter does not);
- ``qtune generate``/``chat``/``report`` load a run or a GGUF with these ids added to the model's
  generation config (:mod:`qtune.models.sources`) and stop on them (:func:`qtune.eval.generate.stop_ids_of`).
"""

from __future__ import annotations

import json
from pathlib import Path

GENERATION_CONFIG = "generation_config.json"


def _as_list(ids) -> list[int]:
    if ids is None:
        return []
    return [ids] if isinstance(ids, int) else list(ids)


def merge_ids(ids, more) -> list[int]:
    """``ids`` then ``more`` (each an id, a list or None) without repeats."""
    return list(dict.fromkeys(int(i) for i in [*_as_list(ids), *_as_list(more)]))


def read_stop_ids(folder: str | Path) -> list[int]:
    """``eos_token_id`` of ``folder``'s generation_config.json as a list (empty when there is none)."""
    path = Path(folder) / GENERATION_CONFIG
    if not path.is_file():
        return []
    return _as_list(json.loads(path.read_text(encoding="utf-8")).get("eos_token_id"))


def generation_config(base_path: str | Path, model_config, ids: list[int] | None = None):
    """The base's GenerationConfig (or one made from ``model_config``), its ``eos_token_id`` the stop
    ids ``ids`` plus its own; ``pad_token_id`` kept or set to the first stop id."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(base_path))
    except (OSError, ValueError):
        gen = GenerationConfig.from_model_config(model_config)
    if ids:
        gen.eos_token_id = merge_ids(ids, gen.eos_token_id)
    return gen


def write_generation_config(folder: str | Path, base_path: str | Path, model_config, ids: list[int]) -> None:
    generation_config(base_path, model_config, ids).save_pretrained(str(folder))


def gguf_stops(reader) -> dict[str, int]:
    """The stop ids a GGUF file names, as llama.cpp reads them: ``eos``, ``eot``, ``eom`` (those present)."""
    out = {}
    for kind in ("eos", "eot", "eom"):
        field = reader.fields.get(f"tokenizer.ggml.{kind}_token_id")
        if field is not None:
            out[kind] = int(field.contents())
    return out


def gguf_stop_ids(path: str | Path) -> list[int]:
    """:func:`gguf_stops` of the file at ``path``, as a list."""
    import gguf

    return list(dict.fromkeys(gguf_stops(gguf.GGUFReader(str(path))).values()))
