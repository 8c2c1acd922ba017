"""``train.kernels``: which code runs the 4-bit LoRA layers (the choices, :data:`KERNEL_MODES`, are named in
:mod:`qtune.registry.choices`); torch, triton and peft load only inside :func:`apply`.

Resolution, first match wins: ``bitsandbytes`` keeps peft + bitsandbytes as they are; ``triton``
uses the fused QLoRA linear with the Triton dequantization kernel (a CUDA GPU, or Triton's CPU
interpreter under ``TRITON_INTERPRET=1`` for tests); ``auto`` is the path measured fastest, which is
``bitsandbytes`` everywhere today. On one H100 (``scripts/gpu_check.sh``) the Triton path trained a 7B-shaped
NF4 model at 0.94-0.96x bitsandbytes' tokens/s (its dequantization is faster, 1.1-2.1x, but the step is
matmul-bound), and a 60-step tiny-model run at 0.59x (Triton's first-call compile included); on CPU it is the torch
reference, slower again.
"""

from __future__ import annotations

import importlib.util
import os

from qtune.errors import QtuneError, missing_dependency
from qtune.registry.choices import KERNEL_MODES


def resolve(mode: str, device: str) -> str:
    """``mode`` for ``device`` as ``triton`` or ``bitsandbytes``; an error if it cannot run there."""
    if mode not in KERNEL_MODES:
        raise QtuneError(f"train.kernels: '{mode}' is not one of {', '.join(KERNEL_MODES)}")
    if mode == "auto":
        return "bitsandbytes"
    if mode == "triton" and device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise QtuneError(
            f"train.kernels: 'triton' needs a CUDA GPU (running on {device}); use train.kernels=auto or "
            "bitsandbytes (TRITON_INTERPRET=1 runs the kernels on CPU, slowly, for testing)"
        )
    if mode == "triton" and importlib.util.find_spec("triton") is None:
        raise missing_dependency("train.kernels: 'triton'", "triton", "triton")
    return mode


def apply(model, mode: str, device: str) -> str:
    """Route ``model``'s 4-bit LoRA layers through ``mode``'s kernels; returns the resolved mode."""
    from qtune.kernels import peft_layers

    resolved = resolve(mode, device)
    if resolved == "triton":
        peft_layers.fuse(model, "triton")
    else:
        peft_layers.unfuse(model)
    return resolved
