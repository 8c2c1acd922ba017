"""4-bit dequantization: a Triton kernel and, beside it, the pure-torch reference (the CPU path).

Both compute, for every flat index ``i < n`` of the weight (see :mod:`qtune.kernels.storage`),

    q_i      = packed[i // 2] >> 4        if i is even
               packed[i // 2] & 0xF       if i is odd
    scale_b  = absmax[b]                                          (plain)
             = code2[absmax[b]] * absmax2[b // blocksize2] + offset   (double quant)
    W.flat[i] = (code[q_i] * scale_{i // blocksize}).to(dtype)

in fp32, so the result equals ``bitsandbytes.functional.dequantize_4bit`` bit for bit. The Triton
kernel does it in one pass: each program takes whole quantization blocks (``ROWS`` of them, as a
(ROWS, blocksize/2) tile of bytes), looks up each block's (nested) absmax once, decodes both nibbles
and writes (ROWS, blocksize) interleaved values of the output dtype. Any blocksize works (it is a
compile-time constant; a block never splits a byte because blocksizes are even), and so does an
``n`` that is not a multiple of the blocksize (the last block is masked).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from qtune.kernels.storage import Packed4bit

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def absmax_fp32(w: Packed4bit) -> torch.Tensor:
    """The per-block scales as fp32 ``(n_blocks,)``, undoing double quantization if present."""
    if not w.nested:
        return w.absmax
    b = torch.arange(w.absmax.numel(), device=w.device)
    return w.code2[w.absmax.long()] * w.absmax2[b // w.blocksize2] + w.offset


def dequantize_reference(w: Packed4bit, dtype: torch.dtype) -> torch.Tensor:
    """Pure torch, any device: the definition above written out; returns ``shape`` in ``dtype``.

    One gather per byte from a 256-row table of (code[hi], code[lo]) pairs, then one multiply per
    block; the values are the same fp32 products as the per-nibble definition.
    """
    n, bs = w.numel, w.blocksize
    pairs = torch.stack((w.code.repeat_interleave(16), w.code.repeat(16)), dim=-1)  # (256, 2): byte -> (hi, lo)
    values = pairs.index_select(0, w.packed.long()).reshape(-1)  # fp32 (2 * n_bytes,)
    values = torch.nn.functional.pad(values, (0, w.n_blocks * bs - values.numel()))[: w.n_blocks * bs]
    out = values.view(w.n_blocks, bs) * absmax_fp32(w)[:, None]  # (n_blocks, blocksize)
    return out.reshape(-1)[:n].reshape(w.shape).to(dtype)


@triton.jit
def _cast(v, dtype: tl.constexpr):
    """fp32 -> ``dtype`` rounding to nearest even; bf16 by integer ops, because Triton's interpreter
    truncates a plain bf16 cast (the GPU rounds to nearest even, so this is the same math there)."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = v.to(dtype)
    return out


@triton.jit
def _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, blk, mask, blocksize2, NESTED: tl.constexpr):
    """fp32 absmax of block ``blk`` (any shape), through the double-quant tables when NESTED."""
    if NESTED:
        a = tl.load(absmax_ptr + blk, mask=mask, other=0).to(tl.int32)
        scale = tl.load(code2_ptr + a) * tl.load(absmax2_ptr + blk // blocksize2, mask=mask, other=0) + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + blk, mask=mask, other=0)
    return scale


@triton.jit
def _dequant_kernel(packed_ptr, absmax_ptr, code_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr,
                    n, blocksize2, NESTED: tl.constexpr, BLOCKSIZE: tl.constexpr, ROWS: tl.constexpr):
    # One program: ROWS quantization blocks, each BLOCKSIZE values = BLOCKSIZE/2 bytes; one absmax per row.
    blk = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    col = tl.arange(0, BLOCKSIZE // 2)  # (BLOCKSIZE/2,)
    byte = blk[:, None] * (BLOCKSIZE // 2) + col[None, :]  # (ROWS, BLOCKSIZE/2)
    ok = byte * 2 < n
    q = tl.load(packed_ptr + byte, mask=ok, other=0).to(tl.int32)
    scale = _scale(absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, blk, blk * BLOCKSIZE < n, blocksize2, NESTED)
    hi = tl.load(code_ptr + (q >> 4)) * scale[:, None]  # values 2j
    lo = tl.load(code_ptr + (q & 0xF)) * scale[:, None]  # values 2j + 1
    offs = blk[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]  # (ROWS, BLOCKSIZE)
    tl.store(out_ptr + offs, _cast(tl.interleave(hi, lo), out_ptr.dtype.element_ty), mask=offs < n)


def nested_args(w: Packed4bit):
    """The (absmax2, code2, offset) kernel arguments; dummies (never read) when not nested."""
    if w.nested:
        return w.absmax2, w.code2, w.offset
    return w.absmax, w.absmax, w.absmax


def dequantize_triton(w: Packed4bit, dtype: torch.dtype, block: int = 2048, num_warps: int = 4,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel: ``shape`` in ``dtype`` (bf16, fp16 or fp32), one launch, one pass.

    Each program writes ``max(block, blocksize)`` values (whole quantization blocks). ``out``: a contiguous
    tensor of ``shape`` and ``dtype`` to write into (a reused buffer) instead of a new one.
    """
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype: {dtype} is not a dequantization output (allowed: {OUT_DTYPES})")
    if out is None:
        out = torch.empty(w.shape, dtype=dtype, device=w.device)
    elif tuple(out.shape) != tuple(w.shape) or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"out: needs a contiguous {tuple(w.shape)} {dtype} tensor, got {tuple(out.shape)} {out.dtype}")
    rows = max(1, block // w.blocksize)
    absmax2, code2, offset = nested_args(w)
    _dequant_kernel[(triton.cdiv(w.n_blocks, rows),)](
        w.packed, w.absmax, w.code, absmax2, code2, offset, out, w.numel, w.blocksize2,
        NESTED=w.nested, BLOCKSIZE=w.blocksize, ROWS=rows, num_warps=num_warps,
        enable_fp_fusion=False,  # an FMA would round code2*absmax2+offset once, bitsandbytes rounds twice
    )
    return out


BACKENDS = {"triton": dequantize_triton, "torch": dequantize_reference}


def dequantize(w: Packed4bit, dtype: torch.dtype, backend: str = "triton") -> torch.Tensor:
    if backend not in BACKENDS:
        raise ValueError(f"backend: '{backend}' is not a dequantization backend (allowed: {', '.join(BACKENDS)})")
    return BACKENDS[backend](w, dtype)
