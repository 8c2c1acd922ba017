"""The model families qtune supports: everything a feature needs to know about one, in one entry.

A family is a transformers ``model_type``. Its entry names:

- ``layers``: the attribute path of the decoder layer list (``model.layers``);
- ``groups``: the linears of one decoder layer in forward order, grouped by shared input, each with
  the op that produces that input (:class:`LinearGroup`). GPTQ quantizes the groups in this order
  (true-sequential); AWQ folds its per-channel scales ``s`` into ``prev``. Folding into an RMSNorm
  that computes ``x̂ · (offset + w)`` sets ``w ← (offset + w) / s - offset`` — exact in float, so a
  Gemma norm (``offset`` 1) folds like a Llama one (``offset`` 0). A group whose input no single op
  produces channel for channel (Phi-3's ``o_proj`` reads the v slice of the fused ``qkv_proj``;
  its ``down_proj`` reads ``up · act(gate)`` from the fused ``gate_up_proj``) has ``prev=None``: AWQ
  leaves its scales at 1 and only clips and rounds it;
- the GGUF side: llama.cpp's architecture name, and what its converter does to the tensors so that
  qtune can read a written file back in HF layout (``gguf_permute_qk``: q/k rows re-ordered from HF's
  two rotary halves to interleaved pairs, Llama and Mistral only; ``norm_offset``: Gemma's norms are
  stored as ``1 + w``);
- what the family usually has (``tied_embeddings``, ``qkv_bias``; the checkpoint's config decides)
  and its known chat template (a key such as ``"chatml"``, for the template registry);
- ``end_of_turn``: the token its chat models end an assistant turn with, and stop generating on
  (Llama 3 ``<|eot_id|>``, Gemma ``<end_of_turn>``, Phi-3 ``<|end|>``, Qwen ``<|im_end|>``; Mistral
  ends turns with its EOS ``</s>``). A checkpoint of the family that lacks it as one token (Llama 2,
  SmolLM2) stops on its tokenizer's EOS alone (:mod:`qtune.data.stops`);
- ``gated_mlp``: the MLP module and its gate, up and down linears when the MLP computes
  ``down(act(gate(x)) * up(x))`` with ``act_fn`` (the fused-block kernels read it; Phi-3's fused ``gate_up_proj``
  has none);
- ``formats``: the export formats qtune writes for it; ``qtune export`` checks them first;
- ``liger``: the family's name in liger-kernel (``apply_liger_kernel_to_<liger>``, whose fused linear +
  cross-entropy forward ``train.cross_entropy: liger`` puts on the model instance), None where liger has none.

This module is a leaf: it imports nothing heavy, so the recipe checks can read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qtune.errors import QtuneError

ALL_FORMATS = frozenset({"merged", "gptq", "awq", "gguf"})


@dataclass(frozen=True)
class LinearGroup:
    prev: str | None  # module (inside the layer) whose output is the group's input; None: AWQ cannot fold
    linears: tuple[str, ...]
    prev_offset: float = 0.0  # a norm ``prev`` computes x̂ · (prev_offset + weight)
    no_clip: tuple[str, ...] = ()  # linears AWQ does not clip (q and k: the softmax amplifies their errors)


@dataclass(frozen=True)
class Family:
    model_type: str
    title: str
    layers: str
    groups: tuple[LinearGroup, ...]
    gguf_arch: str
    chat_template: str
    end_of_turn: str
    gguf_permute_qk: bool = False
    norm_offset: float = 0.0
    tied_embeddings: bool = False
    qkv_bias: bool = False
    gated_mlp: tuple[str, str, str, str] | None = ("mlp", "gate_proj", "up_proj", "down_proj")
    formats: frozenset = ALL_FORMATS
    liger: str | None = None


def _separate_qkv(norm_offset: float = 0.0, post_attn_norm: str = "post_attention_layernorm") -> tuple[LinearGroup, ...]:
    """Llama's layer: q/k/v after the input norm, o after v, gate/up after the MLP's norm, down after up."""
    return (
        LinearGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), norm_offset,
                    no_clip=("self_attn.q_proj", "self_attn.k_proj")),
        LinearGroup("self_attn.v_proj", ("self_attn.o_proj",)),  # folds only without GQA (sizes must match)
        LinearGroup(post_attn_norm, ("mlp.gate_proj", "mlp.up_proj"), norm_offset),
        LinearGroup("mlp.up_proj", ("mlp.down_proj",)),
    )


_FAMILIES = (
    Family("llama", "Llama 2/3", "model.layers", _separate_qkv(), "llama", "llama3", "<|eot_id|>", gguf_permute_qk=True,
           liger="llama"),
    Family("mistral", "Mistral", "model.layers", _separate_qkv(), "llama", "mistral", "</s>", gguf_permute_qk=True,
           liger="mistral"),
    Family("qwen2", "Qwen2/2.5", "model.layers", _separate_qkv(), "qwen2", "chatml", "<|im_end|>", tied_embeddings=True,
           qkv_bias=True,
           liger="qwen2"),
    Family("qwen3", "Qwen3", "model.layers", _separate_qkv(), "qwen3", "chatml", "<|im_end|>", tied_embeddings=True,
           liger="qwen3"),
    # Gemma 2/3: post_attention_layernorm normalizes the attention *output*; the MLP's input norm is
    # pre_feedforward_layernorm. Every norm computes x̂ · (1 + w).
    Family("gemma2", "Gemma 2", "model.layers", _separate_qkv(1.0, "pre_feedforward_layernorm"), "gemma2", "gemma",
           "<end_of_turn>", norm_offset=1.0, tied_embeddings=True, liger="gemma2"),
    Family("gemma3_text", "Gemma 3 text", "model.layers", _separate_qkv(1.0, "pre_feedforward_layernorm"), "gemma3",
           "gemma", "<end_of_turn>", norm_offset=1.0, tied_embeddings=True, liger="gemma3_text"),
    Family("phi3", "Phi-3", "model.layers", (
        LinearGroup("input_layernorm", ("self_attn.qkv_proj",), no_clip=("self_attn.qkv_proj",)),
        LinearGroup(None, ("self_attn.o_proj",)),  # input: the v slice of qkv_proj's output
        LinearGroup("post_attention_layernorm", ("mlp.gate_up_proj",)),
        LinearGroup(None, ("mlp.down_proj",)),  # input: up · act(gate), both halves of gate_up_proj
    ), "phi3", "phi3", "<|end|>", gated_mlp=None, liger="phi3"),
)
FAMILIES: dict[str, Family] = {f.model_type: f for f in _FAMILIES}
GGUF_FAMILIES = frozenset(f.gguf_arch for f in _FAMILIES)  # ``general.architecture`` values of GGUF files qtune takes


def supported() -> str:
    return ", ".join(f"{f.model_type} ({f.title})" for f in _FAMILIES)


def family(model_type: str, where: str = "model.path") -> Family:
    """The entry for ``model_type``; a one-line error listing the supported families otherwise."""
    if model_type not in FAMILIES:
        raise QtuneError(f"{where}: qtune does not support '{model_type}' models (supported: {supported()})")
    return FAMILIES[model_type]


def family_of(model) -> Family:
    """The entry of a loaded transformers model (or its config)."""
    config = getattr(model, "config", model)
    return family(config.model_type)


def read_config(path: str | Path, where: str = "model.path") -> dict:
    """The config.json of checkpoint directory ``path``: every command reads it here, so a file that is not
    a JSON object (unreadable, not UTF-8, malformed, a list) is one error naming it."""
    cfg_file = Path(path) / "config.json"
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise QtuneError(f"{where}: cannot read {cfg_file} ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(config, dict):
        raise QtuneError(f"{where}: {cfg_file} holds a JSON {type(config).__name__}, not a transformers config (an object)")
    return config


def family_of_dir(path: str | Path) -> Family:
    """The entry of the checkpoint directory ``path``, read from its config.json only (no weights)."""
    cfg_file = Path(path) / "config.json"
    model_type = read_config(path).get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise QtuneError(f"model.path: {cfg_file} names no model_type (supported: {supported()})")
    return family(model_type, f"model.path ({cfg_file})")


def check_formats(fam: Family, formats) -> None:
    """Refuse, before any work, an export format qtune does not write for ``fam``."""
    missing = [f for f in formats if f not in fam.formats]
    if missing:
        raise QtuneError(f"export.formats: {', '.join(missing)} export is not supported for {fam.title} "
                         f"({fam.model_type}) models (supported for it: {', '.join(sorted(fam.formats))})")


def layer_linears(fam: Family) -> list[str]:
    """The linears of one decoder layer (``self_attn.q_proj``...), in forward order, and the output layer."""
    return [name for g in fam.groups for name in g.linears] + ["lm_head"]


def check_lora_targets(targets, linears: list[str], model: str) -> None:
    """Refuse ``lora.target_modules`` names that match none of ``linears`` (module names of ``model``, full or
    layer-relative); peft matches a name or a dotted suffix of one, and raises only when no name matches at all,
    so a typo beside good names would otherwise train without a word."""
    if targets == "all-linear":
        return
    short = sorted({name.rsplit(".", 1)[-1] for name in linears})
    if not targets:
        raise QtuneError(f"lora.target_modules: the list is empty; name linears of {model} ({', '.join(short)}) or all-linear")
    missing = [t for t in targets if not any(p == t or p.endswith("." + t) or t.endswith("." + p) for p in linears)]
    if missing:
        raise QtuneError(f"lora.target_modules: {', '.join(repr(t) for t in missing)} match(es) no linear layer of {model}; "
                         f"its linears are {', '.join(short)} (or give all-linear)")
