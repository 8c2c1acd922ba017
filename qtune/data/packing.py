"""Packing short examples into ``max_length`` rows, with no attention across example boundaries.

A packed row is the concatenation of whole examples; its ``position_ids`` restart at 0 at every
example. transformers (5.x, ``masking_utils.find_packed_sequence_indices``) reads a packed row
from exactly that: when a batch carries ``position_ids`` and *no* ``attention_mask`` (and no KV
cache), every place where ``position_ids`` does not step by +1 starts a new sequence, and the
causal mask becomes block-diagonal (sdpa, eager and flex attention). So a packed batch has no
``attention_mask``, and the model must not build a cache in training (:func:`prepare_model`).

Batches of packed rows come from :class:`qtune.data.collate.PackedCollator` (padding gets
position id -1, so ``position_ids >= 0`` counts the real tokens).

The first label of every packed example is set to ``IGNORE_INDEX``: a causal LM's loss predicts
``labels[t+1]`` from position ``t``, and unpacked, an example's first label is never a target.
Packed, it would be predicted from the previous example's last token, a leak across the boundary.

Loss weighting: the Trainer's loss on a batch is ``sum of token NLLs / number of trained tokens``,
so a packed batch's loss equals the token-weighted mean of the per-example losses,
``sum_i n_i * loss_i / sum_i n_i`` (``n_i`` = trained tokens of example i, ``loss_i`` its mean NLL).
That is the same weighting an unpacked batch gets; ``tests/data/test_packing.py`` checks it.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from qtune.compat.transformers import attn_implementation
from qtune.data.masking import IGNORE_INDEX
from qtune.errors import QtuneError

# attention implementations whose masks come from transformers' masking_utils (which detect packed rows)
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention")


def pack_rows(rows: list[dict], max_length: int) -> list[dict]:
    """Best-fit-decreasing bin packing of whole rows into rows of at most ``max_length`` tokens.

    Deterministic; rows longer than ``max_length`` never reach here (truncation ran first).
    """
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    for i in order:
        n = len(rows[i]["input_ids"])
        assert n <= max_length, "rows are truncated to max_length before packing"
        k = bisect_left(free, (n, -1))
        if k < len(free):
            cap, b = free.pop(k)
        else:
            cap, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        if cap - n > 0:
            insort(free, (cap - n, b))
    return [_concat([rows[i] for i in members]) for members in bins]


def _concat(rows: list[dict]) -> dict:
    ids, labels, positions = [], [], []
    for r in rows:
        n = len(r["input_ids"])
        ids.extend(r["input_ids"])
        labels.append(IGNORE_INDEX)
        labels.extend(r["labels"][1:])
        positions.extend(range(n))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def prepare_model(model) -> None:
    """Make ``model`` read packed rows: no KV cache in the forward pass, an attention that honours them.

    With ``use_cache`` on, the forward builds a cache and transformers skips packed-row detection,
    so attention would silently cross example boundaries.
    """
    config = model.config
    impl = attn_implementation(config)
    if impl not in PACKING_ATTENTION:
        raise QtuneError(
            f"data.packing: the model's attention '{impl}' does not separate packed examples "
            f"(supported: {', '.join(PACKING_ATTENTION)}); set data.packing=false"
        )
    config.use_cache = False


def efficiency(rows: list[dict], packed: list[dict], max_length: int) -> float:
    """Share of the packed rows' ``max_length`` slots that hold real tokens."""
    return sum(len(r["input_ids"]) for r in rows) / (len(packed) * max_length) if packed else 0.0
