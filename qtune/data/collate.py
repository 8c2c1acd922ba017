"""Batching token rows: right padding for plain rows, position ids and no attention mask for packed ones."""

from __future__ import annotations

from qtune.data.masking import IGNORE_INDEX

PAD_POSITION = -1


def _pad_to(longest: int, multiple: int) -> int:
    return -(-longest // multiple) * multiple


class PadCollator:
    """Right-pads ``input_ids`` with the pad token and ``labels`` with ``IGNORE_INDEX``; ``attention_mask`` marks real tokens."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        longest = _pad_to(max(len(r["input_ids"]) for r in rows), self.multiple)
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class PackedCollator:
    """Right-pads packed rows: ``input_ids`` with the pad token, ``labels`` with IGNORE_INDEX,
    ``position_ids`` with -1; no ``attention_mask``.

    Without an attention mask, transformers reads a new example wherever ``position_ids`` does not
    step by +1 (see :mod:`qtune.data.packing`); each pad token (position -1) is then a one-token
    example of its own, attending only to itself, with no label.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        longest = _pad_to(max(len(r["input_ids"]) for r in rows), self.multiple)
        ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        positions = torch.full((len(rows), longest), PAD_POSITION, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            positions[i, :n] = torch.tensor(r["position_ids"])
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a batch from either collator."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int((batch["position_ids"] >= 0).sum())
