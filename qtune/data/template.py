"""Chat templates and loss masking.

A conversation is rendered once with the chat template into text, tokenized with character
offsets, and a token is trained (its label kept) only if it overlaps an assistant turn: from
the first character of the assistant's content through the end-of-turn token that closes it.
Turn spans come from rendering prefixes of the conversation, which works for any template whose
render of ``messages[:i]`` is a prefix of the render of ``messages`` (checked, not assumed).
"""

from __future__ import annotations

from qtune.data.formats import Messages
from qtune.errors import QtuneError

IGNORE_INDEX = -100

# Named fallbacks for tokenizers that ship without a template.
NAMED_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}


def resolve_template(tokenizer, choice: str) -> str:
    if choice == "tokenizer":
        if not tokenizer.chat_template:
            raise QtuneError(
                f"data.chat_template: the tokenizer has no chat template; name one of {', '.join(NAMED_TEMPLATES)}"
            )
        return tokenizer.chat_template
    return NAMED_TEMPLATES[choice]


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
        end = len(render(tokenizer, template, messages[: i + 1]))
        if text[:end] != render(tokenizer, template, messages[: i + 1]) or start > end:
            raise QtuneError("data.chat_template: the template does not render conversations prefix by prefix, so turns cannot be masked")
        spans.append((start, end))
    return text, spans


def encode(tokenizer, template: str, messages: Messages, max_length: int, system_prompt: str | None = None) -> dict:
    """Token ids and labels (``IGNORE_INDEX`` outside assistant turns), cut to ``max_length``.

    Within a turn's span the labels stop at the tokenizer's EOS, so the model learns to end its
    turn but not the separator the template prints after it.
    """
    if system_prompt is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text, spans = assistant_spans(tokenizer, template, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    eos = tokenizer.eos_token_id
    for start, end in spans:
        inside = [k for k, (a, b) in enumerate(offsets) if a < end and b > start]
        if eos in (ids[k] for k in inside):
            last_eos = max(k for k in inside if ids[k] == eos)
            inside = [k for k in inside if k <= last_eos]
        for k in inside:
            labels[k] = ids[k]
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": len(ids) > max_length}


def check_turn_ends_with_eos(tokenizer, template: str) -> None:
    """Refuse a template whose assistant turn does not end in the tokenizer's EOS (the model would never stop)."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    out = encode(tokenizer, template, probe, max_length=10_000)
    trained = [t for t, l in zip(out["input_ids"], out["labels"]) if l != IGNORE_INDEX]
    if not trained or trained[-1] != tokenizer.eos_token_id:
        raise QtuneError(
            f"data.chat_template: an assistant turn does not end with the tokenizer's EOS "
            f"({tokenizer.eos_token!r}), so the model would not learn to stop; pick a template that ends turns with it"
        )
