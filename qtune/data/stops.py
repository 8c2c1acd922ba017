"""The tokens a model stops generating on, and the files each consumer reads them from.

A chat model stops at the end of its turn. Which token that is depends on the tokenizer and the
family: the tokenizer's EOS, and the family's end-of-turn token
(:attr:`~qtune.registry.families.Family.end_of_turn`: Gemma's ``<end_of_turn>`` is not its EOS
``<eos>``) when the tokenizer has it as one token. Both are *stop tokens*: masking trains an
assistant turn through the first stop token after its content (:mod:`qtune.data.masking`), and
every consumer is told the whole set, never a rewritten EOS:

- transformers reads ``generation_config.json``'s ``eos_token_id`` (a list): the run's adapter
  folder gets one at the end of training (:func:`write_generation_config`), and the merged, GPTQ
  and AWQ exports copy it (:mod:`qtune.export.stream`); the base's own ids (Llama 3's
  ``<|eom_id|>``) are kept;
- llama.cpp reads ``tokenizer.ggml.eos_token_id`` and ``tokenizer.ggml.eot_token_id`` from the GGUF
  (:mod:`qtune.export.gguf_export` writes the latter when the converter does not);
- ``qtune generate``/``chat``/``report`` pass the set to ``generate`` (:func:`qtune.eval.generate.stop_ids_of`).
"""

from __future__ import annotations

import json
from pathlib import Path

GENERATION_CONFIG = "generation_config.json"


def single_token_id(tokenizer, text: str | None) -> int | None:
    """The id of ``text`` when the tokenizer encodes it as that one token, else None."""
    if not text or text not in tokenizer.get_vocab():
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def stop_tokens(tokenizer, end_of_turn: str | None) -> tuple[str, ...]:
    """The tokenizer's EOS and ``end_of_turn`` (when it is one token of the tokenizer), in that order."""
    out = [tokenizer.eos_token] if tokenizer.eos_token else []
    if end_of_turn not in out and single_token_id(tokenizer, end_of_turn) is not None:
        out.append(end_of_turn)
    return tuple(out)


def stop_ids(tokenizer, end_of_turn: str | None) -> list[int]:
    """Ids of :func:`stop_tokens`."""
    return [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens(tokenizer, end_of_turn)]


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


def run_stop_ids(adapter: str | Path, tokenizer, end_of_turn: str | None) -> list[int]:
    """The stop ids a run trained for: its adapter folder's generation config (written by ``train``), else
    (a run trained before qtune wrote it) the tokenizer's EOS and ``end_of_turn``."""
    return read_stop_ids(adapter) or stop_ids(tokenizer, end_of_turn)


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
