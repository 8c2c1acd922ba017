"""bitsandbytes' two layouts of a 4-bit weight, and keeping every model qtune trains on the one autograd runs through.

bitsandbytes (0.48 and later) keeps a 4-bit weight in its canonical layout (two codes a byte in
row-major order, one absmax per block, optionally double-quantized), which ``matmul_4bit``
dequantizes and multiplies with autograd. On a CPU with AVX512-BF16 it has a second, inference-only
layout: the first forward of a ``Linear4bit`` in eval mode without grad repacks the weight in place
(``functional._convert_weight_packed_for_cpu``: codes regrouped in tiles of 32 rows, absmax
transposed and cast to bfloat16, double quantization undone) and marks its ``QuantState`` with
``packing_format_for_cpu``. From then on ``matmul_4bit`` calls ``gemv_4bit``, a bf16 kernel with no
autograd: the gradient through the frozen linear is silently dropped. ``qtune train`` evaluates
before it trains, so without care every 4-bit linear of the model would be repacked before step 1
and LoRA would train on a wrong gradient, on exactly those CPUs.

What qtune does:

- :func:`keep_training_layout`, run on every 4-bit model qtune loads, switches the repack off
  (the module flag ``support_avx512bf16_for_cpu``) and undoes a repack that already happened.
  bitsandbytes' own inverse leaves a non-double-quantized absmax transposed (dequantizing then
  gives garbage), so the absmax is put back in block order here. The bf16 rounding of absmax cannot
  be undone: a model that was repacked before qtune saw it differs from the loaded one by that.
- :func:`check_training_layout` refuses, in one line, a model that is not in the canonical layout;
  training calls it before the first step and after every evaluation.
- :func:`allow_cpu_inference_layout` turns the fast path back on where the CPU has it, for the
  interactive commands only (``generate``, ``chat``). Measured on SmolLM2-135M NF4 (2-core AVX512-BF16
  EPYC, float32 compute): batch-1 generation 25.3 vs 8.8 tokens/s, perplexity on the bundled text
  15.177 vs 15.184 (-0.04%), next-token log-probabilities within 0.006 nats on average, greedy
  tokens identical on 256 teacher-forced positions. ``eval`` and ``report`` keep the canonical path
  so that their figures are the same on every machine (the bf16 path moved the demo's eval loss
  from 3.1521 to 3.1503).
- :func:`describe` names the path and compute dtype a model's 4-bit layers run, for ``eval --json``.
"""

from __future__ import annotations

import sys

from qtune.compat.bitsandbytes import CPU_PACKED, REPACK_SWITCH, unpack_cpu_weight
from qtune.errors import QtuneError

PATH_CANONICAL = "bitsandbytes dequantize + matmul"
PATH_CPU_BF16 = "bitsandbytes AVX512-BF16 CPU inference kernel"


def linear4bit_layers(model) -> list:
    """Every bitsandbytes ``Linear4bit`` in ``model`` (peft's LoRA layers wrap them)."""
    if "bitsandbytes" not in sys.modules:  # no 4-bit layer can exist; importing it would cost a second
        return []
    from bitsandbytes.nn import Linear4bit

    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def _is_cpu_packed(layer) -> bool:
    return bool(getattr(layer.weight.quant_state, CPU_PACKED, False))


def _undo_cpu_packing(layer) -> None:
    """Put a repacked weight back in the canonical layout (absmax keeps its bf16 rounding)."""
    state = layer.weight.quant_state
    absmax = state.absmax  # (K / blocksize, N) bfloat16 while packed
    nested = state.original_nested
    layer.weight.data, state = unpack_cpu_weight(layer.weight.data, state)
    if not nested:  # bitsandbytes' inverse restores absmax only when it re-double-quantizes it
        state.absmax = absmax.T.reshape(-1).float()  # block order, float32 as quantize_4bit writes it
    layer.weight.quant_state = state
    layer.quant_state = state


def keep_training_layout(model) -> int:
    """Forbid the CPU repack in every 4-bit layer of ``model`` and undo it where it happened.

    Returns how many layers had to be unpacked (0 for every model qtune loads itself).
    """
    undone = 0
    for layer in linear4bit_layers(model):
        setattr(layer, REPACK_SWITCH, False)
        if _is_cpu_packed(layer):
            _undo_cpu_packing(layer)
            undone += 1
    return undone


def check_training_layout(model) -> None:
    """Refuse a model whose 4-bit weights are not in the layout autograd can train through."""
    packed = [layer for layer in linear4bit_layers(model) if _is_cpu_packed(layer)]
    armed = [layer for layer in linear4bit_layers(model) if getattr(layer, REPACK_SWITCH, False)]
    if packed or armed:
        what = f"{len(packed)} 4-bit layers are" if packed else f"{len(armed)} 4-bit layers would be"
        raise QtuneError(
            f"model: {what} repacked for bitsandbytes' CPU inference kernel, which has no gradient; "
            "load the model through qtune (or call qtune.models.bnb_layout.keep_training_layout) before training"
        )


def cpu_has_bf16_kernel() -> bool:
    """Whether bitsandbytes reports the AVX512-BF16 CPU kernel on this machine."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


def allow_cpu_inference_layout(model) -> bool:
    """Let bitsandbytes repack ``model``'s 4-bit layers for its CPU kernel (inference only).

    Returns whether the fast path is on: only for a model on CPU, on a CPU that has the kernel.
    """
    layers = linear4bit_layers(model)
    if not layers or layers[0].weight.device.type != "cpu" or not cpu_has_bf16_kernel():
        return False
    for layer in layers:
        setattr(layer, REPACK_SWITCH, True)
    return True


def describe(model) -> dict:
    """The path and compute dtype of ``model``'s 4-bit layers, or of its dense weights."""
    layers = linear4bit_layers(model)
    if not layers:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        return {"path": "dense", "compute_dtype": str(dtype).replace("torch.", "") if dtype else None}
    if any(_is_cpu_packed(m) or getattr(m, REPACK_SWITCH, False) for m in layers):
        return {"path": PATH_CPU_BF16, "compute_dtype": "bfloat16"}
    dtype = layers[0].compute_dtype
    return {"path": PATH_CANONICAL, "compute_dtype": str(dtype).replace("torch.", "") if dtype else "input dtype"}
