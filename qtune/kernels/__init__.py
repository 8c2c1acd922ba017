"""4-bit kernels on bitsandbytes' own storage, each Triton kernel beside its pure-torch reference.

- :mod:`qtune.kernels.storage`: the NF4/FP4 storage format, named (packed nibbles, nested absmax).
- :mod:`qtune.kernels.dequant`: dequantization, Triton and reference (bit-exact with bitsandbytes).
- :mod:`qtune.kernels.gemv`: batch-1 4-bit GEMV for inference.
- :mod:`qtune.kernels.qlora_linear`: the fused QLoRA linear (autograd Function, gradients derived).
- :mod:`qtune.kernels.peft_layers`: routing peft's 4-bit LoRA layers through it.
- :mod:`qtune.kernels.dispatch`: the ``train.kernels`` modes and :func:`apply`.

Importing this package imports neither torch nor triton; nothing is patched until :func:`apply`.
"""

from qtune.kernels.dispatch import KERNEL_MODES, apply, resolve

__all__ = ["KERNEL_MODES", "apply", "resolve"]
