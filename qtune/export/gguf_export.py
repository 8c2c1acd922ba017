"""GGUF export of the merged checkpoint, for llama.cpp and everything built on it.

Written with the ``gguf`` package: llama-family hyperparameters, the tokenizer (BPE tokens, merges,
special ids) and the chat template, then every tensor under its GGUF name. Two-dimensional weights
are stored in the requested type (``F16``, ``BF16``, ``Q8_0``, ``Q4_0``, ``Q4_1``, ``Q5_0``,
``Q5_1``, which ``gguf.quants`` computes), one-dimensional ones (norms) in F32. ``q_proj`` and
``k_proj`` rows are permuted from the HF rotary layout (two halves) to llama.cpp's (interleaved
pairs): ``W.reshape(heads, 2, head_dim/2, in).swapaxes(1, 2)``, as llama.cpp's converter does.
K-quants (``Q4_K_M``, ``Q5_K_M``, ``Q6_K``) come from llama.cpp's own quantizer
(``llama_model_quantize`` of llama-cpp-python, the optional extra ``qtune[gguf]``) run on an F16 file.

Fidelity is measured on qtune's reading of the written file: every tensor dequantized with
``gguf.quants.dequantize`` and permuted back — the weights llama.cpp computes with.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from qtune.errors import QtuneError, missing_dependency
from qtune.export import card
from qtune.export.formats import GGUF_LLAMA_CPP_TYPES

GGUF_ARCHS = {"llama": "LLAMA", "mistral": "LLAMA"}
# llama.cpp's enum llama_ftype for the K-quant mixes
LLAMA_FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def _permute(w, heads: int):
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w, heads: int):
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pre_tokenizer(model_path: str) -> str:
    """llama.cpp's pre-tokenizer name: the packaged model's own, else llama.cpp's ``default``."""
    from qtune.models.packaged import PACKAGED_MODELS, gguf_path

    if model_path in PACKAGED_MODELS:
        import gguf

        field = gguf.GGUFReader(str(gguf_path(model_path))).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return str(field.contents())
    return "default"


def write_gguf(ckpt: Path, out_file: Path, qtype: str, pre_tokenizer: str = "default") -> float:
    """Convert the float checkpoint ``ckpt`` into one GGUF file of type ``qtype``, one tensor at a time
    (read lazily from the shards, spooled to a temporary file); return the average bits per element
    of the 2-D tensors."""
    import gguf
    import numpy as np
    from gguf.vocab import BpeVocab, SpecialVocab

    from qtune.export.shards import ShardReader

    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg["model_type"] not in GGUF_ARCHS:
        raise QtuneError(f"export.formats: GGUF export knows {', '.join(GGUF_ARCHS)} models (given {cfg['model_type']})")
    arch = getattr(gguf.MODEL_ARCH, GGUF_ARCHS[cfg["model_type"]])
    n_layer, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    gtype = gguf.GGMLQuantizationType[qtype]

    w = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)
    w.add_name(ckpt.parent.parent.name if ckpt.parent.name == "exports" else ckpt.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype}"] if qtype not in ("F32",) else gguf.LlamaFileType.ALL_F32)

    vocab = BpeVocab(ckpt)
    tokens, types = [], []
    for text, _score, toktype in vocab.all_tokens():
        tokens.append(text)
        types.append(toktype)
    tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), cfg["vocab_size"])]
    types += [gguf.TokenType.UNUSED] * (cfg["vocab_size"] - len(types))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer)
    w.add_token_list(tokens)
    w.add_token_types(types)
    SpecialVocab(ckpt, load_merges=True, n_vocab=cfg["vocab_size"]).add_to_gguf(w)

    names = gguf.get_tensor_name_map(arch, n_layer)
    n_bytes, n_el = 0, 0
    reader = ShardReader(ckpt)
    for hf_name in reader.keys():
        if hf_name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise QtuneError(f"export.formats: no GGUF name for tensor '{hf_name}'")
        data = reader.get(hf_name).float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        block = gguf.GGML_QUANT_SIZES[gtype][0]
        if data.ndim == 1 or qtype == "F32" or data.shape[-1] % block:
            stored = data  # F32
            w.add_tensor(name, data)
        elif qtype == "F16":
            stored = data.astype(np.float16)
            w.add_tensor(name, stored)
        else:
            stored = gguf.quants.quantize(data, gtype)
            w.add_tensor(name, stored, raw_shape=stored.shape, raw_dtype=gtype)
        if data.ndim == 2:
            n_bytes, n_el = n_bytes + stored.nbytes, n_el + data.size
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return round(8 * n_bytes / n_el, 3)


def llama_cpp_quantize(f16_file: Path, out_file: Path, qtype: str) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise missing_dependency(f"GGUF type {qtype}", "llama-cpp-python", "gguf") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[qtype]
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(f16_file).encode(), str(out_file).encode(), params)
    if rc != 0:
        raise QtuneError(f"export.gguf_types: llama.cpp could not quantize to {qtype} (return code {rc})")


def model_from_state(ckpt: Path, state: dict):
    """A float32 transformers model with ``ckpt``'s config and the weights in ``state``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k.startswith("lm_head"))]
    assert not missing, f"GGUF lacks {missing[:5]}"
    model.tie_weights()
    return model.eval()


class GGUFWeights:
    """A GGUF file read back tensor by tensor (memory-mapped; any type ``gguf.quants`` dequantizes,
    K-quants too) as float32 tensors under their HF names and layout: ``weights(name)``.

    Slow to open for real vocabularies: ``GGUFReader`` parses every token and merge string in Python.
    """

    def __init__(self, path: Path, ckpt: Path, device="cpu"):
        import gguf

        from qtune.export.shards import ShardReader

        cfg = json.loads((ckpt / "config.json").read_text())
        arch = getattr(gguf.MODEL_ARCH, GGUF_ARCHS[cfg["model_type"]])
        names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
        by_gguf = {names.get_name(k, try_suffixes=(".weight", ".bias")): k for k in ShardReader(ckpt).keys()}
        self.heads = cfg["num_attention_heads"]
        self.kv = cfg.get("num_key_value_heads") or self.heads
        self.device, self.path = device, Path(path)
        self.tensors = {}  # HF name -> (type, shape, offset, numpy dtype, stored shape); the reader's map is closed
        for t in gguf.GGUFReader(str(path)).tensors:
            stem, suffix = t.name.rsplit(".", 1)
            hf = by_gguf[stem] if stem in by_gguf else by_gguf.get(t.name)
            hf = hf if hf.endswith(suffix) else f"{hf.rsplit('.', 1)[0]}.{suffix}"
            self.tensors[hf] = (t.tensor_type, t.shape.tolist(), t.data_offset, t.data.dtype, t.data.shape)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __call__(self, hf: str):
        import gguf
        import numpy as np
        import torch

        qtype, shape, offset, dtype, stored = self.tensors[hf]
        # read, not mapped: a mapping kept open would keep every page read so far in this process's RSS
        raw = np.fromfile(self.path, dtype=dtype, count=int(np.prod(stored)), offset=offset).reshape(stored)
        data = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(shape[::-1])
        if hf.endswith("q_proj.weight"):
            data = _unpermute(data, self.heads)
        elif hf.endswith("k_proj.weight"):
            data = _unpermute(data, self.kv)
        return torch.from_numpy(np.ascontiguousarray(data)).to(self.device)


def load_gguf_dequantized(path: Path, ckpt: Path):
    """A GGUF file read back as a whole float32 model (small models, tests)."""
    weights = GGUFWeights(path, ckpt)
    return model_from_state(ckpt, {k: weights(k) for k in weights.keys()})


def export_gguf(merged: Path, recipe, tokenizer, settings, reference, out: Path, say, fidelity_of=None,
                final: Path | None = None) -> Path:
    """``fidelity_of(weights)``: fidelity figures of a model given tensor by tensor (None: skip)."""
    from qtune import rundir
    from qtune.export.fidelity import compare

    pre = _pre_tokenizer(recipe.model.path)
    stem = Path(recipe.train.output_dir).name or "model"
    fidelity = {"exports": {}, "reference": "the merged 16-bit model; each file read back and dequantized by qtune"}
    bits = {}
    with rundir.atomic_path(out, directory=True) as tmp:
        for qtype in settings.gguf_types:
            t = time.perf_counter()
            target = tmp / f"{stem}-{qtype}.gguf"
            if qtype in GGUF_LLAMA_CPP_TYPES:
                f16 = tmp / f".{stem}-F16.tmp.gguf"
                write_gguf(merged, f16, "F16", pre)
                llama_cpp_quantize(f16, target, qtype)
                f16.unlink()
                bits[target.name] = _bits_per_weight(target)
            else:
                bits[target.name] = write_gguf(merged, target, qtype, pre)
            if fidelity_of is not None and reference is not None:
                fidelity["exports"][target.name] = compare(fidelity_of(GGUFWeights(target, merged)), reference)
            say(f"gguf: {target.name} ({time.perf_counter() - t:.0f}s)")
        if fidelity["exports"]:
            card.write_fidelity(tmp, fidelity)
        manifest = card.write_manifest(tmp, "gguf", min(bits.values()), None, settings.base, bits_per_file=bits,
                                       pre_tokenizer=pre)
        card.write_card(tmp, manifest, fidelity if fidelity["exports"] else None, recipe.model.path, final or out)
    return out


def _bits_per_weight(path: Path) -> float:
    """Average bits per element over the file's 2-D tensors (the quantized linears and embeddings)."""
    import gguf

    n_bytes = n_el = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        if len(t.shape) == 2:
            n_bytes += int(t.n_bytes)
            n_el += int(t.n_elements)
    return round(8 * n_bytes / n_el, 3)
