"""The shape of a recipe's model, read from its config alone: the model is built on the meta device.

No weight is read: ``AutoConfig`` gives the architecture, ``AutoModelForCausalLM.from_config`` under
``torch.device("meta")`` gives every module with its shape and no storage. What the planner needs
is the list of linears (what bitsandbytes quantizes and what LoRA targets), the remaining 16/32-bit
parameters (embeddings, norms, an untied lm_head) and the decoder block's dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtune.errors import QtuneError

# The decoder block the activation formula is derived for (Llama, and the families that copy it:
# Mistral, Qwen2/3, SmolLM). Another block has other saved tensors, so the planner refuses it.
LLAMA_BLOCK = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Linear:
    name: str  # full module name, e.g. model.layers.0.self_attn.q_proj
    in_features: int
    out_features: int
    bias: bool

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    layers: int
    hidden: int  # h
    intermediate: int  # I
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int  # V
    max_positions: int
    dtype: str  # the checkpoint's own dtype (config), used when model.dtype is auto and nothing is quantized
    linears: tuple[Linear, ...]  # every nn.Linear except the output embedding: what bitsandbytes quantizes
    lm_head: Linear  # the output projection (tied to the embedding or not)
    tied: bool
    other_params: dict[str, int]  # 16/32-bit parameters that are not a quantizable linear: name -> numel

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params(self) -> int:
        return sum(l.numel + (l.out_features if l.bias else 0) for l in self.linears) + sum(self.other_params.values())

    def layer_linears(self, index: int = 0) -> dict[str, Linear]:
        """The linears of decoder layer ``index`` by their name inside the layer (``self_attn.q_proj``)."""
        prefix = f".layers.{index}."
        return {l.name.split(prefix, 1)[1]: l for l in self.linears if prefix in l.name}


def load_config(model) -> object:
    """The transformers config of the recipe's ``model`` section (a packaged model, a local dir or a Hub id)."""
    from transformers import AutoConfig

    from qtune.models.load import resolve_model_path

    path = resolve_model_path(model.path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model.trust_remote_code, revision=model.revision)
    except (OSError, ValueError) as e:
        raise QtuneError(f"model.path: could not read a config from '{model.path}' ({str(e).splitlines()[0]})") from None


def shape_of(config) -> ModelShape:
    """Build the model on the meta device and read its linears and other parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    out_emb = model.get_output_embeddings()
    linears, other = [], {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not out_emb:
            linears.append(Linear(name, module.in_features, module.out_features, module.bias is not None))
    linear_params = {f"{l.name}.{p}" for l in linears for p in ("weight", "bias")}
    for name, p in model.named_parameters():  # tied parameters are listed once
        if name not in linear_params:
            other[name] = p.numel()
    tied = out_emb.weight is model.get_input_embeddings().weight
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    shape = ModelShape(
        model_type=config.model_type,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        heads=text.num_attention_heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        vocab=out_emb.out_features,
        max_positions=getattr(text, "max_position_embeddings", 0) or 0,
        dtype=str(getattr(config, "dtype", None) or "float32").removeprefix("torch."),
        linears=tuple(linears),
        lm_head=Linear("lm_head", out_emb.in_features, out_emb.out_features, out_emb.bias is not None),
        tied=tied,
        other_params=other,
    )
    missing = [n for n in LLAMA_BLOCK if n not in shape.layer_linears()]
    if missing:
        raise QtuneError(
            f"model.path: the planner's activation formula is derived for the Llama decoder block "
            f"({', '.join(n.split('.')[-1] for n in LLAMA_BLOCK)}); model_type '{shape.model_type}' has no "
            f"{', '.join(missing)} — run `qtune train` with --no-plan-check"
        )
    return shape


def lora_targets(shape: ModelShape, target_modules) -> list[Linear]:
    """The linears peft wraps: ``all-linear`` is every linear but the output layer; a list matches name suffixes."""
    if target_modules == "all-linear":
        return list(shape.linears)
    keys = list(target_modules)
    return [l for l in shape.linears if any(l.name == k or l.name.endswith("." + k) for k in keys)]
