"""From recipe ``data`` to tokenized train/eval examples and padded batches."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from qtune.data.formats import load_conversations
from qtune.data.template import IGNORE_INDEX, check_turn_ends_with_eos, encode, resolve_template
from qtune.errors import QtuneError


@dataclass
class Encoded:
    train: list[dict]
    eval: list[dict]
    stats: dict = field(default_factory=dict)


def split_eval(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic held-out split (shuffled with ``seed``)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(items) * fraction))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def build_datasets(data, tokenizer, seed: int) -> Encoded:
    """Read, split, render and mask the recipe's data; drop rows that would train nothing."""
    template = resolve_template(tokenizer, data.chat_template)
    check_turn_ends_with_eos(tokenizer, template)
    train_convs = [c for path in data.train for c in load_conversations(path, data.format)]
    if data.eval:
        eval_convs = load_conversations(data.eval, data.format)
    else:
        train_convs, eval_convs = split_eval(train_convs, data.eval_fraction, seed)
    if data.max_examples:
        train_convs = train_convs[: data.max_examples]
    if data.max_eval_examples:
        eval_convs = eval_convs[: data.max_eval_examples]
    stats = {}
    out = []
    for name, convs in (("train", train_convs), ("eval", eval_convs)):
        rows = [encode(tokenizer, template, c, data.max_length, data.system_prompt) for c in convs]
        kept = [r for r in rows if any(l != IGNORE_INDEX for l in r["labels"])]
        stats[name] = {
            "examples": len(kept),
            "truncated": sum(r["truncated"] for r in rows),
            "dropped_no_trained_token": len(rows) - len(kept),
            "tokens": sum(len(r["input_ids"]) for r in kept),
            "trained_tokens": sum(sum(l != IGNORE_INDEX for l in r["labels"]) for r in kept),
        }
        out.append([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in kept])
    if not out[0]:
        raise QtuneError("data.train: no example has a trained (assistant) token; check data.format and the files")
    return Encoded(train=out[0], eval=out[1], stats=stats)


class PadCollator:
    """Right-pads ``input_ids`` with the pad token and ``labels`` with ``IGNORE_INDEX``."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        longest = max(len(r["input_ids"]) for r in rows)
        longest = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
