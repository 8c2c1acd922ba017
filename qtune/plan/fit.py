"""The largest micro batch and sequence length whose planned training peak fits a memory budget.

Peak memory grows monotonically with both (every term of qtune.plan.memory is a sum of
non-negative multiples of B·T, T and constants), so a doubling search then bisection finds the
boundary with O(log) plan evaluations.
"""

from __future__ import annotations

from typing import Callable

from qtune.plan import memory

MAX_SEARCH = 1 << 24


def largest(fits: Callable[[int], bool], limit: int = MAX_SEARCH) -> int:
    """The largest ``x`` in ``[1, limit]`` with ``fits(x)``, for monotone ``fits``; 0 when even 1 does not fit."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)  # fits(lo) is true, fits(hi) false or past the limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_micro_batch(recipe, shape, seq: int, budget: int, overhead: int = 0, device: str = "cpu") -> int:
    return largest(lambda b: memory.train_peak(recipe, shape, b, seq, device).total + overhead <= budget)


def max_seq_len(recipe, shape, batch: int, budget: int, overhead: int = 0, device: str = "cpu") -> int:
    limit = shape.max_positions or MAX_SEARCH
    return largest(lambda t: memory.train_peak(recipe, shape, batch, t, device).total + overhead <= budget, limit)
