"""Batching token rows: right padding for plain rows, position ids and no attention mask for packed ones."""

from __future__ import annotations

from qtune.data.masking import IGNORE_INDEX

PAD_POSITION = -1


def _pad_to(longest: int, multiple: int) -> int:
    return -(-longest // multiple) * multiple


def _right_pad(rows: list[dict], pad_token_id: int, multiple: int, third: str, fill: int):
    """``input_ids`` (pad token), ``labels`` (IGNORE_INDEX) and a third per-token tensor, right-padded.

    The third is ``attention_mask`` (1 on real tokens, ``fill`` 0 after) or ``position_ids`` (the
    row's own, ``fill`` -1 after).
    """
    import torch

    longest = _pad_to(max(len(r["input_ids"]) for r in rows), multiple)
    ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    extra = torch.full((len(rows), longest), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        extra[i, :n] = torch.tensor(r[third]) if third in r else 1
    return {"input_ids": ids, "labels": labels, third: extra}


class _RightPadCollator:
    third: str
    fill: int

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        return _right_pad(rows, self.pad_token_id, self.multiple, self.third, self.fill)


class PadCollator(_RightPadCollator):
    """Right-pads ``input_ids`` with the pad token and ``labels`` with ``IGNORE_INDEX``; ``attention_mask`` marks real tokens."""

    third, fill = "attention_mask", 0


class PackedCollator(_RightPadCollator):
    """Right-pads packed rows: ``input_ids`` with the pad token, ``labels`` with IGNORE_INDEX,
    ``position_ids`` with -1; no ``attention_mask``.

    Without an attention mask, transformers reads a new example wherever ``position_ids`` does not
    step by +1 (see :mod:`qtune.data.packing`); each pad token (position -1) is then a one-token
    example of its own, attending only to itself, with no label.
    """

    third, fill = "position_ids", PAD_POSITION


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a batch from either collator."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int((batch["position_ids"] >= 0).sum())
