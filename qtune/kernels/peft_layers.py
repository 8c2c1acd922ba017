"""Route peft's 4-bit LoRA layers (``peft.tuners.lora.bnb.Linear4bit``) through the fused linear.

:func:`fuse` gives each such layer an instance ``forward`` that calls
:func:`qtune.kernels.qlora_linear.qlora_linear` with the chosen dequantization backend, and keeps
peft's own forward for every case the fused path does not cover (adapters disabled or merged,
several active adapters, DoRA or another variant, per-row ``adapter_names``, a weight
bitsandbytes has repacked for its CPU inference kernel). With the Triton backend, a single input row
without autograd (generation) goes through the batch-1 GEMV kernel instead of dequantize + matmul.
:func:`unfuse` restores peft's forward.
The casts follow peft + bitsandbytes: the base product in the layer's compute dtype, the adapter in
its weights' dtype, the sum in the input's dtype.
"""

from __future__ import annotations

from functools import partial

import torch

from qtune.kernels.qlora_linear import qlora_linear
from qtune.kernels.storage import Packed4bit, from_quant_state

_ORIGINAL = "_qtune_original_forward"
_PACKED = "_qtune_packed"


def _lora_4bit_layers(model):
    from peft.tuners.lora.bnb import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def single_adapter(layer, args, kwargs) -> str | None:
    """The one vanilla-LoRA adapter this call can fuse, or None to defer to peft."""
    if layer.disable_adapters or layer.merged or args or kwargs:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    if getattr(layer.base_layer.weight.quant_state, "packing_format_for_cpu", False):
        return None
    return active[0]


def packed_weight(layer) -> Packed4bit:
    """The layer's storage as :class:`Packed4bit`, rebuilt only when the weight moves."""
    weight = layer.base_layer.weight
    cached = getattr(layer, _PACKED, None)
    if cached is None or cached.packed.data_ptr() != weight.data_ptr():
        cached = from_quant_state(weight.data, weight.quant_state)
        setattr(layer, _PACKED, cached)
    return cached


def _gemv_forward(x, x_lora, weight: Packed4bit, lora_a, lora_b, scaling: float, bias, out_dtype):
    """One row, no autograd (generation): the batch-1 GEMV kernel for the base, then the adapter."""
    from qtune.kernels.gemv import gemv_triton

    base = gemv_triton(x, weight)
    if bias is not None:
        base = base + bias
    return base.to(out_dtype) + ((x_lora @ lora_a.t() @ lora_b.t()) * scaling).to(out_dtype)


def _fused_forward(layer, x: torch.Tensor, *args, backend: str, dequantize, **kwargs) -> torch.Tensor:
    adapter = single_adapter(layer, args, kwargs)
    if adapter is None:
        return getattr(layer, _ORIGINAL)(x, *args, **kwargs)
    base = layer.base_layer
    compute = base.compute_dtype or x.dtype
    lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    # like peft: under autocast the adapter takes x as it comes, otherwise x in the adapter's dtype
    x_lora = layer.lora_dropout[adapter](x if torch.is_autocast_enabled(x.device.type) else x.to(lora_a.dtype))
    bias = None if base.bias is None else base.bias.to(compute)
    weight = packed_weight(layer)
    one_row = x.numel() == x.shape[-1] and weight.shape[1] % weight.blocksize == 0
    if backend == "triton" and one_row and not torch.is_grad_enabled():
        return _gemv_forward(x.to(compute), x_lora, weight, lora_a, lora_b, layer.scaling[adapter], bias, x.dtype)
    return qlora_linear(x.to(compute), x_lora, weight, dequantize, lora_a, lora_b, layer.scaling[adapter], bias,
                        x.dtype)


def fuse(model, backend: str) -> int:
    """Send every 4-bit LoRA layer of ``model`` through the fused linear; returns how many."""
    from qtune.kernels.dequant import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend: '{backend}' is not a dequantization backend (allowed: {', '.join(BACKENDS)})")
    layers = _lora_4bit_layers(model)
    for layer in layers:
        if not hasattr(layer, _ORIGINAL):
            setattr(layer, _ORIGINAL, layer.forward)
        layer.forward = partial(_fused_forward, layer, backend=backend, dequantize=BACKENDS[backend])
    return len(layers)


def unfuse(model) -> int:
    """Give every fused layer peft's own forward back; returns how many."""
    layers = [m for m in _lora_4bit_layers(model) if hasattr(m, _ORIGINAL)]
    for layer in layers:
        del layer.forward
        delattr(layer, _ORIGINAL)
        if hasattr(layer, _PACKED):
            delattr(layer, _PACKED)
    return len(layers)
