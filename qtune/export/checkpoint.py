"""GPTQ/AWQ checkpoints on disk: write the standard layout, read it back as float weights.

A checkpoint is a transformers model directory whose ``config.json`` carries a
``quantization_config`` (``quant_method: gptq`` or ``awq``); each quantized linear ``<name>`` is
stored as ``<name>.qweight / .qzeros / .scales`` (``.g_idx`` for GPTQ, see
:mod:`qtune.export.packing`), every other tensor in float16. transformers (through optimum +
gptqmodel) and vLLM load this layout; :func:`load_dequantized` is qtune's own reading of it, used
for fidelity and to check the real consumers against.
"""

from __future__ import annotations

import json
from pathlib import Path

from qtune import rundir
from qtune.export.grid import QuantizedWeight
from qtune.export.packing import PACKERS, unpack_awq, unpack_gptq


def quantization_config(fmt: str, bits: int, group_size: int, sym: bool, act_order: bool, damp: float) -> dict:
    if fmt == "gptq":
        return {
            "quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": act_order, "sym": sym,
            "damp_percent": damp, "true_sequential": True, "static_groups": False, "checkpoint_format": "gptq",
            "pack_dtype": "int32", "lm_head": False,
        }
    return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": not sym, "version": "gemm"}


def write_checkpoint(model, tokenizer, quantized: dict[str, QuantizedWeight], qconfig: dict, out: str | Path) -> list[str]:
    """Save ``model`` with the linears in ``quantized`` packed as ``qconfig['quant_method']`` says."""
    import copy

    import torch
    from safetensors.torch import save_file

    pack = PACKERS[qconfig["quant_method"]]
    state = {}
    skip = {n + ".weight" for n in quantized}
    if getattr(model.config, "tie_word_embeddings", False):
        skip.add("lm_head.weight")  # tied to the input embeddings, which are saved
    for name, tensor in model.state_dict().items():
        if name in skip:
            continue
        state[name] = tensor.detach().to(torch.float16).contiguous()
    for name, w in quantized.items():
        for key, tensor in pack(w).items():
            state[f"{name}.{key}"] = tensor.contiguous()
    config = copy.deepcopy(model.config)
    config.quantization_config = qconfig
    config.dtype = "float16"
    with rundir.atomic_path(out, directory=True) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir())
    return files


def read_quantized(export_dir: str | Path) -> tuple[dict, dict[str, QuantizedWeight], dict]:
    """(config dict, quantized linears by name, the other tensors) of a checkpoint we can read."""
    from safetensors.torch import load_file

    export_dir = Path(export_dir)
    config = json.loads((export_dir / "config.json").read_text())
    q = config["quantization_config"]
    tensors = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    names = sorted({k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")})
    quantized = {}
    for n in names:
        parts = {k: tensors.pop(f"{n}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx") if f"{n}.{k}" in tensors}
        if q["quant_method"] == "gptq":
            quantized[n] = unpack_gptq(parts, q["bits"], q["group_size"])
        else:
            quantized[n] = unpack_awq(parts, q["group_size"])
    return config, quantized, tensors


def load_dequantized(export_dir: str | Path):
    """The exported model as plain float32 weights: qtune's view of what consumers should compute."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict, quantized, tensors = read_quantized(export_dir)
    config = AutoConfig.from_pretrained(str(export_dir))
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.float() for k, v in tensors.items()}
    state.update({f"{n}.weight": w.dequantize() for n, w in quantized.items()})
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k.startswith("lm_head"))]
    assert not missing and not result.unexpected_keys, f"checkpoint mismatch: {missing[:5]} {result.unexpected_keys[:5]}"
    model.tie_weights()
    return model.eval()


class DequantizedWeights:
    """A written GPTQ/AWQ checkpoint read tensor by tensor as float32 (``weights(name)`` for
    :func:`qtune.export.layerwise.lazy_model`): packed linears unpacked and dequantized, the rest as stored."""

    def __init__(self, export_dir: str | Path, device="cpu"):
        from qtune.export.shards import ShardReader

        self.reader = ShardReader(export_dir)
        self.q = json.loads((Path(export_dir) / "config.json").read_text())["quantization_config"]
        self.device = device

    def __call__(self, name: str):
        import torch

        stem = name.removesuffix(".weight")
        if name.endswith(".weight") and f"{stem}.qweight" in self.reader:
            parts = {k: self.reader.get(f"{stem}.{k}") for k in ("qweight", "qzeros", "scales", "g_idx") if f"{stem}.{k}" in self.reader}
            if self.q["quant_method"] == "gptq":
                w = unpack_gptq(parts, self.q["bits"], self.q["group_size"])
            else:
                w = unpack_awq(parts, self.q["group_size"])
            return w.dequantize().to(self.device)
        return self.reader.get(name).to(self.device, torch.float32)
