"""Names recipe fields choose from whose features live in packages above the recipe schema.

Each is defined here once; the feature package imports it from here (kernels.dispatch resolves
``train.kernels``, data.sources reads ``hf:`` sources), so the schema never imports a feature package.
"""

from __future__ import annotations

KERNEL_MODES: dict[str, str] = {  # train.kernels
    "auto": "the path measured fastest on the device: bitsandbytes (see qtune.kernels.dispatch)",
    "triton": "fused QLoRA linear with the Triton 4-bit dequantization kernel",
    "bitsandbytes": "peft's LoRA layers over bitsandbytes' Linear4bit, unchanged",
}
HUB_PREFIX = "hf:"  # data.train / data.eval: a Hugging Face Hub dataset, hf:<org/name>
