"""Integer weight grids: the quantized-linear representation every export format packs.

A quantized linear with ``b`` bits and group size ``g`` stores, for weight ``W`` of shape
``(out, in)``::

    q[o, c]      integer in [0, 2^b - 1]
    scale[o, k]  one float per output row and group k
    zero[o, k]   one integer per output row and group k
    g_idx[c]     the group of input column c (c // g, or a permutation of it under act-order)

    W'[o, c] = scale[o, g_idx[c]] * (q[o, c] - zero[o, g_idx[c]])

The grid of one group spans ``[min(w, 0), max(w, 0)]`` (zero is always representable):
``scale = (max - min) / (2^b - 1)``, ``zero = round(-min / scale)``. Symmetric grids use
``max = -min = max|w|`` and the fixed zero ``2^(b-1)`` (GPTQ's convention). Round-to-nearest
(RTN) is ``q = clamp(round(w / scale) + zero, 0, 2^b - 1)`` applied to every group at once; GPTQ
and AWQ choose ``q`` (and the grid) more carefully but store exactly this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtune.errors import QtuneError

SUPPORTED_BITS = (4, 8)


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # (out, in) uint8, values 0 .. 2^bits-1
    scale: torch.Tensor  # (out, n_groups) float32
    zero: torch.Tensor  # (out, n_groups) int32
    g_idx: torch.Tensor  # (in,) int32
    bits: int
    group_size: int

    def to(self, device) -> "QuantizedWeight":
        return QuantizedWeight(self.q.to(device), self.scale.to(device), self.zero.to(device), self.g_idx.to(device),
                               self.bits, self.group_size)

    def dequantize(self) -> torch.Tensor:
        """``W'`` as float32, shape (out, in)."""
        g = self.g_idx.long()
        return self.scale[:, g] * (self.q.float() - self.zero[:, g].float())


def check_shape(name: str, in_features: int, bits: int, group_size: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise QtuneError(f"export.bits: {bits} is not supported (allowed {', '.join(map(str, SUPPORTED_BITS))})")
    if group_size != -1 and in_features % group_size:
        raise QtuneError(
            f"export.group_size: {group_size} does not divide {name}'s {in_features} input features "
            f"(use a divisor, e.g. 64 for hidden size 576, or -1 for one group per row)"
        )


def find_grid(w: torch.Tensor, bits: int, sym: bool, search: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for each row of ``w`` (rows, cols) -> (rows, 1) float, (rows, 1) float.

    ``search``: instead of the full range, keep the shrunk range ``p · [min, max]``, ``p`` in
    1, 0.99, ..., 0.81, whose rounding error ``Σ |w' - w|^2.4`` is least (the original GPTQ code's
    ``mse`` option): clipping a few outliers buys a finer grid for the rest.
    """
    maxq = 2**bits - 1
    lo = w.min(dim=1, keepdim=True).values.clamp(max=0)
    hi = w.max(dim=1, keepdim=True).values.clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    scale, zero = _grid(lo, hi, maxq, sym)
    if search:
        best = _rounding_error(w, scale, zero, bits)
        for i in range(1, 20):
            s, z = _grid(lo * (1 - i / 100), hi * (1 - i / 100), maxq, sym)
            err = _rounding_error(w, s, z, bits)
            better = err < best
            best = torch.where(better, err, best)
            scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def _grid(lo: torch.Tensor, hi: torch.Tensor, maxq: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    scale = ((hi - lo) / maxq).half().float()  # stored as float16: quantize against the stored value
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def _rounding_error(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return (scale * (quantize(w, scale, zero, bits) - zero) - w).abs().pow(2.4).sum(dim=1, keepdim=True)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def rtn(weight: torch.Tensor, bits: int, group_size: int, sym: bool = False) -> QuantizedWeight:
    """Round-to-nearest with one grid per (row, group): the baseline GPTQ and AWQ improve on."""
    w = weight.detach().float()
    out, n_in = w.shape
    g = n_in if group_size == -1 else group_size
    groups = w.reshape(out * (n_in // g), g)  # (out * n_groups, g)
    scale, zero = find_grid(groups, bits, sym)
    q = quantize(groups, scale, zero, bits).reshape(out, n_in)
    return QuantizedWeight(
        q=q.to(torch.uint8),
        scale=scale.reshape(out, n_in // g),
        zero=zero.reshape(out, n_in // g).to(torch.int32),
        g_idx=(torch.arange(n_in, device=w.device) // g).to(torch.int32),
        bits=bits,
        group_size=group_size,
    )
