"""How much an export changed the model, on the recipe's own eval data.

Two figures per model, both token-weighted over the whole eval set:

- ``eval_loss``: mean NLL of the assistant tokens (the task loss training reported);
- ``perplexity``: ``exp`` of the mean NLL of every token of the rendered eval conversations.

An export is compared with the merged 16-bit model it was made from; ``delta`` is export - merged.
"""

from __future__ import annotations

import math


def eval_rows(recipe, tokenizer) -> tuple[list[dict], list[dict]]:
    """(task rows with assistant-only labels, the same rows labelled on every token)."""
    from qtune.data.dataset import build_datasets

    rows = build_datasets(recipe.data, tokenizer, recipe.train.seed).eval
    return rows, [{"input_ids": r["input_ids"], "labels": list(r["input_ids"])} for r in rows]


def measure(model, recipe, tokenizer, rows=None, batch_size: int = 16) -> dict:
    from qtune.data.dataset import PadCollator
    from qtune.eval.loss import mean_token_nll

    task, full = rows if rows is not None else eval_rows(recipe, tokenizer)
    collate = PadCollator(tokenizer.pad_token_id)
    nll = mean_token_nll(model, full, collate, batch_size)
    return {"eval_loss": mean_token_nll(model, task, collate, batch_size), "perplexity": math.exp(nll), "examples": len(task)}


def compare(export: dict, reference: dict) -> dict:
    return {
        "export": export,
        "merged": reference,
        "delta": {k: export[k] - reference[k] for k in ("eval_loss", "perplexity")},
    }
