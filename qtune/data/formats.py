"""Reading training examples and turning each into a list of chat messages.

Every format ends as ``[{"role": ..., "content": ...}, ...]`` so one chat-template path renders
them all. Formats are registered in :data:`FORMATS`; ``auto`` picks the first whose columns match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from qtune.errors import QtuneError

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")


def _from_instruction(row: dict, where: str) -> Messages:
    prompt = row["instruction"]
    if row.get("input"):
        prompt = f"{prompt}\n\n{row['input']}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def _from_chat(row: dict, where: str) -> Messages:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise QtuneError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise QtuneError(f"{where}: messages[{i}] needs 'role' and 'content' (found {sorted(m) if isinstance(m, dict) else m!r})")
        if m["role"] not in ROLES:
            raise QtuneError(f"{where}: messages[{i}].role '{m['role']}' is not one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": str(m["content"])})
    if not any(m["role"] == "assistant" for m in out):
        raise QtuneError(f"{where}: the conversation has no assistant message, so nothing would be trained")
    return out


# format name -> (columns that must be present, converter)
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict, str], Messages]]] = {
    "chat": (("messages",), _from_chat),
    "instruction": (("instruction", "output"), _from_instruction),
}


def detect_format(row: dict, where: str) -> str:
    for name, (columns, _) in FORMATS.items():
        if all(c in row for c in columns):
            return name
    expected = "; ".join(f"{n}: {', '.join(c)}" for n, (c, _) in FORMATS.items())
    raise QtuneError(f"{where}: cannot tell the data format from columns {sorted(row)} (expected {expected}); set data.format")


def read_jsonl(path: str | Path) -> list[tuple[dict, str]]:
    """Rows of a JSONL file with their ``file:line`` for error messages."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise QtuneError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise QtuneError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            rows.append((row, where))
    if not rows:
        raise QtuneError(f"{path}: the file holds no examples")
    return rows


def load_conversations(path: str | Path, fmt: str = "auto") -> list[Messages]:
    rows = read_jsonl(path)
    out = []
    for row, where in rows:
        name = detect_format(row, where) if fmt == "auto" else fmt
        columns, convert = FORMATS[name]
        missing = [c for c in columns if c not in row]
        if missing:
            raise QtuneError(f"{where}: format '{name}' needs columns {', '.join(columns)}; missing {', '.join(missing)} (found {', '.join(sorted(row))})")
        out.append(convert(row, where))
    return out
