"""Text generation for ``qtune generate`` and ``qtune chat``, and the batch-1 speed measurement.

Prompts go through the tokenizer's chat template (``add_generation_prompt=True``) unless it has
none or ``raw=True``. Decoding is greedy unless a temperature is given, so the same prompt and
model give the same text. Streaming uses transformers' ``TextStreamer`` hook in the calling
thread: each finished piece of text goes to ``on_text`` as soon as it is decoded. Generation stops
on every stop id the model's files name (:func:`stop_ids_of`: its generation config's
``eos_token_id``, which qtune writes for runs and exports, and the tokenizer's EOS), so a chat
model stops at the end of its turn (:mod:`qtune.data.stops`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def encode_prompt(tokenizer, messages: list[dict], raw: bool = False) -> list[int]:
    """Token ids for ``messages`` (the chat template), or the last message's bare text when ``raw``."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return list(tokenizer(messages[-1]["content"])["input_ids"])
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def stop_ids_of(model, tokenizer) -> list[int]:
    """The ids ``generate`` stops on: the model's generation config ``eos_token_id`` (one or a list), then the tokenizer's EOS."""
    from qtune.models.generation_config import merge_ids

    return merge_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id)


def _streamer(tokenizer, on_text):
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate(
    model, tokenizer, prompt_ids: list[int], max_new_tokens: int = 128, temperature: float = 0.0,
    seed: int = 0, on_text=None, min_new_tokens: int = 0,
) -> Generation:
    """Continue ``prompt_ids`` until a stop id (:func:`stop_ids_of`) or ``max_new_tokens``; greedy when
    ``temperature == 0``; ``on_text`` receives streamed text; ``min_new_tokens`` suppresses every stop id."""
    import torch

    device = next(p for p in model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    stops = stop_ids_of(model, tokenizer)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=temperature > 0,
        eos_token_id=stops or None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stops), None),
    )
    if temperature > 0:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if on_text is not None:
        kwargs["streamer"] = _streamer(tokenizer, on_text)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    new = out[0, ids.shape[1] :]
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Generation(text, len(prompt_ids), int(new.numel()), seconds)


SPEED_PROMPT = "Explain what a Python list comprehension is, with an example."


def generation_speed(model, tokenizer, new_tokens: int) -> dict:
    """Batch-1 greedy decoding speed: ``new_tokens`` forced (every stop id suppressed), after one warm-up run."""
    ids = encode_prompt(tokenizer, [{"role": "user", "content": SPEED_PROMPT}])
    generate(model, tokenizer, ids, max_new_tokens=4, min_new_tokens=4)  # warm-up: kernels, caches
    g = generate(model, tokenizer, ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return {"tokens_per_s": g.tokens_per_s, "new_tokens": g.new_tokens, "prompt_tokens": g.prompt_tokens, "seconds": g.seconds}


def chat_loop(model, tokenizer, read_line, write, max_new_tokens: int = 256, temperature: float = 0.0, system: str | None = None) -> int:
    """Read user turns with ``read_line()`` (None at EOF) until EOF or ``/exit``; stream replies to ``write``.

    The whole conversation is re-sent each turn through the chat template; returns the turn count.
    """
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    turns = 0
    while True:
        line = read_line()
        if line is None or line.strip() in ("/exit", "/quit"):
            return turns
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        g = generate(model, tokenizer, encode_prompt(tokenizer, messages), max_new_tokens, temperature, on_text=write)
        write("\n")
        messages.append({"role": "assistant", "content": g.text})
        turns += 1
