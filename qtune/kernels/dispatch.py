"""``train.kernels``: which code runs the 4-bit LoRA layers (the choices, :data:`KERNEL_MODES`, are named in
:mod:`qtune.registry.choices`); torch, triton and peft load only inside :func:`resolve` and :func:`apply`.

Resolution, first match wins: ``bitsandbytes`` keeps peft + bitsandbytes as they are; ``triton`` uses the fused
QLoRA linear with the Triton dequantization kernel (a CUDA GPU, or Triton's CPU interpreter under
``TRITON_INTERPRET=1`` for tests); ``blocks`` runs whole LoRA blocks as one autograd node each
(:mod:`qtune.kernels.blocks`; Triton dequantization on CUDA, the torch reference on CPU); ``auto`` is the mode
:data:`MEASURED` records as fastest on this kind of device, if it beat bitsandbytes there, else ``bitsandbytes``.

On one H100 (``scripts/gpu_check.sh``) the Triton path trained a 7B-shaped NF4 model at 0.94-0.96x bitsandbytes'
tokens/s (its dequantization is faster, 1.1-2.1x, but the step is matmul-bound). ``blocks`` has not been measured
on a GPU yet (``scripts/gpu_fast_path_check.sh`` does it), so ``auto`` picks ``bitsandbytes`` everywhere today.
"""

from __future__ import annotations

import importlib.util
import os

from qtune.errors import QtuneError, missing_dependency
from qtune.registry.choices import KERNEL_MODES

# Device kind -> {mode: tokens/s of the mode / tokens/s of bitsandbytes}, as scripts/bench_train_step.py printed it
# side by side on that kind of device (7B shape, micro batch 4 x 1024). A mode enters ``auto`` only through here.
MEASURED: dict[str, dict[str, float]] = {
    "cuda sm90": {"triton": 0.96},  # H100 80GB HBM3, docs/kernels.md
}


def device_kind(device: str) -> str:
    """``cpu``, or ``cuda smXY`` for the current CUDA device's compute capability."""
    if device != "cuda":
        return device
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"cuda sm{major}{minor}"


def auto_mode(kind: str, measured: dict[str, dict[str, float]] = MEASURED) -> str:
    """The mode ``measured`` fastest on ``kind``, if faster than bitsandbytes; else ``bitsandbytes``."""
    ratios = measured.get(kind, {})
    best = max(ratios, key=ratios.get, default=None)
    return best if best is not None and ratios[best] > 1.0 else "bitsandbytes"


def resolve(mode: str, device: str) -> str:
    """``mode`` for ``device`` as ``blocks``, ``triton`` or ``bitsandbytes``; an error if it cannot run there."""
    if mode not in KERNEL_MODES:
        raise QtuneError(f"train.kernels: '{mode}' is not one of {', '.join(KERNEL_MODES)}")
    if mode == "auto":
        return auto_mode(device_kind(device))
    if mode == "triton" and device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise QtuneError(
            f"train.kernels: 'triton' needs a CUDA GPU (running on {device}); use train.kernels=auto, blocks or "
            "bitsandbytes (TRITON_INTERPRET=1 runs the kernels on CPU, slowly, for testing)"
        )
    if (mode == "triton" or (mode == "blocks" and device == "cuda")) and importlib.util.find_spec("triton") is None:
        raise missing_dependency(f"train.kernels: '{mode}'", "triton", "triton")
    return mode


def dequant_backend(mode: str, device: str) -> str:
    """The dequantization backend a resolved fused mode uses on ``device``."""
    return "triton" if mode == "triton" or device == "cuda" else "torch"


def apply(model, mode: str, device: str) -> str:
    """Route ``model``'s 4-bit LoRA layers through ``mode``'s kernels; returns the resolved mode."""
    from qtune.kernels import blocks, peft_layers

    resolved = resolve(mode, device)
    blocks.unfuse(model)
    if resolved == "blocks":
        blocks.fuse(model, dequant_backend(resolved, device))
    elif resolved == "triton":
        peft_layers.fuse(model, "triton")
    return resolved
