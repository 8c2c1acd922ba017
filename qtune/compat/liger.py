"""liger-kernel internals qtune relies on.

- ``transformers.monkey_patch._patch_rms_norm_module(module, offset, eps, casting_mode, in_place)``: routes one RMSNorm
  module through liger's kernel. liger's public ``apply_liger_kernel_to_*`` patch classes process-wide; qtune patches
  the one model instance it trains.
- The instance attributes that patch sets (:data:`RMS_NORM_PATCHED`), which :func:`qtune.kernels.liger.remove` pops.
"""

from __future__ import annotations

from qtune.compat.versions import require

SUPPORTED = ">=0.8.5,<0.9"
VERSION = require("liger-kernel", SUPPORTED, __name__)
RMS_NORM_PATCHED = ("forward", "extra_repr", "_get_name")
TOUCHES = [
    ("liger_kernel.transformers.monkey_patch._patch_rms_norm_module", ["module", "offset", "casting_mode", "in_place"]),
]


def patch_rms_norm(module, offset: float, casting_mode: str, in_place: bool) -> None:
    from liger_kernel.transformers.monkey_patch import _patch_rms_norm_module

    _patch_rms_norm_module(module, offset=offset, casting_mode=casting_mode, in_place=in_place)
