"""The tokens a model stops generating on.

A chat model stops at the end of its turn. Which token that is depends on the tokenizer and the
family: the tokenizer's EOS, and the family's end-of-turn token
(:attr:`~qtune.registry.families.Family.end_of_turn`: Gemma's ``<end_of_turn>`` is not its EOS
``<eos>``) when the tokenizer has it as one token. Both are *stop tokens*: masking trains an
assistant turn through the first stop token after its content (:mod:`qtune.data.masking`), and
every consumer is told the whole set, never a rewritten EOS (the files each one reads:
:mod:`qtune.models.generation_config`).
"""

from __future__ import annotations

from pathlib import Path


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


def run_stop_ids(adapter: str | Path, tokenizer, end_of_turn: str | None) -> list[int]:
    """The stop ids a run trained for: its adapter folder's generation config (written by ``train``), else
    (a run trained before qtune wrote it) the tokenizer's EOS and ``end_of_turn``."""
    from qtune.models.generation_config import read_stop_ids

    return read_stop_ids(adapter) or stop_ids(tokenizer, end_of_turn)
