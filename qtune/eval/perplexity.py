"""Perplexity of plain text with a strided sliding window.

A document of ``n`` tokens ``x_0 .. x_{n-1}`` is scored by windows of at most ``window`` tokens
that advance by ``stride``. Window ``k`` feeds positions ``[b_k, e_k)`` with ``b_k = k * stride``
and ``e_k = min(b_k + window, n)`` (the last window may be shorter), and scores only the
targets it has not scored before: ``x_t`` for ``max(b_k + 1, e_{k-1}) <= t < e_k`` (``e_{-1} = 0``),
each predicted from the logits at ``t - 1``, i.e. with the ``t - b_k`` tokens before it in the
window as context (at most ``window - 1``). Then::

    NLL = sum_t -log p(x_t | x_{b_k..t-1})        perplexity = exp(NLL / scored tokens)

- ``stride <= window - 1``: every token after the first is scored exactly once, with at least
  ``window - stride`` tokens of context (except in the first window). Smaller strides give more
  context and cost ``window / stride`` forward passes per token.
- ``stride == window``: the windows do not overlap — plain chunking. The first token of every
  chunk has no context inside its chunk and is not scored (``n - ceil(n / window)`` targets).

``x_0`` is never scored (nothing precedes it). Documents are scored separately and their NLL
summed, so the result does not depend on the order the documents are given in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qtune.errors import QtuneError


@dataclass(frozen=True)
class Window:
    begin: int  # first input position
    end: int  # one past the last input position
    first_target: int  # first position whose token this window scores


def strided_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The windows that score tokens ``1 .. n_tokens - 1`` (see the module docstring)."""
    if window < 2:
        raise QtuneError(f"eval.window: must be at least 2 tokens (given {window})")
    if not 1 <= stride <= window:
        raise QtuneError(f"eval.stride: must be between 1 and the window {window} (given {stride})")
    out: list[Window] = []
    prev_end = 0
    for begin in range(0, max(n_tokens - 1, 0), stride):
        end = min(begin + window, n_tokens)
        first = max(begin + 1, prev_end)
        if first < end:
            out.append(Window(begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return out


@dataclass
class PerplexityResult:
    nll_sum: float  # nats, summed over scored tokens
    scored_tokens: int
    windows: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.scored_tokens if self.scored_tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.scored_tokens else math.nan


def score_windows(logits_fn, ids: list[int], window: int, stride: int, batch_size: int = 1) -> PerplexityResult:
    """Sum the NLL of ``ids`` over its strided windows; ``logits_fn(ids_tensor (B, T)) -> (B, T, V)``.

    ``batch_size`` windows of the same length go through one forward pass (every window but a
    document's last is ``window`` long, so no padding is needed and each row is what it would be alone,
    up to the order of the floating-point sums in a batched matmul).
    """
    import torch

    total, count, wins = 0.0, 0, 0
    all_ids = torch.tensor(ids, dtype=torch.long)
    windows = strided_windows(len(ids), window, stride)
    for group in _same_length_batches(windows, batch_size):
        chunk = torch.stack([all_ids[w.begin : w.end] for w in group])  # (B, T)
        logits = logits_fn(chunk)  # (B, T, V)
        for row, w in enumerate(group):
            nll, n = _window_nll(logits[row], chunk[row], w)
            total, count = total + nll, count + n
        wins += len(group)
        del logits
    return PerplexityResult(total, count, wins)


def _same_length_batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Consecutive runs of windows of equal length, at most ``batch_size`` each."""
    out: list[list[Window]] = []
    for w in windows:
        last = out[-1] if out else None
        if last and len(last) < batch_size and last[0].end - last[0].begin == w.end - w.begin:
            last.append(w)
        else:
            out.append([w])
    return out


def _window_nll(logits, chunk, w: Window) -> tuple[float, int]:
    """(summed NLL, targets) of the targets window ``w`` scores; ``logits`` (T, V), ``chunk`` (T,)."""
    import torch.nn.functional as F

    # logits at position p predict token p + 1: targets first..end-1 use logits first-1..end-2.
    lo, hi = w.first_target - w.begin - 1, w.end - w.begin - 1
    pred = logits[lo:hi].float()  # (N, V)
    target = chunk[lo + 1 : hi + 1].to(pred.device)  # (N,)
    return F.cross_entropy(pred, target, reduction="sum").item(), target.numel()


def model_logits_fn(model):
    """``logits_fn`` for a transformers causal LM (eval mode, no grad, on the model's device)."""
    import torch

    device = next(p for p in model.parameters()).device
    model.eval()

    def logits(chunk):
        with torch.no_grad():
            return model(input_ids=chunk.to(device)).logits

    return logits


def perplexity(model, documents: list[list[int]], window: int, stride: int, batch_size: int = 1) -> PerplexityResult:
    """Perplexity of token-id ``documents`` under ``model``, each document windowed on its own
    (``batch_size``: windows per forward pass, see :func:`score_windows`)."""
    fn = model_logits_fn(model)
    total = PerplexityResult(0.0, 0, 0)
    for ids in documents:
        r = score_windows(fn, ids, window, stride, batch_size)
        total = PerplexityResult(total.nll_sum + r.nll_sum, total.scored_tokens + r.scored_tokens, total.windows + r.windows)
    return total
