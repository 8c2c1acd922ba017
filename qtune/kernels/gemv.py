"""Batch-1 4-bit GEMV: ``y = x · Wᵀ`` reading W straight from bitsandbytes' packed storage.

At batch 1 a linear layer is bound by reading its weight: a bf16 ``W`` costs 2 bytes a weight, the
packed form 0.5 (plus one absmax per block), so a kernel that decodes in registers can approach 4x
fewer bytes. Program ``p`` owns ``BLOCK_N`` output rows and walks the reduction dimension in chunks of
``BLOCK_K`` = whole quantization blocks, as a (BLOCK_N, blocks, blocksize/2) tile of bytes. With
``K`` a multiple of the blocksize, row ``o``'s block ``b`` holds ``W[o, b·bs : (b+1)·bs]`` and has one
scale ``absmax[o·K/bs + b]``, so the scale factors out of the block's partial sum:

    y[o] = Σ_b absmax[o·K/bs + b] · Σ_{k in block b} code[q(o, k)] · x[k]        (fp32 throughout)

where byte ``packed[(o·K + k) / 2]`` holds ``q(o, k)`` (high nibble, k even) and ``q(o, k+1)`` (low).
This is the dequantize-then-matmul product with the weights kept in fp32 instead of rounded to the
activation dtype, so it agrees with :func:`gemv_reference` to that rounding. ``K`` must be a multiple
of the blocksize (true for transformer linears with bitsandbytes' blocksizes); other shapes, and
batches above one, go through :func:`gemv_reference`. The fused LoRA layers
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
                 N, K, blocksize2, NESTED: tl.constexpr, BLOCKSIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCKS_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < N
    b = tl.arange(0, BLOCKS_K)  # quantization blocks in one chunk (BLOCKS_K,)
    j = tl.arange(0, BLOCKSIZE // 2)  # byte within a block (BLOCKSIZE/2,)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCKS_K * BLOCKSIZE):
        k = k0 + b[:, None] * BLOCKSIZE + 2 * j[None, :]  # even columns (BLOCKS_K, BLOCKSIZE/2)
        k_ok = k < K
        ok = row_ok[:, None, None] & k_ok[None, :, :]
        q = tl.load(packed_ptr + (rows[:, None, None] * K + k[None, :, :]) // 2, mask=ok, other=0).to(tl.int32)
        x_even = tl.load(x_ptr + k, mask=k_ok, other=0).to(tl.float32)
        x_odd = tl.load(x_ptr + k + 1, mask=k_ok, other=0).to(tl.float32)
        part = tl.sum(tl.load(code_ptr + (q >> 4)) * x_even[None, :, :]
                      + tl.load(code_ptr + (q & 0xF)) * x_odd[None, :, :], axis=2)  # (BLOCK_N, BLOCKS_K)
        blk = rows[:, None] * (K // BLOCKSIZE) + k0 // BLOCKSIZE + b[None, :]  # (BLOCK_N, BLOCKS_K)
        blk_ok = row_ok[:, None] & (k0 + b[None, :] * BLOCKSIZE < K)
        scale = _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, blk, blk_ok, blocksize2, NESTED)
        acc += tl.sum(part * scale, axis=1)
    tl.store(out_ptr + rows, _cast(acc, out_ptr.dtype.element_ty), mask=row_ok)


def gemv_reference(x: torch.Tensor, w: Packed4bit) -> torch.Tensor:
    """Pure torch: dequantize to ``x.dtype`` and multiply; ``x`` is (..., K), the result (..., N)."""
    return torch.nn.functional.linear(x, dequantize_reference(w, x.dtype))


def gemv_triton(x: torch.Tensor, w: Packed4bit, block_n: int = 8, block_k: int = 512, num_warps: int = 4) -> torch.Tensor:
    """The Triton kernel for one activation row: ``x`` (K,) or (1, K) -> (N,) or (1, N).

    Each step of a program reads ``max(block_k, blocksize)`` columns (whole blocks) of ``block_n`` rows.
    """
    n_out, k_in = w.shape
    if x.shape[-1] != k_in or x.numel() != k_in:
        raise ValueError(f"x: shape {tuple(x.shape)} is not one row of {k_in} features")
    if k_in % w.blocksize:
        raise ValueError(f"w: {k_in} input features is not a multiple of the blocksize {w.blocksize}; "
                         "use gemv_reference")
    out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    absmax2, code2, offset = nested_args(w)
    _gemv_kernel[(triton.cdiv(n_out, block_n),)](
        x.contiguous(), w.packed, w.absmax, w.code, absmax2, code2, offset, out, n_out, k_in, w.blocksize2,
        NESTED=w.nested, BLOCKSIZE=w.blocksize, BLOCK_N=block_n, BLOCKS_K=max(1, block_k // w.blocksize),
        num_warps=num_warps, enable_fp_fusion=False,
    )
    return out
