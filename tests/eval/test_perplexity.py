"""Strided-window perplexity against NLL computed directly, on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qtune.errors import QtuneError
from qtune.eval.loss import mean_token_nll
from qtune.eval.perplexity import perplexity, strided_windows

VOCAB = 97


def _doc(n: int, seed: int = 3) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize(
    "n,window,stride", [(1, 4, 2), (2, 4, 2), (10, 4, 2), (10, 4, 3), (10, 4, 4), (37, 8, 1), (37, 8, 5), (37, 64, 16)]
)
def test_windows_score_each_token_once_with_bounded_context(n, window, stride):
    scored = []
    for w in strided_windows(n, window, stride):
        assert w.end - w.begin <= window
        for t in range(w.first_target, w.end):
            assert 1 <= t - w.begin <= window - 1  # context length of target t
            scored.append(t)
    assert len(scored) == len(set(scored))
    if stride < window:
        assert sorted(scored) == list(range(1, n))
    else:  # chunking: the first token of every chunk has no context and is skipped
        assert sorted(scored) == [t for t in range(1, n) if t % window != 0]


def test_window_arguments_are_checked():
    with pytest.raises(QtuneError, match="stride"):
        strided_windows(10, 4, 5)
    with pytest.raises(QtuneError, match="window"):
        strided_windows(10, 1, 1)


def _direct_nll(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Each target t scored by its own forward pass over ids[b(t):t+1], b(t) the start of the
    first window k whose end k*stride + window exceeds t."""
    total, count = 0.0, 0
    for t in range(1, len(ids)):
        k = max(0, math.ceil((t - window + 1) / stride))
        b = k * stride
        if stride == window and t == b:
            continue  # chunk start: no context
        x = torch.tensor([ids[b : t + 1]])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, -2]
        total += F.cross_entropy(logits.unsqueeze(0), torch.tensor([ids[t]])).item()
        count += 1
    return total, count


@pytest.mark.parametrize("window,stride", [(16, 8), (16, 5), (16, 15)])
def test_perplexity_equals_exp_mean_nll_direct(tiny_llama, window, stride):
    model = tiny_llama(VOCAB)
    docs = [_doc(61, seed=3), _doc(40, seed=4)]  # both longer than the window
    r = perplexity(model, docs, window, stride)
    direct = [_direct_nll(model, d, window, stride) for d in docs]
    total, count = sum(t for t, _ in direct), sum(c for _, c in direct)
    assert r.scored_tokens == count == (61 - 1) + (40 - 1)
    expected = math.exp(total / count)
    # Measured: identical windows give identical sums up to float32 summation order (~1e-7 relative).
    assert r.perplexity == pytest.approx(expected, rel=1e-5), (
        f"ppl {r.perplexity} vs direct {expected}, diff {abs(r.perplexity - expected)}"
    )


def test_batched_windows_score_what_single_windows_do(tiny_llama):
    """Windows of equal length share a forward pass (each document's last, shorter one runs alone)."""
    model = tiny_llama(VOCAB)
    docs = [_doc(61, seed=3), _doc(40, seed=4)]
    one = perplexity(model, docs, 16, 5)
    for batch in (2, 3, 16):
        r = perplexity(model, docs, 16, 5, batch)
        assert (r.scored_tokens, r.windows) == (one.scored_tokens, one.windows)
        # Measured 0 difference here; a batched matmul may sum in another order (float32, ~1e-7 relative).
        assert r.nll_sum == pytest.approx(one.nll_sum, rel=1e-6), f"batch {batch}: {r.nll_sum} vs {one.nll_sum}"


def test_stride_equal_to_window_is_chunking_scored_by_mean_token_nll(tiny_llama):
    model = tiny_llama(VOCAB)
    ids, window = _doc(70, seed=5), 16
    rows = []
    for b in range(0, len(ids), window):
        chunk = ids[b : b + window]
        rows.append({"input_ids": chunk, "labels": [-100] + chunk[1:]})  # first token of a chunk has no context

    def collate(batch):
        n = max(len(r["input_ids"]) for r in batch)
        pad = lambda seq, v: seq + [v] * (n - len(seq))  # noqa: E731
        return {
            "input_ids": torch.tensor([pad(r["input_ids"], 0) for r in batch]),
            "labels": torch.tensor([pad(r["labels"], -100) for r in batch]),
            "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in batch]),
        }

    expected = math.exp(mean_token_nll(model, rows, collate, batch_size=2))
    r = perplexity(model, [ids], window, window)
    assert r.scored_tokens == 70 - math.ceil(70 / window)
    # Measured ~1e-7 relative: mean_token_nll runs padded batches, perplexity one window at a time.
    assert r.perplexity == pytest.approx(expected, rel=1e-5), f"ppl {r.perplexity} vs chunked {expected}"
