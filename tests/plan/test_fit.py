"""The fit search: the largest value that fits, monotone in the budget and in the other dimension."""

import pytest

from qtune.plan import fit, memory
from qtune.plan.shape import shape_of

from tests.plan.conftest import recipe_for


@pytest.mark.parametrize("boundary", [0, 1, 2, 3, 7, 64, 1000, 4097])
def test_largest_finds_the_boundary(boundary):
    assert fit.largest(lambda x: x <= boundary, limit=10_000) == boundary


def test_largest_respects_the_limit():
    assert fit.largest(lambda x: True, limit=300) == 300


def test_max_batch_and_seq_are_monotone_and_fit(llama_dir):
    path, config = llama_dir
    recipe, shape = recipe_for(path), shape_of(config)
    budgets = [2**24, 2**26, 2**28, 2**30]
    batches = [fit.max_micro_batch(recipe, shape, 128, b) for b in budgets]
    assert batches == sorted(batches) and batches[-1] > batches[0] > 0
    by_seq = [fit.max_micro_batch(recipe, shape, t, 2**28) for t in (32, 64, 128, 256)]
    assert by_seq == sorted(by_seq, reverse=True)
    for budget, b in zip(budgets, batches):
        assert memory.train_peak(recipe, shape, b, 128).total <= budget < memory.train_peak(recipe, shape, b + 1, 128).total
    seq = fit.max_seq_len(recipe, shape, 4, 2**24)
    assert 0 < seq < shape.max_positions
    assert memory.train_peak(recipe, shape, 4, seq).total <= 2**24 < memory.train_peak(recipe, shape, 4, seq + 1).total
    assert fit.max_seq_len(recipe, shape, 4, 2**40) == shape.max_positions  # capped at the model's positions
