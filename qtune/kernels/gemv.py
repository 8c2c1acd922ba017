"""Batch-1 4-bit GEMV: ``y = x · Wᵀ`` reading W straight from bitsandbytes' packed storage.

At batch 1 a linear layer is bound by reading its weight: a bf16 ``W`` costs 2 bytes a weight, the
packed form 0.5 (plus one absmax per block), so a kernel that decodes in registers can approach 4x
fewer bytes. Program ``p`` owns ``BLOCK_N`` output rows and walks the reduction dimension in steps of
``BLOCK_K``; for row ``o`` and even column ``k`` the byte ``packed[(o·K + k) / 2]`` holds
``W[o, k]`` (high nibble) and ``W[o, k+1]`` (low nibble), so

    y[o] = Σ_{k even} x[k] · W[o, k] + x[k+1] · W[o, k+1],   W[o, k] = code[q] · absmax[(o·K + k) / blocksize]

with each ``W`` value rounded to the activation dtype before the product (as dequantize-then-matmul
does) and the sum kept in fp32. ``K`` must be even (always true for transformer linears); other
shapes, and batches above one, go through :func:`gemv_reference`. The fused LoRA layers
(:mod:`qtune.kernels.peft_layers`) call it for one-row inputs without autograd (token-by-token generation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qtune.kernels.dequant import _cast, _scale, dequantize_reference, nested_args
from qtune.kernels.storage import Packed4bit


@triton.jit
def _gemv_kernel(x_ptr, packed_ptr, absmax_ptr, code_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr,
                 N, K, blocksize, blocksize2, NESTED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dtype = x_ptr.dtype.element_ty
    for k0 in range(0, K, BLOCK_K):
        k = k0 + 2 * tl.arange(0, BLOCK_K // 2)  # even columns (BLOCK_K/2,)
        k_ok = k < K
        flat = rows[:, None] * K + k[None, :]  # (BLOCK_N, BLOCK_K/2) flat index of W[o, k]
        ok = row_ok[:, None] & k_ok[None, :]
        q = tl.load(packed_ptr + flat // 2, mask=ok, other=0).to(tl.int32)
        scale = _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, flat // blocksize, ok, blocksize2, NESTED)
        w_even = _cast(tl.load(code_ptr + (q >> 4)) * scale, dtype).to(tl.float32)
        w_odd = _cast(tl.load(code_ptr + (q & 0xF)) * scale, dtype).to(tl.float32)
        x_even = tl.load(x_ptr + k, mask=k_ok, other=0).to(tl.float32)
        x_odd = tl.load(x_ptr + k + 1, mask=k_ok, other=0).to(tl.float32)
        acc += tl.sum(w_even * x_even[None, :] + w_odd * x_odd[None, :], axis=1)
    tl.store(out_ptr + rows, _cast(acc, dtype), mask=row_ok)


def gemv_reference(x: torch.Tensor, w: Packed4bit) -> torch.Tensor:
    """Pure torch: dequantize to ``x.dtype`` and multiply; ``x`` is (..., K), the result (..., N)."""
    return torch.nn.functional.linear(x, dequantize_reference(w, x.dtype))


def gemv_triton(x: torch.Tensor, w: Packed4bit, block_n: int = 8, block_k: int = 512, num_warps: int = 4) -> torch.Tensor:
    """The Triton kernel for one activation row: ``x`` (K,) or (1, K) -> (N,) or (1, N)."""
    n_out, k_in = w.shape
    if x.shape[-1] != k_in or x.numel() != k_in:
        raise ValueError(f"x: shape {tuple(x.shape)} is not one row of {k_in} features")
    if k_in % 2:
        raise ValueError(f"w: {k_in} input features is odd; the GEMV kernel reads whole bytes (use gemv_reference)")
    out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    absmax2, code2, offset = nested_args(w)
    _gemv_kernel[(triton.cdiv(n_out, block_n),)](
        x.contiguous(), w.packed, w.absmax, w.code, absmax2, code2, offset, out, n_out, k_in, w.blocksize,
        w.blocksize2, NESTED=w.nested, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
        enable_fp_fusion=False,
    )
    return out
