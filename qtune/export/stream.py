"""Streamed export: the merged model, one decoder layer at a time, into every requested format.

::

    calibration tokens -> embeddings -> inputs of layer 0          (once, shared by the quantizers)
    for each decoder layer i:
        merged = {name: W_base + scaling · B A}                     # float32, on the export device
        merged target:  write merged in float16
        each quantizer (gptq, awq), with its own activations:
            layer = materialize(layer i of the meta skeleton, merged)
            quantize it (qtune.export.gptq / awq, exactly as sequential.sweep does in memory)
            inputs = run_layer(layer, inputs)                       # from the quantized layer
            write the packed linears and the layer's other tensors (AWQ folded scales into norms)
            release(layer)                                          # back to the meta device

So memory holds one layer in float32 (plus one working copy per quantizer, one at a time), the
activations of the calibration tokens and each target's pending shard (one layer: every target
writes one shard per decoder layer) — never the model. Every
target writes into a folder the caller owns (a temporary one, renamed when all is done).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from qtune.errors import QtuneError
from qtune.export.layerwise import (MergedWeights, materialize, materialize_outer, outer_parts, release,
                                    return_freed_memory, skeleton)
from qtune.export.sequential import capture_layer_inputs, decoder_layers, layer_groups, run_layer
from qtune.export.shards import ShardWriter

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class _Shards:
    """A target's shard writer over its ``folder``, flushed once per layer."""

    def __post_init__(self):
        self.writer = ShardWriter(self.folder)

    def flush(self) -> None:
        self.writer.flush()


@dataclass
class MergedTarget(_Shards):
    folder: Path
    dtype: str = "float16"
    writer: ShardWriter = field(init=False)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        out = {}
        for name, t in tensors.items():
            if self.dtype == "float16" and t.numel() and t.abs().max().item() > torch.finfo(torch.float16).max:
                raise QtuneError(f"--dtype: weight '{name}' overflows float16 (max {t.abs().max().item():.3g}); use --dtype bfloat16")
            out[name] = t.to(DTYPES[self.dtype])
        self.writer.add(out)

    def layer(self, prefix: str, layer, merged: dict[str, torch.Tensor], groups, device) -> None:
        self.add({f"{prefix}.{k}": v for k, v in merged.items()})


@dataclass
class QuantTarget(_Shards):
    fmt: str
    quantize_layer: Callable
    folder: Path
    inputs: list = field(default_factory=list)
    seconds: float = 0.0
    writer: ShardWriter = field(init=False)

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        self.writer.add({k: v.to(torch.float16) for k, v in tensors.items()})

    def layer(self, prefix: str, layer, merged: dict[str, torch.Tensor], groups, device) -> None:
        from qtune.export.packing import PACKERS

        t = time.perf_counter()
        materialize(layer, merged, device)
        quantized = self.quantize_layer(layer, self.inputs, groups)
        self.inputs = run_layer(layer, self.inputs)
        self.seconds += time.perf_counter() - t
        state = {f"{prefix}.{k}": v.to(torch.float16) for k, v in layer.state_dict().items()
                 if k.removesuffix(".weight") not in quantized}
        for name, w in quantized.items():
            state.update({f"{prefix}.{name}.{k}": v for k, v in PACKERS[self.fmt](w.to("cpu")).items()})
        self.writer.add(state)
        release(layer)


def stream_export(weights: MergedWeights, targets: list, calib: torch.Tensor | None, batch_size: int = 8,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Run every decoder layer of ``weights`` through ``targets``; ``calib`` (n, T) token ids for the quantizers."""
    device = weights.device
    model = skeleton(weights.config)
    prefix, layers = decoder_layers(model)
    quant = [t for t in targets if isinstance(t, QuantTarget)]
    groups = layer_groups(model) if quant else ()
    tied_head = f"{weights.head}.weight" if weights.tied else None
    outer = outer_parts(model)
    for name, module in outer:  # embeddings, final norm, head: one at a time, written by every target
        keys = [f"{name}.{k}" for k in module.state_dict()]
        for key in keys:
            if key == tied_head:
                continue
            t = weights(key)
            for target in targets:
                target.add({key: t})
            del t
    for target in targets:
        target.flush()
    if quant:
        embed_name = next(n for n, m in outer if m is model.get_input_embeddings())
        for name, module in outer:
            if name == embed_name or not module.state_dict():  # the embeddings and the rotary buffers
                materialize_outer(model, name, module, weights, device)
        inputs = capture_layer_inputs(model, calib.to(device), batch_size)
        for target in quant:
            target.inputs = inputs
        for _, module in outer:
            release(module)
    n = len(layers)
    for i, layer in enumerate(layers):
        keys = list(layer.state_dict())
        merged = {k: weights(f"{prefix}.{i}.{k}") for k in keys}
        for target in targets:
            target.layer(f"{prefix}.{i}", layer, merged, groups, device)
            target.flush()  # one shard per decoder layer: nothing of earlier layers stays pending
        del merged
        return_freed_memory()
        if progress is not None:
            progress(i + 1, n)


def causal_lm_class(model_type: str) -> str:
    """transformers' causal-LM class name for ``model_type`` (``llama`` -> ``LlamaForCausalLM``)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]


def write_config(folder: Path, weights: MergedWeights, dtype: str, quantization_config: dict | None = None,
                 stops: list[int] | None = None) -> None:
    """config.json (with ``quantization_config``) and generation_config.json, as save_pretrained writes them;
    the generation config stops on ``stops`` (the run's stop ids, :mod:`qtune.data.stops`) and the base's own."""
    from qtune.models.generation_config import generation_config
    from qtune.models.load import resolve_model_path

    config = copy.deepcopy(weights.config)
    if not config.architectures:  # a base saved from a bare config; consumers (llama.cpp's converter) need it
        config.architectures = [causal_lm_class(config.model_type)]
    if quantization_config is not None:
        config.quantization_config = quantization_config
    config.dtype = dtype
    config.save_pretrained(folder)
    generation_config(resolve_model_path(weights.recipe.model.path), weights.config, stops).save_pretrained(folder)
