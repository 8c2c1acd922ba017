"""``quant.method``: how the base's linear layers are stored while training, each defined here once.

The recipe schema's choices, ``qtune eval --quant``, the memory planner, merge and the distributed rules read
this; :mod:`qtune.models.load` builds each method's ``BitsAndBytesConfig`` (one builder per name here).
"""

from __future__ import annotations

QUANT_METHODS: dict[str, str] = {
    "nf4": "4-bit NormalFloat (bitsandbytes), the QLoRA paper's data type",
    "fp4": "4-bit float (bitsandbytes)",
    "int8": "LLM.int8 (bitsandbytes): int8 rows, one absmax per row, outlier columns in float16",
    "none": "not quantized: the base in model.dtype (LoRA on a 16/32-bit base)",
}
FOUR_BIT = ("nf4", "fp4")  # packed two weights a byte, with absmax per block (and double quantization)
QUANTIZED = tuple(m for m in QUANT_METHODS if m != "none")  # what a load can quantize to (qtune eval --quant)


def weight_bits(method: str) -> int:
    """Bits per stored weight of ``method``'s linears (16 for an unquantized base, whatever its dtype)."""
    return 4 if method in FOUR_BIT else 8 if method == "int8" else 16
