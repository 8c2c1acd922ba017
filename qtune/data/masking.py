"""From an :class:`~qtune.data.formats.Example` to token rows: labels, truncation, batched tokenizing.

A token is trained (label = its id) when its characters overlap a trained span; elsewhere its
label is ``IGNORE_INDEX``. For a chat example the spans are its assistant turns
(:func:`qtune.data.template.assistant_spans`; ``train_on``: every turn, the last, or all
tokens), each cut after the last stop token inside it (the tokenizer's EOS or the family's
end-of-turn token: :mod:`qtune.data.stops`). A raw example (prompt/completion, plain text) is
tokenized as it is, with the tokenizer's special tokens (BOS where it has one) and EOS appended;
its trained segments, and the EOS after a trained last segment, are labelled.

Truncation never cuts a response silently. ``left`` keeps the last ``max_length`` tokens when the
whole last response (last assistant turn, or the completion) still fits (older turns are cut),
else drops the row; ``drop`` drops every row that does not fit. Plain text is split into
``max_length`` chunks instead (every token is trained, so nothing is lost). The caller counts
truncated and dropped rows.

Texts are rendered first and tokenized in batches (the fast tokenizer spreads a batch over cores).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from qtune.data.formats import Example
from qtune.data.template import assistant_spans
from qtune.errors import QtuneError

IGNORE_INDEX = -100
Span = tuple[int, int]


@dataclass
class Rendered:
    """An example as text, before tokenizing."""

    text: str
    spans: list[Span]  # character spans with a loss
    response: Span | None  # the last response: left truncation keeps it whole or drops the row
    raw: bool  # tokenized with special tokens, EOS appended
    chunk: bool = False  # plain text: split into max_length rows
    all_tokens: bool = False


@dataclass
class EncodedExample:
    """The rows one example became (several only for split plain text) and what happened on the way."""

    rows: list[dict] = field(default_factory=list)
    truncated: bool = False
    dropped_too_long: bool = False
    untrained: bool = False


def leading_bos(tokenizer) -> str | None:
    """The BOS text a row must start with: the tokenizer's, when encoding plain text puts it first."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None or not tokenizer.bos_token:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == bos_id else None


def render_example(tokenizer, template: str | None, example: Example, *, train_on: str = "assistant",
                   system_prompt: str | None = None, bos: str | None = None, stops: tuple[str, ...] | None = None) -> Rendered:
    """``example`` as text with its trained spans; a chat render starts with ``bos`` when given and missing.
    ``stops``: the tokens that may end a turn (default: the tokenizer's EOS)."""
    if example.is_chat:
        messages = example.messages
        if system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        text, spans = assistant_spans(tokenizer, template, messages, stops)
        if bos and not text.startswith(bos):  # a template written for another family (e.g. ChatML on Gemma)
            text, spans = bos + text, [(a + len(bos), b + len(bos)) for a, b in spans]
        return Rendered(text, spans[-1:] if train_on == "last_assistant" else spans, spans[-1] if spans else None,
                        raw=False, all_tokens=train_on == "all")
    text = "".join(s for s, _ in example.segments)
    spans, pos, response = [], 0, None
    for s, trained in example.segments:
        if trained:
            spans.append((pos, pos + len(s)))
            response = (pos, pos + len(s))
        pos += len(s)
    chunk = all(t for _, t in example.segments)
    return Rendered(text, spans, None if chunk else response, raw=True, chunk=chunk, all_tokens=train_on == "all")


def _token_range(starts: list[int], ends: list[int], span: Span) -> range:
    """Indices of the tokens whose characters overlap ``[a, b)`` (offsets are sorted)."""
    return range(bisect_right(ends, span[0]), bisect_left(starts, span[1]))


def _label(ids: list[int], starts: list[int], ends: list[int], spans: list[Span], stop: frozenset[int]) -> list[int]:
    """Labels = ids inside ``spans`` (each cut after its last ``stop`` id, if it holds one), IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(ids)
    for span in spans:
        inside = _token_range(starts, ends, span)
        last = max((k for k in inside if ids[k] in stop), default=None)
        for k in inside:
            if last is not None and k > last:
                break
            labels[k] = ids[k]
    return labels


def _fit(ids: list[int], labels: list[int], max_length: int, truncation: str, keep_from: int | None) -> EncodedExample:
    """Cut to ``max_length``: from the left when token ``keep_from`` (start of the last response) survives, else drop."""
    if len(ids) <= max_length:
        return EncodedExample(rows=[{"input_ids": ids, "labels": labels}])
    cut = len(ids) - max_length
    if truncation == "drop" or (keep_from is not None and keep_from < cut):
        return EncodedExample(dropped_too_long=True)
    return EncodedExample(rows=[{"input_ids": ids[cut:], "labels": labels[cut:]}], truncated=True)


def _finish(item: Rendered, ids: list[int], offsets: list[Span], eos: int | None, stop: frozenset[int], max_length: int,
            truncation: str) -> EncodedExample:
    spans = item.spans
    if item.raw:
        if eos is None:
            raise QtuneError("model.path: the tokenizer has no EOS token, so a raw example cannot be closed")
        n = len(item.text)
        ids, offsets = ids + [eos], offsets + [(n, n + 1)]
        spans = [(a, n + 1 if b == n else b) for a, b in spans]  # a trained last segment trains the EOS too
    starts, ends = [a for a, _ in offsets], [b for _, b in offsets]
    labels = list(ids) if item.all_tokens else _label(ids, starts, ends, spans, frozenset() if item.raw else stop)
    if item.chunk and len(ids) > max_length:
        rows = [{"input_ids": ids[i : i + max_length], "labels": labels[i : i + max_length]} for i in range(0, len(ids), max_length)]
        return EncodedExample(rows=[r for r in rows if len(r["input_ids"]) > 1])
    keep_from = _token_range(starts, ends, item.response).start if item.response is not None else None
    out = _fit(ids, labels, max_length, truncation, keep_from)
    out.untrained = not out.dropped_too_long and not any(l != IGNORE_INDEX for r in out.rows for l in r["labels"])
    return out


def encode_rendered(tokenizer, items: list[Rendered], max_length: int, truncation: str = "left",
                    stops: tuple[str, ...] | None = None) -> list[EncodedExample]:
    out: list[EncodedExample | None] = [None] * len(items)
    stop = frozenset(tokenizer.convert_tokens_to_ids(list(stops))) if stops is not None else frozenset({tokenizer.eos_token_id})
    for raw in (False, True):
        idx = [i for i, r in enumerate(items) if r.raw == raw]
        if not idx:
            continue
        enc = tokenizer([items[i].text for i in idx], add_special_tokens=raw, return_offsets_mapping=True)
        for i, ids, offsets in zip(idx, enc["input_ids"], enc["offset_mapping"]):
            out[i] = _finish(items[i], list(ids), [tuple(o) for o in offsets], tokenizer.eos_token_id, stop, max_length, truncation)
    return out


def encode_examples(tokenizer, template: str | None, examples: list[Example], max_length: int, *, train_on: str = "assistant",
                    truncation: str = "left", system_prompt: str | None = None, batch_size: int = 512,
                    stops: tuple[str, ...] | None = None) -> list[EncodedExample]:
    """Every example's rows, rendered and tokenized ``batch_size`` at a time; a turn ends at one of ``stops``."""
    out, bos = [], leading_bos(tokenizer)
    for start in range(0, len(examples), batch_size):
        items = [render_example(tokenizer, template, ex, train_on=train_on, system_prompt=system_prompt, bos=bos, stops=stops)
                 for ex in examples[start : start + batch_size]]
        out.extend(encode_rendered(tokenizer, items, max_length, truncation, stops))
    return out


def encode_example(tokenizer, template: str | None, example: Example, max_length: int, **options) -> EncodedExample:
    return encode_examples(tokenizer, template, [example], max_length, **options)[0]


_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


def turn_ends_with_stop(tokenizer, template: str, stops: tuple[str, ...] | None = None) -> bool:
    """Whether an assistant turn's last trained token is one of ``stops`` (default: the tokenizer's EOS); else the
    model would never learn to stop."""
    stops = stops if stops is not None else (tokenizer.eos_token,)
    rows = encode_example(tokenizer, template, Example(messages=_PROBE), 100_000, stops=stops).rows
    trained = [t for r in rows for t, l in zip(r["input_ids"], r["labels"]) if l != IGNORE_INDEX]
    return bool(trained) and tokenizer.convert_ids_to_tokens(trained[-1]) in stops


def turn_end(tokenizer, template: str) -> str:
    """What ``template`` writes after an assistant reply, up to the end of its line (for messages)."""
    (text,) = tokenizer.apply_chat_template([_PROBE], chat_template=template, tokenize=False)
    return text[text.rindex("pong") + 4 :].split("\n")[0].strip() or "a newline"


def templates_that_fit(tokenizer, stops: tuple[str, ...]) -> list[str]:
    """Named templates that end a turn with one of ``stops`` and whose special tokens the tokenizer has as
    single tokens; those built from special tokens first, the generic ones (ChatML, Mistral: plain-text markers) last."""
    from qtune.data.stops import single_token_id
    from qtune.registry.templates import NAMED_TEMPLATES, TEMPLATE_TOKENS

    fit = [name for name, source in NAMED_TEMPLATES.items()
           if all(single_token_id(tokenizer, t) is not None for t in TEMPLATE_TOKENS[name])
           and turn_ends_with_stop(tokenizer, source, stops)]
    return sorted(fit, key=lambda name: not TEMPLATE_TOKENS[name])
