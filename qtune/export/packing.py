"""Bit packing of :class:`~qtune.export.grid.QuantizedWeight` into the GPTQ and AWQ layouts.

Both pack ``32 / bits`` integers into one int32, lowest bits first, but along different axes:

GPTQ (``checkpoint_format: gptq``, a.k.a. v1), for a linear (out, in)::

    qweight (in·bits/32, out)   int32, packed along the input axis: word r holds q[:, r·k .. r·k+k-1]
    qzeros  (n_groups, out·bits/32) int32, packed along the output axis, storing zero - 1
    scales  (n_groups, out)     float16
    g_idx   (in,)               int32, group of each input column (non-trivial under act-order)

The ``zero - 1`` is v1's historical off-by-one; readers add 1 back modulo ``2^bits``, so every
zero in [0, 2^bits) round-trips.

AWQ GEMM (``version: gemm``, 4-bit only)::

    qweight (in, out/8)         int32, packed along the output axis in the order 0 2 4 6 1 3 5 7
    qzeros  (n_groups, out/8)   int32, same packing, zeros stored as they are
    scales  (n_groups, out)     float16
"""

from __future__ import annotations

import torch

from qtune.export.grid import QuantizedWeight

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2^32) -> the int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pack(values: torch.Tensor, bits: int, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """Pack integer ``values`` along ``dim`` (its size a multiple of 32/bits) into int32 words."""
    k = 32 // bits
    v = values.to(torch.int64).movedim(dim, -1)
    v = v.reshape(*v.shape[:-1], v.shape[-1] // k, k)  # (..., words, k)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(k, dtype=torch.int64) * bits
    words = ((v & (2**bits - 1)) << shifts).sum(-1)
    return _to_int32(words).movedim(-1, dim)


def _unpack(words: torch.Tensor, bits: int, dim: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    k = 32 // bits
    w = words.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    shifts = torch.arange(k, dtype=torch.int64) * bits
    v = (w.unsqueeze(-1) >> shifts) & (2**bits - 1)  # (..., words, k)
    if order is not None:
        v = v[..., torch.argsort(torch.tensor(order))]
    return v.reshape(*v.shape[:-2], -1).movedim(-1, dim).to(torch.int32)


def pack_gptq(w: QuantizedWeight) -> dict[str, torch.Tensor]:
    return {
        "qweight": _pack(w.q.T, w.bits, dim=0),  # (in·bits/32, out)
        "qzeros": _pack((w.zero - 1).T, w.bits, dim=1),  # (n_groups, out·bits/32)
        "scales": w.scale.T.contiguous().to(torch.float16),
        "g_idx": w.g_idx.to(torch.int32),
    }


def unpack_gptq(t: dict[str, torch.Tensor], bits: int, group_size: int) -> QuantizedWeight:
    zero = (_unpack(t["qzeros"], bits, dim=1) + 1) & (2**bits - 1)
    return QuantizedWeight(
        q=_unpack(t["qweight"], bits, dim=0).T.to(torch.uint8),
        scale=t["scales"].float().T.contiguous(),
        zero=zero.T.contiguous(),
        g_idx=t["g_idx"].to(torch.int32),
        bits=bits,
        group_size=group_size,
    )


def pack_awq(w: QuantizedWeight) -> dict[str, torch.Tensor]:
    assert w.bits == 4, "AWQ GEMM stores 4-bit weights only"
    assert torch.equal(w.g_idx.long(), torch.arange(w.q.shape[1]) // w.group_size), "AWQ has no act-order"
    return {
        "qweight": _pack(w.q.T, 4, dim=1, order=AWQ_ORDER),  # (in, out/8)
        "qzeros": _pack(w.zero.T, 4, dim=1, order=AWQ_ORDER),  # (n_groups, out/8)
        "scales": w.scale.T.contiguous().to(torch.float16),
    }


def unpack_awq(t: dict[str, torch.Tensor], group_size: int) -> QuantizedWeight:
    q = _unpack(t["qweight"], 4, dim=1, order=AWQ_ORDER).T
    return QuantizedWeight(
        q=q.to(torch.uint8),
        scale=t["scales"].float().T.contiguous(),
        zero=_unpack(t["qzeros"], 4, dim=1, order=AWQ_ORDER).T.contiguous(),
        g_idx=(torch.arange(q.shape[1]) // group_size).to(torch.int32),
        bits=4,
        group_size=group_size,
    )


PACKERS = {"gptq": pack_gptq, "awq": pack_awq}
