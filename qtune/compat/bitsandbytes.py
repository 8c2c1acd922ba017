"""bitsandbytes internals qtune relies on (see :mod:`qtune.models.bnb_layout` for why).

- ``functional._convert_weight_packed_for_cpu_inverse(packed_weight, quant_state)``: undoes the AVX512-BF16 CPU
  repack of a 4-bit weight (bitsandbytes 0.48 added the repack; it has no public inverse).
- ``QuantState.packing_format_for_cpu``: set on a repacked weight's state.
- ``Linear4bit.support_avx512bf16_for_cpu``: the layer repacks its weight on its next eval forward while it is true.
"""

from __future__ import annotations

from qtune.compat.versions import require

SUPPORTED = ">=0.48,<0.51"
VERSION = require("bitsandbytes", SUPPORTED, __name__)
CPU_PACKED = "packing_format_for_cpu"  # QuantState flag: the weight is in the AVX512-BF16 layout
REPACK_SWITCH = "support_avx512bf16_for_cpu"  # Linear4bit flag: repack on the next eval forward
TOUCHES = [
    ("bitsandbytes.functional._convert_weight_packed_for_cpu_inverse", ["packed_weight", "quant_state"]),
]


def unpack_cpu_weight(weight, state):
    """(weight, state) of a CPU-repacked 4-bit weight back in bitsandbytes' canonical layout."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    return _convert_weight_packed_for_cpu_inverse(weight, state)
