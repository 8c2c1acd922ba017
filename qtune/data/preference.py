"""Preference rows: pairs ``{prompt, chosen, rejected}`` (dpo, orpo, simpo) and unpaired ``{prompt, completion,
label}`` (kto), read from the recipe's sources and handed to TRL's trainers in TRL's own standard form.

Each field is text or a list of ``{role, content}`` messages. A row with any message list is conversational: a
text prompt becomes one user turn and a text completion one assistant turn, and TRL renders the row with the chat
template ``data.chat_template`` resolves to (set on the tokenizer here, and saved with the adapter as for SFT).
Text rows are tokenized as they are; TRL appends EOS to a text completion that lacks it. Tokenizing, truncating
to ``data.max_length`` and the completion masks are TRL's (its trainers tokenize what this module returns), so a
run trains on exactly what TRL's trainer fed the same rows trains on.

The split, source weights and ``data.max_examples`` follow :mod:`qtune.data.dataset`. Refused before any model
loads: a row without the columns, a pair whose chosen equals its rejected (no preference to learn), a label that
is not a boolean, a split that mixes conversational and text rows.
"""

from __future__ import annotations

import random
import time

from qtune.data.dataset import Encoded, mix_sources
from qtune.data.formats import ROLES
from qtune.data.sources import read_rows
from qtune.data.template import resolve_template
from qtune.errors import QtuneError

COLUMNS = {"pairs": ("prompt", "chosen", "rejected"), "unpaired": ("prompt", "completion", "label")}
COMPLETIONS = {"pairs": ("chosen", "rejected"), "unpaired": ("completion",)}


def _messages(value, where: str, column: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise QtuneError(f"{where}: '{column}' must be text or a non-empty list of {{role, content}} messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise QtuneError(f"{where}: {column}[{i}] must be {{role: {'|'.join(ROLES)}, content: text}} (found {m!r:.80})")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def to_row(row: dict, where: str, kind: str) -> dict:
    """One source row as TRL's standard row of ``kind`` (pairs | unpaired); conversational when any field is a list."""
    missing = [c for c in COLUMNS[kind] if c not in row]
    if missing:
        raise QtuneError(f"{where}: {kind} rows need columns {', '.join(COLUMNS[kind])}; missing {', '.join(missing)} "
                         f"(found {', '.join(sorted(row)) or 'none'})")
    fields = ("prompt", *COMPLETIONS[kind])
    for c in fields:
        if not isinstance(row[c], (str, list)):
            raise QtuneError(f"{where}: '{c}' must be text or a list of messages, got {type(row[c]).__name__}")
    out: dict = {}
    if any(isinstance(row[c], list) for c in fields):
        for c in fields:
            role = "user" if c == "prompt" else "assistant"
            out[c] = [{"role": role, "content": row[c]}] if isinstance(row[c], str) else _messages(row[c], where, c)
    else:
        out = {c: row[c] for c in fields}
    if kind == "pairs" and out["chosen"] == out["rejected"]:
        raise QtuneError(f"{where}: 'chosen' equals 'rejected', so the pair prefers nothing; remove the row or fix it")
    if kind == "unpaired":
        if not isinstance(row["label"], bool):
            raise QtuneError(f"{where}: 'label' must be true (desirable) or false (undesirable), got {row['label']!r:.40}")
        out["label"] = row["label"]
    return out


def detect_kind(row: dict) -> str | None:
    """pairs or unpaired, by the columns of ``row``; None when it has neither set."""
    return next((k for k, cols in COLUMNS.items() if all(c in row for c in cols)), None)


def read_preference(source, field_name: str, kind: str) -> list[dict]:
    rows = read_rows(source.path, field_name, source.split)
    found = detect_kind(rows[0][0])
    if found != kind:
        row, where = rows[0]
        raise QtuneError(f"{where}: this objective trains on {kind} rows ({', '.join(COLUMNS[kind])}); the row has "
                         f"{', '.join(sorted(row))}" + (f", which are {found} rows" if found else ""))
    return [to_row(row, where, kind) for row, where in rows]


def check_preference_sources(data, kind: str) -> int:
    """Read every local source's rows as :func:`preference_datasets` would (``qtune validate``); returns the rows read."""
    sources = [(f"data.train[{i}].path", s) for i, s in enumerate(data.train)] + ([("data.eval.path", data.eval)] if data.eval else [])
    return sum(len(read_preference(s, name, kind)) for name, s in sources if not s.is_hub)


def preference_datasets(recipe, tokenizer, family, kind: str) -> Encoded:
    """The recipe's preference rows of ``kind``, split and weighted as SFT's; conversational rows get the template."""
    t0, data, seed = time.perf_counter(), recipe.data, recipe.train.seed
    rng = random.Random(seed)
    per_source = [read_preference(s, f"data.train[{i}].path", kind) for i, s in enumerate(data.train)]
    train, eval_rows = mix_sources(data, per_source, lambda: read_preference(data.eval, "data.eval.path", kind), seed, rng)
    kinds = {isinstance(r["prompt"], list) for r in train + eval_rows}
    if len(kinds) > 1:
        raise QtuneError("data.train: the rows mix conversational (message lists) and text fields; "
                         "write every source the same way")
    template, note = None, None
    if kinds == {True}:
        from qtune.models.load import model_family

        chosen = resolve_template(tokenizer, data.chat_template, (family or model_family(recipe.model)).chat_template)
        template, note = chosen.source, chosen.note
        tokenizer.chat_template = template  # TRL renders the rows with the tokenizer's template
    stats = {
        "train": {"rows": len(train), "trained_tokens": None},
        "eval": {"rows": len(eval_rows), "trained_tokens": None},
        "kind": kind, "conversational": kinds == {True}, "cache": "off", "load_s": time.perf_counter() - t0,
        "template": "none" if template is None else data.chat_template, "template_note": note,
    }
    if kind == "unpaired":
        stats["train"]["desirable"] = sum(r["label"] for r in train)
    return Encoded(train=train, eval=eval_rows, stats=stats, chat_template=template)


def refuse_preference(encoded: Encoded, data, tokenizer) -> None:
    """The preference rows' counterpart of :func:`qtune.data.dataset.refuse_training`."""
    if not encoded.train:
        raise QtuneError("data.train: no preference row is left to train on")
    labels = {r["label"] for r in encoded.train} if encoded.stats["kind"] == "unpaired" else None
    if labels is not None and len(labels) < 2:
        raise QtuneError(f"data.train: every row is labelled {labels.pop()}; KTO needs desirable (true) and "
                         f"undesirable (false) completions")
