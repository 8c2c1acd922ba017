"""Which device a command runs on: one resolver for ``train.device``, ``export.device`` and every ``--device``.

``auto`` is the CUDA GPU when torch sees one, else the CPU; ``cuda`` without a visible GPU is refused in one
line naming the option. torch is imported only when a device is resolved, never at import time.
"""

from __future__ import annotations

from qtune.errors import QtuneError


def resolve_device(choice: str, option: str = "--device") -> str:
    """``choice`` (auto, cpu, cuda) as ``cpu`` or ``cuda``; ``option`` names the setting in the error."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        fix = f"{option}=cpu or auto" if "." in option else f"{option} cpu or auto"  # a recipe field, or a flag
        raise QtuneError(f"{option}: 'cuda' was asked for but no CUDA GPU is visible; use {fix}")
    return choice
