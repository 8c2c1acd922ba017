"""Loading a base model: resolve where it lives, quantize it with bitsandbytes, attach LoRA.

``quant.method`` (:data:`qtune.registry.quant.QUANT_METHODS`) picks one entry of :data:`QUANT_CONFIGS`; each builds the
``BitsAndBytesConfig`` transformers needs (or none, for a 16/32-bit base). LoRA goes on with peft
(``all-linear``, DoRA, rsLoRA). Nothing here touches the Hub unless ``model.path`` is a Hub id.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from qtune.errors import QtuneError
from qtune.models.bnb_layout import keep_training_layout
from qtune.models.packaged import PACKAGED_MODELS, check_packaged, gguf_architecture, gguf_checkpoint, materialize
from qtune.registry.families import GGUF_FAMILIES, supported

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from qtune.recipe.schema import LoraSection, ModelSection, QuantSection


def resolve_model_path(path: str, convert: bool = True) -> str:
    """A packaged name or a ``.gguf`` file becomes its cached checkpoint (converted once); a local
    checkpoint dir stays; anything else is a Hub id. With ``convert=False`` (``qtune validate``) every
    check runs but nothing is converted: the packaged parts are looked up, a GGUF's header is read.
    One rule for every command, so what ``validate`` passes ``train`` takes."""
    if path in PACKAGED_MODELS:
        if not convert:
            return str(check_packaged(path))
        return str(materialize(path))
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix != ".gguf":
            raise QtuneError(f"model.path: '{path}' is a file but not a .gguf model; give a .gguf file or a "
                             "transformers checkpoint directory")
        arch = gguf_architecture(local)
        if arch not in GGUF_FAMILIES:
            raise QtuneError(f"model.path: '{path}' is a '{arch}' GGUF; qtune supports {supported()}")
        return str(gguf_checkpoint(local)) if convert else str(local)
    if local.exists():
        if not (local / "config.json").is_file():
            raise QtuneError(f"model.path: '{path}' has no config.json (give a transformers checkpoint directory or a .gguf file)")
        check_not_prequantized(local)
        return str(local)
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise QtuneError(f"model.path: no such file or directory '{path}' (packaged models: {', '.join(PACKAGED_MODELS)})")
    return path


def check_not_prequantized(checkpoint: Path) -> None:
    """A checkpoint whose config carries a ``quantization_config`` (GGUF, GPTQ, AWQ...) cannot be loaded
    again in NF4/INT8: transformers would die comparing two quantizers. Say what to give instead."""
    from qtune.registry.families import read_config

    q = read_config(checkpoint).get("quantization_config")
    if not q:
        return
    method = q.get("quant_method", "?") if isinstance(q, dict) else "?"
    fix = ("give the .gguf file itself as model.path (qtune converts it once into its cache)" if method == "gguf"
           else "give the 16-bit checkpoint it was quantized from")
    raise QtuneError(f"model.path: '{checkpoint}' is already quantized ({method}, config.json quantization_config); {fix}")


def model_family(model: "ModelSection"):
    """The :mod:`~qtune.registry.families` entry of the recipe's model, from its config.json (no weights)."""
    from qtune.registry.families import family_of, family_of_dir

    path = resolve_model_path(model.path)
    if Path(path).is_dir():
        return family_of_dir(path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model.trust_remote_code, revision=model.revision)
    except OSError as e:
        raise QtuneError(f"model.path: could not read the config of '{model.path}' ({str(e).splitlines()[0]})") from None
    return family_of(config)


def torch_dtype(name: str) -> "torch.dtype | str":
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def _nf4_or_fp4(kind: str) -> Callable[["QuantSection"], object]:
    def build(q: "QuantSection"):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=kind,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
            bnb_4bit_quant_storage=torch_dtype(q.quant_storage),  # a float storage lets FSDP shard them
        )

    return build


def _int8(q: "QuantSection"):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=q.int8_threshold)


QUANT_CONFIGS: dict[str, Callable[["QuantSection"], object] | None] = {  # one per qtune.registry.quant name
    "nf4": _nf4_or_fp4("nf4"),
    "fp4": _nf4_or_fp4("fp4"),
    "int8": _int8,
    "none": None,
}


def load_base_model(model: "ModelSection", quant: "QuantSection", device: str):
    """Load the (possibly quantized) base causal LM on ``device``, its 4-bit weights in the layout training needs.

    ``device`` is one device for the whole model: ``cpu``, ``cuda``, or a rank's own ``cuda:N``.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    builder = QUANT_CONFIGS[quant.method]
    kwargs: dict = {"trust_remote_code": model.trust_remote_code, "revision": model.revision}
    if builder is not None:
        kwargs["quantization_config"] = builder(quant)
        # Non-quantized parts (norms, embeddings) follow the compute dtype.
        kwargs["dtype"] = torch_dtype(quant.compute_dtype if model.dtype == "auto" else model.dtype)
    else:
        kwargs["dtype"] = torch_dtype(model.dtype)
    kwargs["device_map"] = {"": device}
    path = resolve_model_path(model.path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # missing or corrupt weights, a config transformers rejects
        if model.path in PACKAGED_MODELS:
            raise QtuneError(f"model.path: the converted cache of '{model.path}' does not load ({_first_line(e)}); "
                             f"delete {path} and it is rebuilt") from None
        raise QtuneError(
            f"model.path: could not load '{model.path}' ({_first_line(e)}); without Hub access give a "
            f"local checkpoint directory or a packaged model ({', '.join(PACKAGED_MODELS)})"
        ) from None
    keep_training_layout(loaded)  # bitsandbytes' CPU inference repack drops gradients: see bnb_layout
    return loaded


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tokenizer(model: "ModelSection"):
    from qtune.models.tokenizer import load_tokenizer_at

    return load_tokenizer_at(resolve_model_path(model.path), "model.path", model.path,
                             trust_remote_code=model.trust_remote_code, revision=model.revision)


def linear_names(model) -> list[str]:
    """Module names of every linear layer of ``model`` (4- and 8-bit ones included: they subclass ``nn.Linear``)."""
    import torch

    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def lora_config(lora: "LoraSection"):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.dora,
        use_rslora=lora.rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(base, lora: "LoraSection", quantized: bool, gradient_checkpointing: bool, sharded: bool = False,
                upcast_frozen: bool = True):
    """Prepare a (k-bit) base for training and wrap it with fresh LoRA adapters.

    ``sharded`` (FSDP) keeps every weight in one dtype, as FSDP needs: no float32 upcast of norms
    and embeddings (prepare_model_for_kbit_training) and LoRA weights in the base's dtype.
    ``upcast_frozen=False`` (``train.frozen_dtype: compute``) prepares a k-bit base as peft does but leaves its
    frozen embeddings, lm_head and norms in the dtype they were loaded in (:func:`prepare_kbit`).
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized and not sharded and upcast_frozen:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    elif quantized and not sharded:
        prepare_kbit(base, gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    return get_peft_model(base, lora_config(lora), autocast_adapter_dtype=not sharded)


def prepare_kbit(base, gradient_checkpointing: bool) -> None:
    """peft's ``prepare_model_for_kbit_training`` (peft 0.21) less its float32 cast: every base parameter frozen,
    and with checkpointing the embeddings' output made to require grad and transformers' checkpointing switched on
    with peft's (empty) arguments, so both preparations checkpoint the same way."""
    for p in base.parameters():
        p.requires_grad = False
    if gradient_checkpointing:
        base.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={})


def load_trained(run_adapter_dir: str, model: "ModelSection", quant: "QuantSection", device: str):
    """The base as the recipe loads it, with the run's adapter on top (for eval and inference)."""
    from peft import PeftModel

    base = load_base_model(model, quant, device)
    return PeftModel.from_pretrained(base, run_adapter_dir)
