"""Chat templates: which one, rendering, and where each assistant turn lies in the rendered text.

A chat example is rendered once with the chat template into text. An assistant turn's span runs
from the first character of its content through the stop token that closes the turn — the
tokenizer's EOS or the family's end-of-turn token (:mod:`qtune.data.stops`); what the template
prints after it, e.g. a newline, is left out by the masking. Turn spans come from one
render with placeholder contents (:func:`spans_by_placeholder`, verified to rebuild the real
render exactly), else from rendering prefixes (:func:`spans_by_prefix`: turn i starts at
``len(render(messages[:i], add_generation_prompt=True))`` and ends at
``len(render(messages[:i+1]))``, which holds for any template whose render of a prefix is a
prefix of the full render; checked, not assumed).

Tokenizing, masking and truncation on top of these spans live in :mod:`qtune.data.masking`.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtune.data.formats import Messages
from qtune.errors import QtuneError
from qtune.registry.templates import FALLBACK_TEMPLATE, NAMED_TEMPLATES, TEMPLATE_TOKENS


@dataclass(frozen=True)
class ChosenTemplate:
    """The template a run renders with: its name, Jinja source, and a line for the user when it is not the model's own."""

    name: str  # "tokenizer" for the model's own, else a key of NAMED_TEMPLATES
    source: str
    note: str | None = None


def resolve_template(tokenizer, choice: str, family_template: str | None = None) -> ChosenTemplate:
    """The template ``data.chat_template`` picks.

    ``auto``: the model's own (``tokenizer.chat_template``), else ``family_template`` (the family's
    known one, from the registry), else ChatML — never silently: the fallback comes with a note.
    """
    if choice not in ("auto", "tokenizer"):
        return ChosenTemplate(choice, NAMED_TEMPLATES[choice])
    if tokenizer.chat_template:
        return ChosenTemplate("tokenizer", tokenizer.chat_template)
    others = ", ".join(NAMED_TEMPLATES)
    if choice == "tokenizer":
        raise QtuneError(f"data.chat_template: the model has no chat template of its own; name one of {others} or use auto")
    vocab = tokenizer.get_vocab()
    spells = family_template in NAMED_TEMPLATES and all(t in vocab for t in TEMPLATE_TOKENS[family_template])
    name = family_template if spells else FALLBACK_TEMPLATE
    why = ("its family's" if spells else
           f"the fallback: its tokenizer lacks the {family_template} tokens" if family_template in NAMED_TEMPLATES else "the fallback")
    return ChosenTemplate(name, NAMED_TEMPLATES[name], (
        f"template: the model has no chat template of its own; using {name} ({why}); "
        f"set data.chat_template to one of {others} to choose"
    ))


def render(tokenizer, template: str, conversations: list[Messages], add_generation_prompt: bool = False) -> list[str]:
    """Render several conversations in one call (the per-call overhead dominates for short chats)."""
    return tokenizer.apply_chat_template(
        conversations, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def spans_by_prefix(tokenizer, template: str, messages: Messages, text: str) -> list[tuple[int, int]]:
    """Assistant turn i spans ``len(render(messages[:i], add_generation_prompt=True))`` to ``len(render(messages[:i+1]))``.

    Any template that renders prefix by prefix; costs O(turns^2) message renders.
    """
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        return []
    heads = render(tokenizer, template, [messages[:i] for i in turns], add_generation_prompt=True)
    upto = render(tokenizer, template, [messages[: i + 1] for i in turns])
    spans = []
    for head, full in zip(heads, upto):
        if not text.startswith(full) or len(head) > len(full):
            raise QtuneError("data.chat_template: the template does not render conversations prefix by prefix, so turns cannot be masked")
        spans.append((len(head), len(full)))
    return spans


def spans_by_placeholder(tokenizer, template: str, messages: Messages, text: str,
                         stops: tuple[str, ...] | None = None) -> list[tuple[int, int]] | None:
    """One render with each content replaced by a unique placeholder; None when that cannot be trusted.

    Putting the contents back into the placeholder render must give ``text`` exactly (a template
    that trims or inspects content fails that, and the caller falls back to :func:`spans_by_prefix`).
    An assistant span runs from its content's first character through the first stop token's text
    after it (``stops``, default the tokenizer's EOS), if one comes before the next message's content.
    """
    marks = [f"\ue000{k}\ue001" for k in range(len(messages))]
    if any("\ue000" in m["content"] for m in messages):
        return None
    (skeleton,) = render(tokenizer, template, [[{**m, "content": mark} for m, mark in zip(messages, marks)]])
    pieces, starts, ends, pos, length = [], [], [], 0, 0
    for m, mark in zip(messages, marks):
        j = skeleton.find(mark, pos)
        if j < 0 or skeleton.find(mark, j + 1) >= 0:
            return None
        pieces += [skeleton[pos:j], m["content"]]
        starts.append(length + j - pos)
        length += j - pos + len(m["content"])
        ends.append(length)
        pos = j + len(mark)
    pieces.append(skeleton[pos:])
    if "".join(pieces) != text:
        return None
    stops = [s for s in (stops if stops is not None else (tokenizer.eos_token,)) if s]
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        limit = starts[k + 1] if k + 1 < len(messages) else len(text)
        found = [(e, e + len(s)) for s in stops if (e := text.find(s, ends[k], limit)) >= 0]
        spans.append((starts[k], min(found)[1] if found else ends[k]))  # through the first stop token
    return spans


def assistant_spans(tokenizer, template: str, messages: Messages,
                    stops: tuple[str, ...] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of each assistant turn (content through end of turn)."""
    (text,) = render(tokenizer, template, [messages])
    spans = spans_by_placeholder(tokenizer, template, messages, text, stops)
    return text, spans if spans is not None else spans_by_prefix(tokenizer, template, messages, text)


