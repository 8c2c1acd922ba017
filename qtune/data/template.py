"""Chat templates, loss masking and truncation: one :class:`~qtune.data.formats.Example` to token rows.

A chat example is rendered once with the chat template into text, tokenized with character
offsets, and a token is trained (its label kept) only if it overlaps an assistant turn: from the
first character of the assistant's content through the tokenizer's EOS that closes the turn
(what the template prints after EOS, e.g. a newline, stays masked). Turn spans come from
rendering prefixes: turn i starts at ``len(render(messages[:i], add_generation_prompt=True))``
and ends at ``len(render(messages[:i+1]))``, which holds for any template whose render of a
prefix is a prefix of the full render (checked, not assumed).

A raw example (prompt/completion, plain text) is tokenized as it is, with the tokenizer's
special tokens (BOS where it has one) and EOS appended; its trained segments are labelled.

Truncation never cuts a response silently. ``left`` keeps the last ``max_length`` tokens when the
whole last trained span still fits (older turns are cut), else drops the row; ``drop`` drops
every row that does not fit. Plain text is split into ``max_length`` chunks instead (every token
is trained, so nothing is lost). Dropped and truncated rows are counted in the stats.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from qtune.data.formats import Example, Messages
from qtune.errors import QtuneError

IGNORE_INDEX = -100

# Named fallbacks for tokenizers that ship without a template.
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}
FALLBACK_TEMPLATE = "chatml"


def resolve_template(tokenizer, choice: str) -> tuple[str, str]:
    """``(name, jinja source)`` of the template ``data.chat_template`` picks (``auto``: the tokenizer's, else chatml)."""
    if choice in ("auto", "tokenizer"):
        if tokenizer.chat_template:
            return "tokenizer", tokenizer.chat_template
        if choice == "tokenizer":
            raise QtuneError(
                f"data.chat_template: the tokenizer has no chat template; name one of {', '.join(NAMED_TEMPLATES)} or use auto"
            )
        return FALLBACK_TEMPLATE, NAMED_TEMPLATES[FALLBACK_TEMPLATE]
    return choice, NAMED_TEMPLATES[choice]


def render(tokenizer, template: str, messages: Messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(tokenizer, template: str, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character span of each assistant turn (content through end of turn)."""
    text = render(tokenizer, template, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(tokenizer, template, messages[:i], add_generation_prompt=True))
        upto = render(tokenizer, template, messages[: i + 1])
        if not text.startswith(upto) or start > len(upto):
            raise QtuneError("data.chat_template: the template does not render conversations prefix by prefix, so turns cannot be masked")
        spans.append((start, len(upto)))
    return text, spans


@dataclass
class Encoded:
    """The rows one example became (several only for split plain text) and what happened on the way."""

    rows: list[dict] = field(default_factory=list)
    truncated: bool = False
    dropped_too_long: bool = False
    untrained: bool = False


def _token_range(starts: list[int], ends: list[int], a: int, b: int) -> range:
    """Indices of the tokens whose characters overlap ``[a, b)`` (offsets are sorted)."""
    return range(bisect_right(ends, a), bisect_left(starts, b))


def _label(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], eos: int | None) -> list[int]:
    """Labels = ids inside ``spans`` (each cut after its last EOS, if it holds one), IGNORE_INDEX elsewhere."""
    starts = [a for a, _ in offsets]
    ends = [b for _, b in offsets]
    labels = [IGNORE_INDEX] * len(ids)
    for a, b in spans:
        inside = _token_range(starts, ends, a, b)
        last = max((k for k in inside if ids[k] == eos), default=None)
        for k in inside:
            if last is not None and k > last:
                break
            labels[k] = ids[k]
    return labels


def _fit(ids: list[int], labels: list[int], max_length: int, truncation: str) -> Encoded:
    if len(ids) <= max_length:
        return Encoded(rows=[{"input_ids": ids, "labels": labels}])
    cut = len(ids) - max_length
    trained = [k for k, l in enumerate(labels) if l != IGNORE_INDEX]
    if truncation == "drop" or not trained:
        return Encoded(dropped_too_long=True)
    # the start of the last contiguous trained span must survive the cut
    last_start = trained[-1]
    while last_start - 1 >= 0 and labels[last_start - 1] != IGNORE_INDEX:
        last_start -= 1
    if last_start < cut:
        return Encoded(dropped_too_long=True)
    return Encoded(rows=[{"input_ids": ids[cut:], "labels": labels[cut:]}], truncated=True)


def encode_chat(tokenizer, template: str, messages: Messages, max_length: int, *, train_on: str = "assistant",
                truncation: str = "left", system_prompt: str | None = None) -> Encoded:
    """Token ids and labels of one conversation (see the module docstring for the rules)."""
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text, spans = assistant_spans(tokenizer, template, messages)
    if train_on == "last_assistant":
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = list(ids) if train_on == "all" else _label(ids, offsets, spans, tokenizer.eos_token_id)
    out = _fit(ids, labels, max_length, truncation)
    out.untrained = not any(l != IGNORE_INDEX for r in out.rows for l in r["labels"]) and not out.dropped_too_long
    return out


def encode_raw(tokenizer, segments: list[tuple[str, bool]], max_length: int, *, train_on: str = "assistant",
               truncation: str = "left") -> Encoded:
    """Token ids and labels of text segments, EOS appended (trained when the last segment is)."""
    text = "".join(s for s, _ in segments)
    spans, pos = [], 0
    for s, trained in segments:
        if trained or train_on == "all":
            spans.append((pos, pos + len(s)))
        pos += len(s)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise QtuneError("model.path: the tokenizer has no EOS token, so a raw example cannot be closed")
    ids.append(eos)
    offsets.append((len(text), len(text) + 1))
    if spans and spans[-1][1] == len(text):
        spans[-1] = (spans[-1][0], len(text) + 1)
    labels = _label(ids, offsets, spans, eos=None)
    if all(t for _, t in segments) and len(ids) > max_length:  # plain text: split, every token is trained
        rows = [{"input_ids": ids[i : i + max_length], "labels": labels[i : i + max_length]} for i in range(0, len(ids), max_length)]
        return Encoded(rows=[r for r in rows if len(r["input_ids"]) > 1])
    out = _fit(ids, labels, max_length, truncation)
    out.untrained = not any(l != IGNORE_INDEX for r in out.rows for l in r["labels"]) and not out.dropped_too_long
    return out


def encode_example(tokenizer, template: str | None, example: Example, max_length: int, *, train_on: str = "assistant",
                   truncation: str = "left", system_prompt: str | None = None) -> Encoded:
    if example.is_chat:
        return encode_chat(tokenizer, template, example.messages, max_length, train_on=train_on,
                           truncation=truncation, system_prompt=system_prompt)
    return encode_raw(tokenizer, example.segments, max_length, train_on=train_on, truncation=truncation)


def turn_ends_with_eos(tokenizer, template: str) -> bool:
    """Whether an assistant turn's last trained token is the tokenizer's EOS (else the model would never stop)."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    rows = encode_chat(tokenizer, template, probe, max_length=100_000).rows
    trained = [t for r in rows for t, l in zip(r["input_ids"], r["labels"]) if l != IGNORE_INDEX]
    return bool(trained) and trained[-1] == tokenizer.eos_token_id
