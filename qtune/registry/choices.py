"""Names recipe fields choose from whose features live in packages above the recipe schema.

Each is defined here once; the feature package imports it from here (kernels.dispatch resolves
``train.kernels``, data.sources reads ``hf:`` sources), so the schema never imports a feature package.
"""

from __future__ import annotations

KERNEL_MODES: dict[str, str] = {  # train.kernels
    "auto": "the path measured fastest on that kind of device (qtune/kernels/measured.json; else bitsandbytes)",
    "blocks": "one autograd node per LoRA block (q/k/v together, the gated MLP with its activation), the other "
              "linears fused one by one; Triton dequantization on CUDA, the torch reference elsewhere",
    "triton": "fused QLoRA linear with the Triton 4-bit dequantization kernel",
    "bitsandbytes": "peft's LoRA layers over bitsandbytes' Linear4bit, unchanged",
}
# The memory switches of the train section (docs/kernels.md, "Memory switches"). ``auto`` is the first choice after
# it (today's behaviour) unless qtune/kernels/measured.json records a measured win on that device kind.
FROZEN_DTYPES: dict[str, str] = {  # train.frozen_dtype
    "auto": "float32 unless a measurement on that kind of device says compute (qtune/kernels/measured.json)",
    "float32": "peft's prepare_model_for_kbit_training upcast: frozen embeddings, lm_head and norms in float32, so the "
               "residual stream (and every checkpointed layer input) is float32",
    "compute": "the frozen embeddings, lm_head and norms stay in quant.compute_dtype (bf16 on GPU); half the bytes per "
               "checkpointed layer input",
}
CROSS_ENTROPY_MODES: dict[str, str] = {  # train.cross_entropy
    "auto": "torch unless a measurement on that kind of device says liger (qtune/kernels/measured.json)",
    "torch": "transformers' lm_head then cross-entropy: the (tokens x vocab) logits are materialised in float32",
    "liger": "liger-kernel's fused linear + cross-entropy, chunk by chunk: no (tokens x vocab) tensor is kept",
}
RMS_NORM_MODES: dict[str, str] = {  # train.rms_norm
    "auto": "torch unless a measurement on that kind of device says liger",
    "torch": "transformers' RMSNorm modules",
    "liger": "liger-kernel's fused RMSNorm (Triton) on each norm of the model instance; CUDA only",
}
ROPE_MODES: dict[str, str] = {  # train.rope
    "auto": "torch unless a measurement on that kind of device says liger",
    "torch": "transformers' apply_rotary_pos_emb",
    "liger": "liger-kernel's fused rotary embedding (Triton) in each attention module of the model instance",
}
COMPILE_MODES: dict[str, str] = {  # train.compile
    "auto": "off unless a measurement on that kind of device says layers",
    "off": "eager PyTorch",
    "layers": "torch.compile of each decoder layer in place (regional compilation: one layer compiled, the others reuse it)",
}
LIGER_SWITCHES = ("cross_entropy", "rms_norm", "rope")  # train fields with a liger choice: need qtune[fast]
HUB_PREFIX = "hf:"  # data.train / data.eval: a Hugging Face Hub dataset, hf:<org/name>
