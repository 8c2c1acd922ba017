"""Masking marks exactly the assistant spans (checked on token ids), for every format and train_on choice."""

from __future__ import annotations

import pytest

from qtune.data.formats import to_example
from qtune.data.inspect import spans
from qtune.data.masking import IGNORE_INDEX, encode_example, turn_ends_with_stop
from qtune.data.template import resolve_template, spans_by_placeholder, spans_by_prefix
from qtune.registry.templates import NAMED_TEMPLATES

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "Six, of course."},
]


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def trained_runs(row: dict) -> list[list[int]]:
    return [toks for toks, trained in spans(row) if trained]


def encode(tok, example, **kw):
    template = resolve_template(tok, "auto").source
    return encode_example(tok, template, example, kw.pop("max_length", 512), **kw)


CHAT_ROWS = {
    "chat": {"messages": CHAT},
    "sharegpt": {
        "conversations": [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]} for m in CHAT]
    },
}


@pytest.mark.parametrize("fmt", list(CHAT_ROWS))
def test_chat_formats_train_exactly_each_assistant_turn_and_its_eos(smol_tokenizer, fmt):
    tok = smol_tokenizer
    out = encode(tok, to_example(CHAT_ROWS[fmt], "w", fmt))
    (row,) = out.rows
    assert trained_runs(row) == [ids(tok, "Four.") + [tok.eos_token_id], ids(tok, "Six, of course.") + [tok.eos_token_id]]
    # everything else (system, user turns, role headers, the newline after EOS) is masked, and ids match the full render
    template = resolve_template(tok, "auto").source
    assert row["input_ids"] == ids(tok, tok.apply_chat_template(CHAT, chat_template=template, tokenize=False))
    assert all(l in (IGNORE_INDEX, t) for t, l in zip(row["input_ids"], row["labels"]))


def test_last_assistant_only_and_all_tokens(smol_tokenizer):
    tok = smol_tokenizer
    ex = to_example({"messages": CHAT}, "w", "chat")
    (last,) = encode(tok, ex, train_on="last_assistant").rows
    assert trained_runs(last) == [ids(tok, "Six, of course.") + [tok.eos_token_id]]
    (every,) = encode(tok, ex, train_on="all").rows
    assert every["labels"] == every["input_ids"]


def test_instruction_trains_the_output_only(smol_tokenizer):
    tok = smol_tokenizer
    (row,) = encode(tok, to_example({"instruction": "Add.", "input": "2 and 2", "output": "4"}, "w", "instruction")).rows
    assert trained_runs(row) == [ids(tok, "4") + [tok.eos_token_id]]


def test_prompt_completion_trains_the_completion_and_eos(smol_tokenizer):
    tok = smol_tokenizer
    (row,) = encode(tok, to_example({"prompt": "Q: capital of France?\n", "completion": "A: Paris"}, "w", "prompt_completion")).rows
    assert row["input_ids"] == ids(tok, "Q: capital of France?\n") + ids(tok, "A: Paris") + [tok.eos_token_id]
    assert trained_runs(row) == [ids(tok, "A: Paris") + [tok.eos_token_id]]


def test_text_trains_every_token_and_splits_long_documents(smol_tokenizer):
    tok = smol_tokenizer
    text = " ".join(f"word{i}" for i in range(100))
    out = encode(tok, to_example({"text": text}, "w", "text"), max_length=64)
    whole = ids(tok, text) + [tok.eos_token_id]
    assert [t for r in out.rows for t in r["input_ids"]] == whole
    assert all(r["labels"] == r["input_ids"] and len(r["input_ids"]) <= 64 for r in out.rows)
    assert not out.truncated and not out.dropped_too_long


def test_left_truncation_keeps_the_last_response_whole(smol_tokenizer):
    tok = smol_tokenizer
    long_chat = [{"role": "user", "content": "blah " * 80}, {"role": "assistant", "content": "Short answer."}]
    ex = to_example({"messages": long_chat}, "w", "chat")
    full = encode(tok, ex).rows[0]
    out = encode(tok, ex, max_length=40)
    assert out.truncated and len(out.rows[0]["input_ids"]) == 40
    assert out.rows[0]["input_ids"] == full["input_ids"][-40:]
    assert trained_runs(out.rows[0]) == [ids(tok, "Short answer.") + [tok.eos_token_id]]
    (every,) = encode(tok, ex, max_length=40, train_on="all").rows
    assert every["input_ids"] == full["input_ids"][-40:] == every["labels"]
    dropped = encode(tok, ex, max_length=40, truncation="drop")
    assert dropped.dropped_too_long and not dropped.rows


def test_a_response_longer_than_max_length_is_dropped_not_cut(smol_tokenizer):
    tok = smol_tokenizer
    ex = to_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes " * 100}]}, "w", "chat")
    for train_on in ("assistant", "all"):
        out = encode(tok, ex, max_length=64, train_on=train_on)
        assert out.dropped_too_long and not out.rows and not out.untrained


def test_conversation_without_assistant_has_no_trained_token(smol_tokenizer):
    out = encode(smol_tokenizer, to_example({"messages": [{"role": "user", "content": "hi"}]}, "w", "chat"))
    assert out.untrained


def test_chatml_fallback_when_the_tokenizer_has_none(smol_tokenizer):
    tok = smol_tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = None
        chosen = resolve_template(tok, "auto")
        name, template = chosen.name, chosen.source
        assert name == "chatml"
        assert chosen.note.startswith("template: the model has no chat template of its own; using chatml (the fallback)")
        (row,) = encode_example(tok, template, to_example({"messages": CHAT}, "w", "chat"), 512).rows
        assert trained_runs(row) == [ids(tok, "Four.") + [tok.eos_token_id], ids(tok, "Six, of course.") + [tok.eos_token_id]]
        assert turn_ends_with_stop(tok, template)
    finally:
        tok.chat_template = saved


def test_template_whose_turn_does_not_end_with_eos_is_detected(smol_tokenizer):
    tok = smol_tokenizer
    template = resolve_template(tok, "auto").source
    saved = tok.eos_token
    try:
        tok.eos_token = "<|endoftext|>"  # the template still closes turns with <|im_end|>
        assert not turn_ends_with_stop(tok, template)
    finally:
        tok.eos_token = saved
    assert turn_ends_with_stop(tok, template)


def test_placeholder_spans_agree_with_prefix_spans(smol_tokenizer):
    tok = smol_tokenizer
    template = resolve_template(tok, "auto").source
    (text,) = tok.apply_chat_template([CHAT], chat_template=template, tokenize=False)
    fast = spans_by_placeholder(tok, template, CHAT, text)
    slow = spans_by_prefix(tok, template, CHAT, text)
    # prefix spans run to the end of the rendered turn ("<|im_end|>\n"); placeholder spans stop after EOS
    assert fast == [(a, b - 1) for a, b in slow]
    assert [text[a:b] for a, b in fast] == ["Four.<|im_end|>", "Six, of course.<|im_end|>"]


def test_a_template_that_edits_content_falls_back_to_prefix_spans(smol_tokenizer):
    tok = smol_tokenizer
    trimming = NAMED_TEMPLATES["chatml"].replace("message['content']", "(message['content'] | trim)")
    messages = [{"role": "user", "content": "  hi  "}, {"role": "assistant", "content": " Four. "}]
    (text,) = tok.apply_chat_template([messages], chat_template=trimming, tokenize=False)
    assert spans_by_placeholder(tok, trimming, messages, text) is None
    (row,) = encode_example(tok, trimming, to_example({"messages": messages}, "w", "chat"), 512).rows
    assert trained_runs(row) == [ids(tok, "Four.") + [tok.eos_token_id]]


# Each named template's end of turn: what its family stops generating on.
TURN_ENDS = {"chatml": None, "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "phi3": "<|end|>", "mistral": None}  # None: EOS


def test_every_named_template_has_a_stated_turn_end_and_tokens():
    from qtune.registry.templates import TEMPLATE_TOKENS

    assert set(TURN_ENDS) == set(NAMED_TEMPLATES) == set(TEMPLATE_TOKENS)
    for name, end in TURN_ENDS.items():
        assert end is None or end in TEMPLATE_TOKENS[name] and end in NAMED_TEMPLATES[name]


@pytest.mark.parametrize("name", list(NAMED_TEMPLATES))
def test_named_templates_mask_exactly_the_assistant_turns(smol_tokenizer, name):
    """Every turn is found (by placeholder or prefix), the system message survives, each reply is followed
    by the template's end of turn, and a span runs through it when it is the tokenizer's EOS (SmolLM2's
    is <|im_end|>: the other families' ends stay outside, and train's EOS check refuses them)."""
    tok = smol_tokenizer
    template = resolve_template(tok, name).source
    text = tok.apply_chat_template(CHAT, chat_template=template, tokenize=False)
    assert "You answer briefly." in text and text.count("Four.") == 1
    spans_ = spans_by_placeholder(tok, template, CHAT, text) or spans_by_prefix(tok, template, CHAT, text)
    replies = [text[a:b] for a, b in spans_]
    end = TURN_ENDS[name] or tok.eos_token
    assert [r.removesuffix(tok.eos_token).strip() for r in replies] == ["Four.", "Six, of course."], replies
    for a, b in spans_:
        assert text[a:b].endswith(end) if end == tok.eos_token else text[b:].startswith(end), (name, text[a : b + 20])
    assert turn_ends_with_stop(tok, template) == (end == tok.eos_token)


def test_a_family_template_is_used_before_the_fallback_and_said(smol_tokenizer):
    tok = smol_tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = None
        chosen = resolve_template(tok, "auto", family_template="mistral")  # [INST] reads fine as text
        assert (chosen.name, chosen.source) == ("mistral", NAMED_TEMPLATES["mistral"])
        assert "using mistral (its family's)" in chosen.note
        chosen = resolve_template(tok, "auto", family_template="llama3")  # SmolLM2 has no <|eot_id|>
        assert chosen.name == "chatml" and "the fallback: its tokenizer lacks the llama3 tokens" in chosen.note
        assert resolve_template(tok, "auto", family_template="unknown").name == "chatml"
        with pytest.raises(Exception, match="data.chat_template: the model has no chat template of its own"):
            resolve_template(tok, "tokenizer")
    finally:
        tok.chat_template = saved
    assert resolve_template(tok, "auto", family_template="gemma").note is None  # the model's own wins, silently


def test_rows_start_with_bos_when_the_tokenizer_adds_one(smol_tokenizer):
    """A model that expects BOS (Gemma, Llama) gets it even under a template that does not print it (Phi-3's)."""
    from tokenizers.processors import TemplateProcessing

    tok = smol_tokenizer
    template = NAMED_TEMPLATES["phi3"]
    example = to_example({"messages": CHAT}, "w", "chat")
    plain = encode_example(tok, template, example, 512).rows[0]
    bos = tok.bos_token  # SmolLM2 names one but adds none itself
    assert plain["input_ids"][0] != tok.bos_token_id
    saved = tok.backend_tokenizer.post_processor
    try:
        tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
        assert tok("a")["input_ids"][0] == tok.bos_token_id
        (row,) = encode_example(tok, template, example, 512).rows
    finally:
        tok.backend_tokenizer.post_processor = saved
    assert row["input_ids"] == [tok.bos_token_id] + plain["input_ids"]
    assert row["labels"] == [IGNORE_INDEX] + plain["labels"]
