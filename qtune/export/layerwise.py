"""A model that never exists whole: its skeleton on the meta device, one part materialized at a time.

``skeleton(config)`` builds the transformers model on the meta device (shapes, no storage).
``materialize(module, tensors, device)`` gives one module storage (``to_empty``) and loads its
tensors; ``release(module)`` sends it back to meta. Buffers that no checkpoint holds (rotary
embeddings' ``inv_freq``, Gemma's ``embed_scale``) keep the values the model's constructor gave them.

:class:`MergedWeights` is the run's merged model tensor by tensor: each weight read from the base's
shards, for ``dequantized`` put through the bitsandbytes round trip training saw
(:func:`roundtrip_bnb`), then ``W + (B @ A) · scaling`` with the adapter's
``A``/``B`` and ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA) from ``adapter_config.json``
— the arithmetic of peft's ``merge_and_unload`` on a float32 base, so the result is bit-identical.

:func:`lazy_model` is a causal LM for measuring (perplexity, eval loss) whose decoder layers and
untied output head are materialized from a ``weights(name)`` function just before they run and
released right after: peak memory is the embeddings, one layer and the activations.
:func:`resident_model` is the same model with every part materialized once, up front, for a model
that fits in memory (:func:`qtune.export.scoring.fidelity_peak` decides): each tensor is
read (and merged, or dequantized) once instead of once per forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from qtune.compat.torch import set_buffer
from qtune.errors import QtuneError
from qtune.export.sequential import decoder_layers
from qtune.export.shards import ShardReader


_BUFFERS = "_qtune_buffers"  # plain attribute: survives .to("meta") and to_empty


def skeleton(config, dtype: torch.dtype = torch.float32):
    """The model with its parameters on the meta device; the buffers no checkpoint holds (rotary
    ``inv_freq``, Gemma's ``embed_scale``) computed by the model's own constructor and kept aside, so
    :func:`materialize` puts them back (``to_empty`` leaves them uninitialized)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for module in model.modules():
        fixed = {n: b.detach().clone() for n, b in module.named_buffers(recurse=False) if b.device.type != "meta"}
        if fixed:
            setattr(module, _BUFFERS, fixed)
    model.to("meta")
    return model.eval()


def restore_buffers(module: torch.nn.Module, device) -> None:
    """Put back the constructor's buffers of ``module`` and its children (see :func:`skeleton`)."""
    for sub in module.modules():
        for name, value in getattr(sub, _BUFFERS, {}).items():
            set_buffer(sub, name, value.to(device))


def materialize(module: torch.nn.Module, tensors: dict[str, torch.Tensor], device, adopt: bool = False) -> torch.nn.Module:
    """``module`` with storage on ``device`` holding ``tensors`` (cast to the module's dtype).

    ``adopt``: the module takes ``tensors`` as its storage (after the cast, a no-op when the dtype
    and device already match) instead of copying them into storage of its own, so a weight does not
    exist twice while it loads. Only for a module nobody changes in place: the quantizers fold scales
    into the weights they were given, and those are shared between formats.
    """
    if adopt:
        want = module.state_dict()  # meta tensors: the dtypes to cast to
        module.load_state_dict({k: v.to(device, want[k].dtype) for k, v in tensors.items()}, strict=True, assign=True)
    else:
        module.to_empty(device=device)
        module.load_state_dict(tensors, strict=True)
    restore_buffers(module, device)
    return module


def release(module: torch.nn.Module) -> None:
    """Send ``module`` back to the meta device and hand the freed memory back to the system."""
    module.to("meta")
    return_freed_memory()


def return_freed_memory() -> None:
    """glibc keeps freed layer-sized blocks in its heap: measured on a 0.5 B model, a lazy forward pass
    grew RSS by one float32 layer per layer (2.3 GB after 24) without ``malloc_trim``, 0 with it."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc: nothing to do
        pass


def _own_state(module: torch.nn.Module) -> list[str]:
    """Names in ``module.state_dict()``: the tensors a checkpoint holds for it."""
    return list(module.state_dict().keys())


def outer_parts(model) -> list[tuple[str, torch.nn.Module]]:
    """The modules outside the decoder layers that hold tensors themselves (embeddings, norm, head, rotary)."""
    prefix, _ = decoder_layers(model)
    return [(n, m) for n, m in model.named_modules()
            if n and not (n == prefix or n.startswith(prefix + ".")) and
            (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)))]


def materialize_outer(model, name: str, module, weights: Callable[[str], torch.Tensor], device) -> None:
    """Embeddings, final norm, head or rotary buffers, for reading only (they adopt ``weights``' tensors)."""
    keys = _own_state(module)
    if keys:
        materialize(module, {k: weights(f"{name}.{k}") for k in keys}, device, adopt=True)
    if any(True for _ in module.buffers(recurse=False)) and not keys:  # non-persistent only: rotary
        module.to_empty(device=device)
        restore_buffers(module, device)


def head_name(model) -> str | None:
    out = model.get_output_embeddings()
    return next((n for n, m in model.named_modules() if m is out), None)


def is_tied(model) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False))


def roundtrip_bnb(weight: torch.Tensor, quant) -> torch.Tensor:
    """``weight`` quantized and dequantized the way ``quant`` (the recipe's section) stored it."""
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


class MergedWeights:
    """The run's adapter merged into its base, one tensor at a time (float32, on ``device``)."""

    def __init__(self, run_dir: str | Path, base: str, device="cpu"):
        from transformers import AutoConfig

        from qtune import rundir
        from qtune.models.load import resolve_model_path
        from qtune.recipe import load_run_recipe

        self.recipe = load_run_recipe(run_dir)
        rundir.check_adapter(Path(run_dir))
        path = resolve_model_path(self.recipe.model.path)
        self.config = AutoConfig.from_pretrained(path, trust_remote_code=self.recipe.model.trust_remote_code,
                                                 revision=self.recipe.model.revision)
        self.reader = ShardReader(path)
        self.base, self.device = base, torch.device(device)
        adapter = Path(run_dir) / rundir.ADAPTER
        self.adapter = ShardReader(adapter)
        self.scaling, self.lora = _read_adapter(adapter, self.adapter)
        model = skeleton(self.config)
        self.tied, self.head = is_tied(model), head_name(model)
        self.input_embedding = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        self.roundtrip = {f"{n}.weight" for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and n != self.head} if base == "dequantized" else set()

    def __call__(self, name: str) -> torch.Tensor:
        stored = name
        if name not in self.reader and self.tied and name == f"{self.head}.weight":
            stored = f"{self.input_embedding}.weight"
        w = self.reader.get(stored).to(self.device, torch.float32)
        if name in self.roundtrip:
            w = roundtrip_bnb(w, self.recipe.quant)
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module in self.lora:
            a, b = (self.adapter.get(k).to(self.device, torch.float32) for k in self.lora[module])
            w = w + (b @ a) * self.scaling  # never in place: w may share storage with the mapped file
        return w


def _read_adapter(folder: Path, reader: ShardReader) -> tuple[float, dict[str, tuple[str, str]]]:
    """(scaling, {module name: (A key, B key)}) of a peft LoRA adapter, refusing what a plain merge cannot do."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    where = f"{folder / 'adapter_config.json'}"
    if cfg.get("peft_type", "LORA") != "LORA":
        raise QtuneError(f"{where}: peft_type {cfg['peft_type']} cannot be merged (qtune merges LoRA adapters)")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if cfg.get(key):
            raise QtuneError(f"{where}: {key} is set; qtune's streamed merge handles plain LoRA only (no {key})")
    if cfg.get("fan_in_fan_out"):
        raise QtuneError(f"{where}: fan_in_fan_out adapters (Conv1D models) are not supported by the export")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / (r**0.5 if cfg.get("use_rslora") else r)
    lora, prefix = {}, "base_model.model."
    for key in reader.keys():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            lora[module.removeprefix(prefix)] = (key, f"{module}.lora_B.weight")
        elif not key.endswith(".lora_B.weight"):
            raise QtuneError(f"{folder}: adapter tensor '{key}' is not a LoRA A/B matrix; the export cannot merge it")
    return scaling, lora


def lazy_model(config, weights: Callable[[str], torch.Tensor], device, dtype: torch.dtype = torch.float32):
    """A causal LM whose decoder layers (and untied head) load from ``weights`` just in time.

    The input embeddings, final norm and rotary buffers stay materialized (the eval code reads the
    device from the first parameter); every decoder layer is materialized by a forward pre-hook
    and released by a forward hook, so one layer exists at a time.
    """
    model = skeleton(config, dtype)
    prefix, layers = decoder_layers(model)
    head = head_name(model)
    lazy = {f"{prefix}.{i}": layer for i, layer in enumerate(layers)}
    if head is not None and not is_tied(model):
        lazy[head] = model.get_output_embeddings()
    for name, module in outer_parts(model):
        if name not in lazy and not (name == head and is_tied(model)):
            materialize_outer(model, name, module, weights, device)
    if is_tied(model) and head is not None:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight

    def hooks(name, module):
        keys = _own_state(module)

        def load(m, args):
            materialize(m, {k: weights(f"{name}.{k}") for k in keys}, device, adopt=True)

        def free(m, args, out):
            release(m)

        module.register_forward_pre_hook(load)
        module.register_forward_hook(free)

    for name, module in lazy.items():
        hooks(name, module)
    return model


def resident_model(config, weights: Callable[[str], torch.Tensor], device, dtype: torch.dtype = torch.float32):
    """The causal LM of :func:`lazy_model` with every tensor of ``weights`` loaded once, kept in memory."""
    model = skeleton(config, dtype)
    prefix, layers = decoder_layers(model)
    head = head_name(model)
    for name, module in outer_parts(model):
        if not (name == head and is_tied(model)):
            materialize_outer(model, name, module, weights, device)
    for i, layer in enumerate(layers):
        materialize(layer, {k: weights(f"{prefix}.{i}.{k}") for k in _own_state(layer)}, device, adopt=True)
    if is_tied(model) and head is not None:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model
