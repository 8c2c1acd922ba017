"""Merge a run's LoRA adapter into a 16-bit checkpoint: ``W' = W_base + scaling · B A``.

Two choices of ``W_base`` (``--base``):

- ``dequantized``: the base the adapter was trained against — every linear the recipe quantized
  (NF4/FP4 with its blocksize and double quantization, or INT8 rows) is quantized and dequantized
  exactly as bitsandbytes did during training. The merged model then computes what the trained
  model computed, up to the storage dtype.
- ``original``: the 16/32-bit weights before quantization. The adapter may have learned to
  correct some quantization error, which then is corrected twice; but the base itself is better.

:data:`~qtune.export.formats.DEFAULT_MERGE_BASE` is the one that measured better (docs/export.md has the figures).
"""

from __future__ import annotations

from pathlib import Path

from qtune import rundir
from qtune.recipe import load_run_recipe
from qtune.errors import QtuneError

from qtune.export.formats import DEFAULT_MERGE_BASE as DEFAULT_BASE
from qtune.export.formats import MERGE_BASES
MERGE_DTYPES = ("float16", "bfloat16", "float32")


def roundtrip_bnb(weight, quant) -> "torch.Tensor":
    """``weight`` quantized and dequantized the way ``quant`` (the recipe's section) stored it."""
    import torch

    if quant.method in ("nf4", "fp4"):
        import bitsandbytes.functional as bnbf

        packed, state = bnbf.quantize_4bit(
            weight.contiguous(), blocksize=quant.blocksize, compress_statistics=quant.double_quant, quant_type=quant.method
        )
        return bnbf.dequantize_4bit(packed, state).to(weight.dtype)
    if quant.method == "int8":  # LLM.int8 stores rows as int8 with one absmax per row
        absmax = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        return (torch.round(weight / absmax * 127) * absmax / 127).to(weight.dtype)
    return weight


def quantized_linear_names(model) -> list[str]:
    """The linears bitsandbytes quantizes: every ``nn.Linear`` except the output projection."""
    import torch

    out_emb = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not out_emb]


def merged_model(run_dir: str | Path, base: str = DEFAULT_BASE):
    """The run's adapter merged into ``base``; float32 on CPU, plus the recipe and tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.models.load import resolve_model_path

    if base not in MERGE_BASES:
        raise QtuneError(f"--base: '{base}' is not one of {', '.join(MERGE_BASES)}")
    recipe = load_run_recipe(run_dir)
    path = resolve_model_path(recipe.model.path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=recipe.model.trust_remote_code, revision=recipe.model.revision
    )
    if base == "dequantized":
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name in quantized_linear_names(model):
                w = modules[name].weight
                w.copy_(roundtrip_bnb(w.data, recipe.quant))
    adapter = Path(run_dir) / rundir.ADAPTER
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    return model.eval(), recipe, tokenizer


def save_checkpoint(model, tokenizer, out: str | Path, dtype: str = "float16") -> Path:
    """Write a plain transformers checkpoint (safetensors + tokenizer), atomically."""
    import torch

    if dtype not in MERGE_DTYPES:
        raise QtuneError(f"--dtype: '{dtype}' is not one of {', '.join(MERGE_DTYPES)}")
    if dtype == "float16":
        big = max(p.abs().max().item() for p in model.parameters())
        if big > torch.finfo(torch.float16).max:
            raise QtuneError(f"--dtype: a weight of {big:.3g} overflows float16; use --dtype bfloat16")
    out = Path(out)
    with rundir.atomic_path(out, directory=True) as tmp:
        model.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        model.to(torch.float32)
    return out
