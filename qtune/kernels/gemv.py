"""Batch-1 4-bit GEMV: ``y = x · Wᵀ`` reading W straight from bitsandbytes' packed storage.

At batch 1 a linear layer is bound by reading its weight: a bf16 ``W`` costs 2 bytes a weight, the
packed form 0.5 (plus one absmax per block), so a kernel that decodes in registers can approach 4x
fewer bytes. With ``K`` a multiple of the blocksize, row ``o``'s block ``b`` holds
``W[o, b·bs : (b+1)·bs]`` with one scale ``absmax[o·K/bs + b]``, and each 32-bit word ``w`` of
:attr:`Packed4bit.words` holds the eight weights ``8w .. 8w+7`` of one block (see
:mod:`qtune.kernels.storage`). So, in fp32 throughout,

    y[o] = Σ_b absmax[o·K/bs + b] · Σ_{words of block b} Σ_{j<8} code[q(o, k_w + j)] · x[k_w + j]

Program ``(p, s)`` owns ``BLOCK_N`` output rows and split ``s`` of ``SPLIT_K`` of the reduction
dimension. It walks its split in steps of ``BLOCKS_K`` whole quantization blocks, as a
(BLOCK_N, BLOCKS_K, bs/8) tile of words (one coalesced 32-bit load per word). The eight nibbles of a
word are shifted out in registers, one static step each; step ``j`` reads ``code[q]`` (a 64-byte
table, cached) and the ``x[k_w + j]`` of every word of the tile, shared by the rows a thread holds
(bf16/fp16 ``x`` is read as int32 pairs, one load for steps ``j`` and ``j + 1``). Each
word's eight-term sum is scaled by its block's absmax (looked up once per block and step) and added to a
(BLOCK_N, BLOCKS_K, bs/8) fp32 accumulator: no reduction inside the loop, one at the end. The words
and absmax of step ``i + 1`` are loaded before the arithmetic of step ``i`` (Triton does not pipeline
these loads by itself), so a thread always has a step's reads in flight. With
``SPLIT_K`` = 1 the program writes ``y`` in ``x``'s dtype; otherwise it writes an fp32 partial sum
and a second small kernel adds the ``SPLIT_K`` partials in a fixed order (deterministic; no atomics),
which lets short-and-wide layers launch enough programs to fill the GPU.

This is the dequantize-then-matmul product with the weights kept in fp32 instead of rounded to the
activation dtype, so it agrees with :func:`gemv_reference` to that rounding. ``K`` must be a multiple
of the blocksize (true for transformer linears with bitsandbytes' blocksizes); other shapes, and
batches above one, go through :func:`gemv_reference`. The fused LoRA layers
(:mod:`qtune.kernels.peft_layers`) call it for one-row inputs without autograd (token-by-token generation).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from qtune.kernels.dequant import OUT_DTYPES, _cast, _nibbles, dequantize_reference, nested_args
from qtune.kernels.storage import Packed4bit


class GemvConfig(NamedTuple):
    """Tunables of :func:`gemv_triton`: rows a program, columns a step (whole blocks), warps, K splits."""

    block_n: int = 4
    block_k: int = 512
    num_warps: int = 4
    split_k: int = 1


@triton.jit
def _x_pair(x_ptr, k, mask, X_BITS: tl.constexpr):
    """``x[k]``, ``x[k + 1]`` (k even) in fp32. For 16-bit x (X_BITS 16: bf16, -16: fp16) ``x_ptr`` is x viewed as
    int32, one load holding both, x[k] in the low half (little-endian); a bf16 is the top half of its fp32."""
    if X_BITS == 32:
        x0 = tl.load(x_ptr + k, mask=mask, other=0)
        x1 = tl.load(x_ptr + k + 1, mask=mask, other=0)
    else:
        pair = tl.load(x_ptr + k // 2, mask=mask, other=0)
        if X_BITS == 16:
            x0 = (pair << 16).to(tl.float32, bitcast=True)
            x1 = (pair & -65536).to(tl.float32, bitcast=True)
        else:
            x0 = pair.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            x1 = (pair >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return x0, x1


@triton.jit
def _step_loads(words_ptr, absmax_ptr, absmax2_ptr, rows, row_ok, row_blocks, blk, last, blocksize2,
                WORDS: tl.constexpr, NESTED: tl.constexpr):
    """The DRAM reads of one step (blocks ``blk`` of ``rows``): its words (BLOCK_N, BLOCKS_K, WORDS) and raw
    absmax (BLOCK_N, BLOCKS_K), with absmax2 when NESTED (else a copy of absmax); all zero past ``last``."""
    blk_ok = blk < last
    word = (rows[:, None, None] * row_blocks + blk[None, :, None]) * WORDS + tl.arange(0, WORDS)[None, None, :]
    words = tl.load(words_ptr + word, mask=row_ok[:, None, None] & blk_ok[None, :, None], other=0)
    sblk = rows[:, None] * row_blocks + blk[None, :]
    smask = row_ok[:, None] & blk_ok[None, :]
    absmax = tl.load(absmax_ptr + sblk, mask=smask, other=0)
    absmax2 = tl.load(absmax2_ptr + sblk // blocksize2, mask=smask, other=0) if NESTED else absmax
    return words, absmax, absmax2


@triton.jit(do_not_specialize=["blocks_per_split"])  # one compile for every split of every K
def _gemv_kernel(x_ptr, words_ptr, absmax_ptr, code_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr,
                 N, K, blocks_per_split, blocksize2, NESTED: tl.constexpr, BLOCKSIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCKS_K: tl.constexpr, SPLIT_K: tl.constexpr, X_BITS: tl.constexpr):
    WORDS: tl.constexpr = BLOCKSIZE // 8  # words a quantization block
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < N
    row_blocks = K // BLOCKSIZE
    first = tl.program_id(1) * blocks_per_split
    last = tl.minimum(first + blocks_per_split, row_blocks)
    b = tl.arange(0, BLOCKS_K)  # (BLOCKS_K,)
    wb = tl.arange(0, WORDS)  # (WORDS,)
    offset = tl.load(offset_ptr) if NESTED else 0.0
    acc = tl.zeros((BLOCK_N, BLOCKS_K, WORDS), dtype=tl.float32)
    # software pipeline by hand: the next step's DRAM reads are issued before this step's arithmetic
    words, absmax, absmax2 = _step_loads(words_ptr, absmax_ptr, absmax2_ptr, rows, row_ok, row_blocks, first + b,
                                         last, blocksize2, WORDS, NESTED)
    for b0 in range(first, last, BLOCKS_K):
        blk = b0 + b  # block within the row (BLOCKS_K,)
        blk_ok = blk < last
        next_words, next_absmax, next_absmax2 = _step_loads(words_ptr, absmax_ptr, absmax2_ptr, rows, row_ok,
                                                             row_blocks, blk + BLOCKS_K, last, blocksize2, WORDS,
                                                             NESTED)
        k = blk[:, None] * BLOCKSIZE + wb[None, :] * 8  # first column of each word (BLOCKS_K, WORDS)
        part = tl.zeros((BLOCK_N, BLOCKS_K, WORDS), dtype=tl.float32)
        for j in tl.static_range(0, 8, 2):
            x0, x1 = _x_pair(x_ptr, k + j, blk_ok[:, None], X_BITS)  # (BLOCKS_K, WORDS) each
            part += tl.load(code_ptr + _nibbles(words, j)) * x0[None, :, :]
            part += tl.load(code_ptr + _nibbles(words, j + 1)) * x1[None, :, :]
        if NESTED:
            scale = tl.load(code2_ptr + absmax.to(tl.int32)) * absmax2 + offset  # (BLOCK_N, BLOCKS_K)
        else:
            scale = absmax
        acc += part * scale[:, :, None]
        words, absmax, absmax2 = next_words, next_absmax, next_absmax2
    y = tl.sum(tl.sum(acc, axis=2), axis=1)  # (BLOCK_N,)
    if SPLIT_K == 1:
        tl.store(out_ptr + rows, _cast(y, out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.store(out_ptr + tl.program_id(1) * N + rows, y, mask=row_ok)


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, N, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    # y[o] = Σ_s part[s, o] in split order, cast to the output dtype.
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < N
    y = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        y += tl.load(part_ptr + s * N + rows, mask=ok, other=0)
    tl.store(out_ptr + rows, _cast(y, out_ptr.dtype.element_ty), mask=ok)


def _power_of_2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def gemv_reference(x: torch.Tensor, w: Packed4bit) -> torch.Tensor:
    """Pure torch: dequantize to ``x.dtype`` and multiply; ``x`` is (..., K), the result (..., N)."""
    return torch.nn.functional.linear(x, dequantize_reference(w, x.dtype))


@cache
def default_config(n_out: int, k_in: int) -> GemvConfig:
    """A config for an (n_out, k_in) weight: split K only when the rows alone launch too few programs.

    Up to 8 splits, until about 1024 programs (8 a streaming multiprocessor on an H100's 132). The tile is
    chosen from sm_90 PTX (loads a word, registers), not yet from timings; ``scripts/bench_gemv.py`` prints
    the fastest of several configs per shape.
    """
    config = GemvConfig()
    programs = -(-n_out // config.block_n)
    steps = -(-k_in // config.block_k)
    split = 1
    while split < 8 and programs * split < 1024 and steps >= 4 * split:  # each split keeps 2+ steps
        split *= 2
    return config._replace(split_k=split)


def gemv_triton(x: torch.Tensor, w: Packed4bit, config: GemvConfig | None = None) -> torch.Tensor:
    """The Triton kernel for one activation row: ``x`` (K,) or (1, K) -> (N,) or (1, N), in ``x.dtype``.

    ``config`` defaults to :func:`default_config`; each step of a program reads ``max(block_k, blocksize)``
    columns (whole blocks, a power of 2 of them) of ``block_n`` rows (a power of 2).
    """
    n_out, k_in = w.shape
    if x.shape[-1] != k_in or x.numel() != k_in:
        raise ValueError(f"x: shape {tuple(x.shape)} is not one row of {k_in} features")
    if x.dtype not in OUT_DTYPES:
        raise ValueError(f"x: dtype {x.dtype} is not a GEMV input (allowed: {OUT_DTYPES})")
    if k_in % w.blocksize:
        raise ValueError(f"w: {k_in} input features is not a multiple of the blocksize {w.blocksize}; "
                         "use gemv_reference")
    block_n, block_k, num_warps, split_k = config or default_config(n_out, k_in)
    if not (_power_of_2(block_n) and _power_of_2(block_k) and split_k >= 1):
        raise ValueError(f"config: {tuple(config)} needs block_n and block_k powers of 2 and split_k >= 1")
    blocks_k = max(1, block_k // w.blocksize)
    row_blocks = k_in // w.blocksize
    per_split = -(-row_blocks // split_k)
    per_split = -(-per_split // blocks_k) * blocks_k  # whole steps, so only the last split has a short one
    split_k = -(-row_blocks // per_split)
    out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    part = out if split_k == 1 else torch.empty(split_k, n_out, dtype=torch.float32, device=x.device)
    absmax2, code2, offset = nested_args(w)
    x = x.reshape(k_in)  # the one row, contiguous (a view unless x is strided)
    if x.dtype == torch.float32:
        x_bits = 32
    else:  # bf16 / fp16 as int32 pairs (K is even); a copy only if x starts mid-word
        x_bits = 16 if x.dtype == torch.bfloat16 else -16
        x = (x if x.data_ptr() % 4 == 0 else x.clone()).view(torch.int32)
    _gemv_kernel[(triton.cdiv(n_out, block_n), split_k)](
        x, w.words, w.absmax, w.code, absmax2, code2, offset, part, n_out, k_in, per_split,
        w.blocksize2, NESTED=w.nested, BLOCKSIZE=w.blocksize, BLOCK_N=block_n, BLOCKS_K=blocks_k,
        SPLIT_K=split_k, X_BITS=x_bits, num_warps=num_warps,
    )
    if split_k > 1:
        _sum_splits_kernel[(triton.cdiv(n_out, 1024),)](part, out, n_out, SPLIT_K=split_k, BLOCK=1024, num_warps=4)
    return out
