"""CPU threads of an export, and the numerics that must not depend on them.

On CPU, PyTorch's MKL/LAPACK calls split some reductions across the intra-op threads, so their
float32 results change in the last bits with the thread count (measured with torch 2.13 + MKL
2024.2 on a 2-core AVX-512 machine, 1 vs 2 threads):

- ``x.T @ x`` with many tokens (the Hessian, ``K`` = tokens): differs (max 2e-3 on a 576² Hessian of
  8192 tokens); a linear's forward ``x @ W.T``, ``E @ U`` and SDPA did not (bit-identical);
- ``torch.linalg.cholesky`` / ``cholesky_inverse``: differ (max 8e-6), in float64 too (1e-14).

GPTQ rounds every weight against grids and error feedback built from those numbers, so a last-bit
change flips rounding decisions, and each flip is fed forward to the columns after it: the same
GPTQ export of SmolLM2-135M measured perplexity 12.177 with 1 thread and 12.103 with 2. Float64
would make flips rarer, not impossible (its Cholesky differs across thread counts as well), so the
GPTQ numerics (Hessian accumulation and the whole solve) run on one thread (:func:`one_thread`):
the same inputs give bit-identical packed tensors whatever ``torch.get_num_threads()`` is
(``tests/export/test_gptq.py``). The forward passes around them keep every thread.

:func:`cpu_threads` sets the thread count for a whole export (``qtune export --threads N``,
``export.threads``); with the above, N changes the speed, not the result.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: leave PyTorch's setting), then restore it."""
    import torch

    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def one_thread(device):
    """One CPU thread for numerics whose float result must not depend on the thread count.

    A no-op on CUDA tensors (their kernels do not use the CPU pool)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    with cpu_threads(1):
        yield
