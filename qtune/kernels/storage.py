"""bitsandbytes' 4-bit storage, named: what the kernels read, exactly as bitsandbytes keeps it.

A weight ``W`` of ``shape`` (out, in) with ``n = out * in`` values is flattened row-major and cut
into blocks of ``blocksize`` consecutive values (the last block may be short). Value ``i`` is

    W.flat[i] = code[q_i] * absmax[i // blocksize]                              (fp32, then cast)

where ``q_i`` is a 4-bit index into the 16-entry ``code`` table (NF4 or FP4). Two indices share a
byte, the even one in the high nibble: ``packed[j] = q_{2j} << 4 | q_{2j+1}`` (bitsandbytes'
``quantize_4bit``; ``n`` odd pads one zero nibble). With double quantization (QLoRA's default)
``absmax`` itself is stored as uint8 indices ``a`` into the 256-entry dynamic ``code2``, in blocks
of ``blocksize2`` (256) absmax values, each with an fp32 ``absmax2``, around a mean ``offset``:

    absmax[b] = code2[a_b] * absmax2[b // blocksize2] + offset                  (fp32, unfused)

The kernels compute both lines in this order, in fp32, so they agree with
``bitsandbytes.functional.dequantize_4bit`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional

import torch

# bitsandbytes' NF4 table (``get_4bit_type("nf4")``): quantiles of N(0, 1), scaled to [-1, 1].
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
# bitsandbytes' FP4 (e2m1 with its own exponent bias) table: these magnitudes over 12, sign in bit 3.
_FP4_MAGNITUDES = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
FP4_CODE = tuple(m / 12 for m in _FP4_MAGNITUDES) + tuple(-m / 12 for m in _FP4_MAGNITUDES)
CODES = {"nf4": NF4_CODE, "fp4": FP4_CODE}
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes accepts for 4-bit


@dataclass(frozen=True)
class Packed4bit:
    """One 4-bit weight as tensors on one device; nothing here is copied or repacked."""

    packed: torch.Tensor  # uint8 (ceil(n / 2),): two indices a byte, even index in the high nibble
    absmax: torch.Tensor  # fp32 (n_blocks,), or uint8 (n_blocks,) indices into code2 when nested
    code: torch.Tensor  # fp32 (16,)
    shape: tuple[int, ...]
    blocksize: int
    quant_type: str
    absmax2: Optional[torch.Tensor] = None  # fp32 (ceil(n_blocks / blocksize2),)
    code2: Optional[torch.Tensor] = None  # fp32 (256,)
    offset: Optional[torch.Tensor] = None  # fp32 (1,)
    blocksize2: int = 256

    @property
    def nested(self) -> bool:
        return self.absmax2 is not None

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def device(self) -> torch.device:
        return self.packed.device


def code_table(quant_type: str, device) -> torch.Tensor:
    if quant_type not in CODES:
        raise ValueError(f"quant_type: '{quant_type}' is not a 4-bit type (allowed: {', '.join(CODES)})")
    return torch.tensor(CODES[quant_type], dtype=torch.float32, device=device)


def from_quant_state(packed: torch.Tensor, quant_state) -> Packed4bit:
    """Name the tensors of a bitsandbytes ``Params4bit`` (``packed``) and its ``QuantState``."""
    if quant_state.blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize: {quant_state.blocksize} is not a 4-bit blocksize (allowed: {BLOCKSIZES})")
    data = packed if packed.dtype == torch.uint8 else packed.view(torch.uint8)
    fields = dict(
        packed=data.reshape(-1),
        absmax=quant_state.absmax,
        code=code_table(quant_state.quant_type, data.device),
        shape=tuple(quant_state.shape),
        blocksize=quant_state.blocksize,
        quant_type=quant_state.quant_type,
    )
    if quant_state.nested:
        s2 = quant_state.state2
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=data.device).reshape(1)
        fields.update(absmax2=s2.absmax.float(), code2=s2.code.to(data.device).float(), offset=offset,
                      blocksize2=s2.blocksize)
    elif quant_state.absmax.dtype != torch.float32:
        fields["absmax"] = quant_state.absmax.float()
    return Packed4bit(**fields)
