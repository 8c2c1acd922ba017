"""``train.kernels``: which code runs the 4-bit LoRA layers (the choices, :data:`KERNEL_MODES`, are named in
:mod:`qtune.registry.choices`); torch, triton and peft load only inside :func:`resolve` and :func:`apply`.

Resolution, first match wins: ``bitsandbytes`` keeps peft + bitsandbytes as they are; ``triton`` uses the fused
QLoRA linear with the Triton dequantization kernel (a CUDA GPU, or Triton's CPU interpreter under
``TRITON_INTERPRET=1`` for tests); ``blocks`` runs whole LoRA blocks as one autograd node each
(:mod:`qtune.kernels.blocks`; Triton dequantization on CUDA, the torch reference on CPU); ``auto`` is the mode
:func:`measured` records as fastest on this kind of device, if it beat bitsandbytes there, else ``bitsandbytes``.

The records are data, :data:`MEASURED_FILE` (``qtune/kernels/measured.json``), written by
``scripts/bench_train_step.py --record``, which trains each mode through :mod:`qtune.train.steps` (the code
``qtune train`` runs) and writes each ratio with the device, the library versions and the git commit beside it.

On one H100 (``scripts/gpu_check.sh``, since folded into ``scripts/gpu_all.sh``) the Triton path trained a 7B-shaped
NF4 model at 0.94-0.96x bitsandbytes'
tokens/s (its dequantization is faster, 1.1-2.1x, but the step is matmul-bound). ``blocks`` has not been measured
on a GPU yet (``scripts/gpu_all.sh`` does it, step train_step_7b), so ``auto`` picks ``bitsandbytes`` everywhere today.

The memory switches (``train.frozen_dtype``, ``cross_entropy``, ``rms_norm``, ``rope``; choices in
:mod:`qtune.registry.choices`) resolve the same way through :func:`resolve_switch`: ``auto`` is today's choice
(:data:`TODAY`) unless :func:`measured` records a faster one on that device kind — none is recorded yet.
``liger`` needs liger-kernel (``qtune[fast]``) and, like ``triton``, a CUDA GPU or ``TRITON_INTERPRET=1``; liger's
RMSNorm kernel does not run under Triton's CPU interpreter (liger-kernel 0.8.5, triton 3.9: it calls ``.to`` on the
float ``eps``), so ``rms_norm: liger`` needs CUDA.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from pathlib import Path

from qtune.errors import QtuneError, missing_dependency
from qtune.registry.choices import (COMPILE_MODES, CROSS_ENTROPY_MODES, FROZEN_DTYPES, KERNEL_MODES, RMS_NORM_MODES,
                                    ROPE_MODES)

MEASURED_FILE = Path(__file__).with_name("measured.json")


def device_kind(device: str) -> str:
    """``cpu``, or ``cuda smXY`` for the current CUDA device's compute capability."""
    if device != "cuda":
        return device
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"cuda sm{major}{minor}"


# train.<switch> -> its choices, and what ``auto`` means while nothing better is measured (today's behaviour).
SWITCHES: dict[str, dict[str, str]] = {"kernels": KERNEL_MODES, "frozen_dtype": FROZEN_DTYPES,
                                       "cross_entropy": CROSS_ENTROPY_MODES, "rms_norm": RMS_NORM_MODES, "rope": ROPE_MODES,
                                       "compile": COMPILE_MODES}
TODAY: dict[str, str] = {"kernels": "bitsandbytes", "frozen_dtype": "float32", "cross_entropy": "torch",
                         "rms_norm": "torch", "rope": "torch", "compile": "off"}


@functools.cache
def measured(path: Path = MEASURED_FILE) -> dict[str, dict[str, dict[str, float]]]:
    """train.<switch> -> device kind -> {choice: tokens/s of the choice / tokens/s of TODAY's}, from the figures of
    ``path`` whose mode differs from the baseline in that one switch; the smallest ratio recorded at any shape or
    micro batch counts (a choice enters ``auto`` only where it was faster at every measured shape)."""
    table: dict[str, dict[str, dict[str, float]]] = {switch: {} for switch in SWITCHES}
    for f in json.loads(path.read_text(encoding="utf-8"))["figures"]:
        if len(f["switches"]) != 1:  # a combination (the bench's fast mode) says nothing about one switch
            continue
        (switch, choice), = f["switches"].items()
        ratios = table[switch].setdefault(f["device_kind"], {})
        ratios[choice] = min(ratios.get(choice, f["ratio"]), f["ratio"])
    return table


def auto_mode(kind: str, ratios_by_kind: dict[str, dict[str, float]] | None = None, default: str = "bitsandbytes") -> str:
    """The choice measured fastest on ``kind`` (``ratios_by_kind``, default the ``train.kernels`` records), if faster
    than ``default``; else ``default``."""
    ratios = (measured()["kernels"] if ratios_by_kind is None else ratios_by_kind).get(kind, {})
    best = max(ratios, key=ratios.get, default=None)
    return best if best is not None and ratios[best] > 1.0 else default


def resolve_switch(switch: str, choice: str, device: str | None) -> str:
    """``train.<switch>``'s ``choice`` for ``device`` (None: not known yet, only what needs no device is checked)."""
    if choice not in SWITCHES[switch]:
        raise QtuneError(f"train.{switch}: '{choice}' is not one of {', '.join(SWITCHES[switch])}")
    if choice == "auto":
        return choice if device is None else auto_mode(device_kind(device), measured()[switch], TODAY[switch])
    if choice == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            raise missing_dependency(f"train.{switch}: 'liger'", "liger-kernel", "fast")
        if device is not None and device != "cuda" and switch == "rms_norm":
            raise QtuneError(f"train.rms_norm: 'liger' needs a CUDA GPU (running on {device}): liger-kernel's RMSNorm "
                             "kernel does not run under Triton's CPU interpreter; use train.rms_norm=torch or auto")
        if device is not None and device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise QtuneError(f"train.{switch}: 'liger' needs a CUDA GPU (running on {device}); use train.{switch}=torch "
                             "or auto (TRITON_INTERPRET=1 runs liger's kernels on CPU, slowly, for testing)")
    return choice


def planned_choice(switch: str, choice: str, device: str) -> str:
    """What ``choice`` resolves to for the memory planner, which knows the device type but not (without a GPU at
    hand) its kind: ``auto`` is what is measured on ``cpu``; on ``cuda`` today's choice."""
    if choice != "auto":
        return choice
    return auto_mode("cpu", measured()[switch], TODAY[switch]) if device == "cpu" else TODAY[switch]


def check_switches(train, device: str | None) -> dict[str, str]:
    """Every memory switch of the ``train`` section resolved for ``device``; the first that cannot run raises."""
    switches = {name: resolve_switch(name, getattr(train, name), device) for name in SWITCHES if name != "kernels"}
    kernels = train.kernels if device is None else resolve(train.kernels, device)
    if switches["compile"] == "layers" and kernels in ("blocks", "triton"):
        raise QtuneError(f"train.compile: 'layers' runs with train.kernels=bitsandbytes only (given {train.kernels}): the "
                         "fused kernels are bound to each layer's modules, so dynamo recompiles every layer and breaks "
                         "its graph at them (SmolLM2: past dynamo's recompile limit, later layers eager); set "
                         "train.kernels=bitsandbytes or "
                         "train.compile=off")
    return switches


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
    import qtune.kernels.blocks as blocks  # the modules themselves, not the package face (which imports this one)
    import qtune.kernels.peft_layers as peft_layers

    resolved = resolve(mode, device)
    blocks.unfuse(model)
    if resolved == "blocks":
        blocks.fuse(model, dequant_backend(resolved, device))
    elif resolved == "triton":
        peft_layers.fuse(model, "triton")
    return resolved
