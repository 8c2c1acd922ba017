"""4-bit kernels on bitsandbytes' own storage, each Triton kernel beside its pure-torch reference.

- :mod:`qtune.kernels.storage`: the NF4/FP4 storage format, named (packed nibbles, nested absmax).
- :mod:`qtune.kernels.dequant`: dequantization, Triton and reference (bit-exact with bitsandbytes).
- :mod:`qtune.kernels.gemv`: batch-1 4-bit GEMV for inference.
- :mod:`qtune.kernels.qlora_linear`: the fused QLoRA linear (autograd Function, gradients derived).
- :mod:`qtune.kernels.peft_layers`: routing peft's 4-bit LoRA layers through it.
- :mod:`qtune.kernels.dispatch`: the ``train.kernels`` modes and :func:`apply`; the memory switches' resolution.
- :mod:`qtune.kernels.liger`: liger-kernel's fused cross-entropy, RMSNorm and RoPE on one model instance.

Importing this package imports neither torch, triton nor liger-kernel; nothing is patched until :func:`apply`
(and :func:`qtune.kernels.liger.apply`).
"""

from qtune.kernels.dispatch import KERNEL_MODES, apply, resolve

__all__ = ["KERNEL_MODES", "apply", "resolve"]
