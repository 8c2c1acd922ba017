"""How much a loaded model weighs: bits per weight of its linears, serialized size, load memory.

- **Bits per weight** of the decoder's linear layers (``lm_head`` and LoRA matrices excluded):
  the bytes of each linear's state dict — packed weights *plus* their quantization state
  (absmax, code book, nested scales, int8 row scales) — times 8, over ``in_features *
  out_features``. NF4 with double quantization comes out near ``4 + 8/64 + 32/(64*256) ≈ 4.13``,
  INT8 near ``8 + 32/in_features``, bf16 at 16.
- **Size** is the byte count ``save_pretrained`` would write as safetensors payload: every state
  dict tensor once (tied tensors share storage and are counted once).
- **Peak load memory** is :class:`qtune.memory.PeakMemory` over the load, the measure ``train`` and
  ``plan --measure`` report: on CUDA ``max_memory_allocated`` above the allocation before loading; on
  CPU the peak RSS (``VmHWM``, reset first) less the RSS before loading and the file pages mapped since,
  the loaded parameters that live in a mapped checkpoint counted back. Memory freed but not returned
  to the OS by an earlier load would hide inside the RSS before, so the report loads each stage in a
  fresh process.
"""

from __future__ import annotations


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


class LoadMemory:
    """Peak memory while loading: ``with LoadMemory(device) as m: model = load(); m.holds(model)``, then ``m.bytes``."""

    def __init__(self, device: str):
        from qtune.memory import PeakMemory

        self.meter = PeakMemory(device)
        self.kind = self.meter.kind
        self.bytes = 0

    def __enter__(self):
        self.meter.begin()
        self.kind = self.meter.kind
        return self

    def holds(self, model) -> None:
        self.meter.holds(model)

    def __exit__(self, *exc):
        self.bytes = self.meter.peak()
        return False
