"""Names recipe fields choose from whose features live in packages above the recipe schema.

Each is defined here once; the feature package imports it from here (kernels.dispatch resolves
``train.kernels``, data.sources reads ``hf:`` sources), so the schema never imports a feature package.
"""

from __future__ import annotations

KERNEL_MODES: dict[str, str] = {  # train.kernels
    "auto": "the path measured fastest on that kind of device (qtune.kernels.dispatch.MEASURED; else bitsandbytes)",
    "blocks": "one autograd node per LoRA block (q/k/v together, the gated MLP with its activation), the other "
              "linears fused one by one; Triton dequantization on CUDA, the torch reference elsewhere",
    "triton": "fused QLoRA linear with the Triton 4-bit dequantization kernel",
    "bitsandbytes": "peft's LoRA layers over bitsandbytes' Linear4bit, unchanged",
}
HUB_PREFIX = "hf:"  # data.train / data.eval: a Hugging Face Hub dataset, hf:<org/name>
