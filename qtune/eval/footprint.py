"""How much a loaded model weighs: bits per weight of its linears, serialized size, load memory.

- **Bits per weight** of the decoder's linear layers (``lm_head`` and LoRA matrices excluded):
  the bytes of each linear's state dict — packed weights *plus* their quantization state
  (absmax, code book, nested scales, int8 row scales) — times 8, over ``in_features *
  out_features``. NF4 with double quantization comes out near ``4 + 8/64 + 32/(64*256) ≈ 4.13``,
  INT8 near ``8 + 32/in_features``, bf16 at 16.
- **Size** is the byte count ``save_pretrained`` would write as safetensors payload: every state
  dict tensor once (tied tensors share storage and are counted once).
- **Peak load memory** on CUDA is ``max_memory_allocated`` after loading (reset before). On CPU it
  is the growth of peak resident memory while loading: Linux's ``VmHWM`` is reset to the current
  RSS through ``/proc/self/clear_refs`` first, then ``VmHWM - RSS before`` is read after. (Not
  ``ru_maxrss``: a spawned child inherits its parent's peak through exec.) Memory freed but not
  returned to the OS by an earlier load would hide inside ``RSS before``, so the report loads
  each stage in a fresh process.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _tensor_bytes(t) -> int:
    return t.numel() * t.element_size()


def linear_bits_per_weight(model) -> float:
    """Storage bits per logical weight of the model's (possibly quantized) linear layers."""
    import torch

    stored, weights = 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or "lora_" in name or name.split(".")[-1] == "lm_head":
            continue
        stored += sum(_tensor_bytes(t) for t in module.state_dict().values() if isinstance(t, torch.Tensor))
        weights += module.in_features * module.out_features
    return stored * 8 / weights if weights else float("nan")


def state_dict_bytes(model) -> int:
    """Bytes of every tensor in ``model.state_dict()``, shared storage counted once."""
    import torch

    seen, total = set(), 0
    for t in model.state_dict().values():
        if not isinstance(t, torch.Tensor):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += _tensor_bytes(t)
    return total


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


class LoadMemory:
    """Peak memory while loading: ``with LoadMemory(device) as m: load(); m.bytes``."""

    def __init__(self, device: str):
        self.device = device
        self.bytes = 0
        self.kind = "cuda_max_allocated" if device == "cuda" else "peak_rss_growth"

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        elif _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
            self._start = _proc_status_kib("VmRSS") * 1024
        else:  # no /proc: the process's own peak, meaningful only in a fresh process
            self.kind = "process_max_rss_growth"
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.bytes = torch.cuda.max_memory_allocated() - self._start
        elif self.kind == "peak_rss_growth":
            self.bytes = _proc_status_kib("VmHWM") * 1024 - self._start
        else:
            self.bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._start
        return False
