"""Data formats: what a row looks like, and how it becomes an :class:`Example`.

Two kinds of example come out:

* ``chat``: a list of ``{"role", "content"}`` messages, rendered later with the chat template;
  loss goes on the assistant turns. Formats ``chat`` (OpenAI ``messages``), ``sharegpt``
  (``conversations`` of ``{from, value}``) and ``instruction`` (alpaca) give this kind.
* ``raw``: text segments with a trained flag, tokenized as they are and closed with EOS, no
  template. ``prompt_completion`` (loss on the completion) and ``text`` (continued pre-training,
  loss on every token) give this kind. A ``prompt_completion`` row whose fields are message lists
  is a chat example instead (prompt messages, then completion messages).

Formats are registered in :data:`FORMATS`; ``auto`` picks the single format whose columns a row
has (a ``text`` column beside another format's columns is ignored: alpaca dumps carry one), and
refuses when none or several match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qtune.errors import QtuneError

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Example:
    """``messages`` for a chat example, or ``segments`` [(text, trained)] for a raw one."""

    messages: Messages | None = None
    segments: list[tuple[str, bool]] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def _text(value, where: str, column: str) -> str:
    if value is None:
        raise QtuneError(f"{where}: column '{column}' is empty")
    if not isinstance(value, str):
        raise QtuneError(f"{where}: column '{column}' must be text, got {type(value).__name__}")
    return _encodable(value, where, column)


def _encodable(text: str, where: str, column: str) -> str:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), which no tokenizer can encode: refused here."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QtuneError(f"{where}: {column} holds {text[e.start]!r} at character {e.start}, half of a UTF-16 pair "
                         f"(not text); fix the file's escapes") from None
    return text


def _checked_messages(messages, where: str, column: str, role_key: str, content_key: str, roles: dict[str, str]) -> Messages:
    if not isinstance(messages, list) or not messages:
        raise QtuneError(f"{where}: '{column}' must be a non-empty list of {{{role_key}, {content_key}}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or role_key not in m or content_key not in m:
            found = sorted(m) if isinstance(m, dict) else repr(m)
            raise QtuneError(f"{where}: {column}[{i}] needs '{role_key}' and '{content_key}' (found {found})")
        if not isinstance(m[role_key], str) or m[role_key] not in roles:
            raise QtuneError(f"{where}: {column}[{i}].{role_key} {m[role_key]!r} is not a known role (allowed: {', '.join(roles)})")
        content = m[content_key]
        if not isinstance(content, str):  # null included: a turn with no text is "" (a null is a broken export)
            raise QtuneError(f"{where}: {column}[{i}].{content_key} must be text, got "
                             f"{'null' if content is None else type(content).__name__}; write the turn's text (\"\" for none)")
        out.append({"role": roles[m[role_key]], "content": _encodable(content, where, f"{column}[{i}].{content_key}")})
    return out


def _from_chat(row: dict, where: str) -> Example:
    return Example(messages=_checked_messages(row["messages"], where, "messages", "role", "content", {r: r for r in ROLES}))


def _from_sharegpt(row: dict, where: str) -> Example:
    return Example(messages=_checked_messages(row["conversations"], where, "conversations", "from", "value", SHAREGPT_ROLES))


def _from_instruction(row: dict, where: str) -> Example:
    prompt = _text(row["instruction"], where, "instruction")
    if row.get("input"):
        prompt = f"{prompt}\n\n{_text(row['input'], where, 'input')}"
    return Example(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(row["output"], where, "output")}])


def _from_prompt_completion(row: dict, where: str) -> Example:
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        roles = {r: r for r in ROLES}
        return Example(messages=_checked_messages(prompt, where, "prompt", "role", "content", roles)
                       + _checked_messages(completion, where, "completion", "role", "content", roles))
    return Example(segments=[(_text(prompt, where, "prompt"), False), (_text(completion, where, "completion"), True)])


def _from_text(row: dict, where: str) -> Example:
    return Example(segments=[(_text(row["text"], where, "text"), True)])


# format name -> (columns a row must have, converter)
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict, str], Example]]] = {
    "chat": (("messages",), _from_chat),
    "sharegpt": (("conversations",), _from_sharegpt),
    "instruction": (("instruction", "output"), _from_instruction),
    "prompt_completion": (("prompt", "completion"), _from_prompt_completion),
    "text": (("text",), _from_text),
}


def _expected() -> str:
    return "; ".join(f"{n}: {', '.join(c)}" for n, (c, _) in FORMATS.items())


def detect_format(row: dict, where: str) -> str:
    """The one format whose columns ``row`` has; an error when none or several match."""
    matches = [name for name, (columns, _) in FORMATS.items() if all(c in row for c in columns)]
    if len(matches) > 1 and "text" in matches:  # alpaca dumps carry a rendered 'text' beside their columns
        matches.remove("text")
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise QtuneError(f"{where}: cannot tell the data format from columns {', '.join(sorted(row))} (expected "
                         f"{_expected()}); set data.format")
    raise QtuneError(f"{where}: columns {', '.join(sorted(row))} fit several formats ({', '.join(matches)}); set data.format")


def to_example(row: dict, where: str, fmt: str) -> Example:
    columns, convert = FORMATS[fmt]
    missing = [c for c in columns if c not in row]
    if missing:
        raise QtuneError(
            f"{where}: format '{fmt}' needs columns {', '.join(columns)}; missing {', '.join(missing)} "
            f"(found {', '.join(sorted(row)) or 'none'})"
        )
    return convert(row, where)
