"""What ``MODEL`` means on the command line, and how each kind loads for evaluation.

The first rule that matches wins (the fallback, a Hub id, comes last):

==========  ==================================================  =====================================
kind        how it is recognised                                how it loads
==========  ==================================================  =====================================
run         a directory with ``recipe.yaml`` and ``adapter/``   the base as its recipe loads it
                                                                (quantized the same way) + adapter
export      a directory with ``qtune_export.json``              by its ``format``: merged/gptq/awq as
                                                                a transformers checkpoint, gguf as a
                                                                ``.gguf`` file (below)
gguf        a ``.gguf`` file                                    transformers ``gguf_file=``:
                                                                dequantized to float weights
checkpoint  a directory with ``config.json``                    transformers, stored dtype
packaged    a name from ``qtune models``                        its cached float32 checkpoint
hub         anything else                                       transformers from the Hub
==========  ==================================================  =====================================

A recipe's base (``qtune report``'s reference, nf4 and int8 rows) loads with :func:`load_base`: the same
quantized load training does (:func:`qtune.models.load.load_base_model`), with its tokenizer.

GGUF is evaluated by dequantizing its weights into a transformers model: the weights carry the
GGUF quantization error exactly, but the matmuls run in float (llama.cpp would also quantize the
activations to 8 bit), so the numbers measure the weight quantization alone.

What qtune picks to compute in, where the model does not say, is :func:`float_dtype`: bfloat16 on a GPU, float32
on CPU. On CPU a float16/bfloat16 checkpoint (merged exports are float16) runs in float32; see
:func:`_upcast_half_on_cpu`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qtune import rundir
from qtune.models.generation_config import gguf_stop_ids, read_stop_ids
from qtune.errors import QtuneError
from qtune.models.packaged import PACKAGED_MODELS
from qtune.registry.exports import EXPORT_FORMATS

if TYPE_CHECKING:  # pragma: no cover
    from qtune.recipe.schema import ModelSection, QuantSection

# What transformers loads a GPTQ/AWQ export with, and the qtune extra that installs it (gptqmodel 7.6 pins numpy 2.2,
# so scripts/setup_consumers.sh gives it a venv of its own).
EXPORT_BACKENDS = {"gptq": ("optimum and gptqmodel", "verify"), "awq": ("optimum and gptqmodel", "verify")}


@dataclass
class ModelSource:
    kind: str
    spec: str  # what the user gave
    path: Path | None = None
    meta: dict = field(default_factory=dict)  # qtune_export.json for exports

    @property
    def label(self) -> str:
        if self.kind == "export":
            return f"{self.meta.get('format')} export {self.path.name}"
        return f"{self.kind} {self.spec}"


def read_export_meta(directory: Path) -> dict:
    meta = rundir.read_json(directory / rundir.EXPORT_MANIFEST)
    fmt = meta.get("format")
    if fmt not in EXPORT_FORMATS:
        raise QtuneError(f"{directory / rundir.EXPORT_MANIFEST}: format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    return meta


def accepted() -> str:
    """Every kind of MODEL, in the words of the one-line errors."""
    return (f"give a run directory (recipe.yaml + adapter/), an export directory ({rundir.EXPORT_MANIFEST}), a .gguf file, "
            f"a checkpoint directory (config.json), a packaged model ({', '.join(PACKAGED_MODELS)}) or a Hub id")


def resolve_source(spec: str) -> ModelSource:
    """Classify ``spec`` (see the table in the module docstring); where nothing matches, one line says what
    ``spec`` is and which kinds are taken."""
    path = Path(spec).expanduser()
    if not spec.strip():
        raise QtuneError("MODEL: empty; give a run, export or checkpoint directory, a .gguf file, a packaged name or a Hub id")
    if path.is_dir():
        if rundir.is_finished_run(path):
            return ModelSource("run", spec, path)
        if (path / rundir.EXPORT_MANIFEST).is_file():
            return ModelSource("export", spec, path, read_export_meta(path))
        if (path / "config.json").is_file():
            from qtune.registry.families import read_config

            if not read_config(path, "MODEL").get("model_type"):
                raise QtuneError(f"MODEL: {path / 'config.json'} names no model_type, so no model class can be chosen for "
                                 f"it; give a run, export or checkpoint directory whose config.json names one")
            return ModelSource("checkpoint", spec, path)
        raise QtuneError(f"MODEL: directory '{spec}' is not a run, an export or a checkpoint (it has none of "
                         f"recipe.yaml + adapter/, {rundir.EXPORT_MANIFEST}, config.json); {accepted()}")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise QtuneError(f"MODEL: no such GGUF file '{spec}'; {accepted()}")
        return ModelSource("gguf", spec, path)
    if spec in PACKAGED_MODELS:
        return ModelSource("packaged", spec)
    if path.is_file():
        raise QtuneError(f"MODEL: '{spec}' is a file but not a .gguf model; {accepted()}")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise QtuneError(f"MODEL: no such file or directory '{spec}'; {accepted()}")
    return ModelSource("hub", spec)


@dataclass
class Loaded:
    model: object
    tokenizer: object
    source: ModelSource
    dtype: str  # compute dtype of the non-quantized parts
    notes: list[str] = field(default_factory=list)


def float_dtype(device: str) -> str:
    """What a float model computes in where qtune chooses: bfloat16 on a GPU, float32 on CPU (no fast bf16 matmul)."""
    return "bfloat16" if device == "cuda" else "float32"


def stored_float_dtype(model_path: str) -> str:
    """A recipe's base checkpoint's own float dtype, from its config.json (float32 when unstated)."""
    import json

    from qtune.models.load import resolve_model_path

    cfg = json.loads((Path(resolve_model_path(model_path)) / "config.json").read_text())
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def load_source(src: ModelSource, device: str, quant: str | None = None) -> Loaded:
    """Load ``src`` on ``device`` with its tokenizer, ready for ``eval()``.

    ``quant`` (nf4, fp4, int8) quantizes a checkpoint, packaged or Hub model at load time with
    bitsandbytes, computing in :func:`float_dtype`.
    """
    from qtune.models.bnb_layout import keep_training_layout

    if quant not in (None, "none"):
        return _load_quantized(src, device, quant)
    loaded = LOADERS[src.kind](src, device)
    _upcast_half_on_cpu(loaded, device)
    keep_training_layout(loaded.model)  # a bnb 4-bit checkpoint: eval figures on the same path on every CPU
    loaded.dtype = loaded.dtype or str(loaded.model.dtype).removeprefix("torch.")
    loaded.model.eval()
    return loaded


def load_base(model: "ModelSection", quant: "QuantSection", device: str) -> Loaded:
    """A recipe's base as training loads it (quantized at load time when ``quant`` says), with its tokenizer."""
    from qtune.models.load import load_base_model, load_tokenizer

    base = load_base_model(model, quant, device).eval()
    dtype = quant.compute_dtype if quant.method != "none" else model.dtype
    return Loaded(base, load_tokenizer(model), ModelSource("base", model.path), dtype)


def _upcast_half_on_cpu(loaded: Loaded, device: str) -> None:
    """A float16/bfloat16 checkpoint (e.g. a merged export) runs in float32 on CPU, which has no fast
    half-precision matmul (a 135M model's eval took minutes instead of seconds); the weights are unchanged.
    Quantized checkpoints keep their dtype: their kernels expect it."""
    import torch

    model = loaded.model
    if device != "cpu" or model.dtype not in (torch.float16, torch.bfloat16) or getattr(model.config, "quantization_config", None):
        return
    stored = str(model.dtype).removeprefix("torch.")
    model.float()
    loaded.dtype = "float32"
    loaded.notes.append(f"stored as {stored}, run in float32 on CPU (no fast half-precision matmul there; weights unchanged)")


def _load_quantized(src: ModelSource, device: str, method: str) -> Loaded:
    from qtune.recipe.schema import ModelSection, QuantSection

    if src.kind not in ("checkpoint", "packaged", "hub"):
        raise QtuneError(f"--quant: only a checkpoint, packaged or Hub model is quantized at load time (given a {src.kind})")
    loaded = load_base(ModelSection(path=str(src.path or src.spec)), QuantSection(method=method, compute_dtype=float_dtype(device)), device)
    loaded.source = src
    loaded.notes.append(f"quantized to {method} at load time by bitsandbytes")
    return loaded


def load_run(src: ModelSource, device: str) -> Loaded:
    """A run: its base loaded as its recipe says (quantized the same way), with the run's adapter on top."""
    from qtune.models.load import load_tokenizer, load_trained
    from qtune.recipe import load_run_recipe

    recipe = load_run_recipe(src.path)
    rundir.check_adapter(src.path)
    adapter = src.path / rundir.ADAPTER
    model = load_trained(str(adapter), recipe.model, recipe.quant, device)
    # The adapter's tokenizer carries the chat template the run trained with (the base may have none).
    tok = _tokenizer(adapter, src.spec) if (adapter / "tokenizer_config.json").is_file() else load_tokenizer(recipe.model)
    note = f"base {recipe.model.path} loaded as the recipe says (quant {recipe.quant.method}) + adapter"
    _stop_on(model, read_stop_ids(adapter))  # the run's stop ids (qtune.data.stops), not only the base's
    return Loaded(model, tok, src, recipe.quant.compute_dtype if recipe.quant.method != "none" else "", [note])


def load_export(src: ModelSource, device: str) -> Loaded:
    """An export, by its format: a gguf export as its .gguf file, the others as a transformers checkpoint."""
    fmt = src.meta["format"]
    if fmt == "gguf":
        ggufs = sorted(src.path.glob("*.gguf"))
        if not ggufs:
            raise QtuneError(f"MODEL: gguf export '{src.spec}' holds no .gguf file")
        tok_dir = src.path if (src.path / "tokenizer_config.json").is_file() else None
        return _gguf(src, ggufs[0], device, tokenizer_dir=tok_dir)
    if fmt in EXPORT_BACKENDS:
        packages, extra = EXPORT_BACKENDS[fmt]
        try:
            model = _from_pretrained(src.path, src.spec, device)
        except ImportError as e:  # transformers' message names the one of them it missed first
            raise QtuneError(f"loading the {fmt.upper()} export '{src.spec}' needs {packages} (transformers: "
                             f"{str(e).splitlines()[0].rstrip('.')}): pip install 'qtune[{extra}]'") from None
    else:
        model = _from_pretrained(src.path, src.spec, device)
    return Loaded(model, _tokenizer(_tokenizer_dir(src), src.spec), src, "")


def _tokenizer_dir(src: ModelSource):
    if (src.path / "tokenizer_config.json").is_file() or not src.meta.get("base"):
        return src.path
    from qtune.models.load import resolve_model_path

    return resolve_model_path(src.meta["base"])


def load_gguf(src: ModelSource, device: str) -> Loaded:
    """A .gguf file, dequantized to float weights by transformers, with the tokenizer it carries."""
    return _gguf(src, src.path, device, tokenizer_dir=None)


def _gguf(src: ModelSource, file: Path, device: str, tokenizer_dir) -> Loaded:
    import torch

    from qtune.models.packaged import gguf_architecture, gguf_float_model
    from qtune.models.tokenizer import gguf_tokenizer, with_pad

    dtype = float_dtype(device)
    gguf_architecture(file, "MODEL")  # not a GGUF, or a truncated header: one line naming the file
    try:
        model = gguf_float_model(file, getattr(torch, dtype), device)
    except (OSError, ValueError, KeyError) as e:  # transformers' GGUF reader on a file it cannot map to a model
        raise QtuneError(f"MODEL: transformers cannot load the GGUF file '{file}' ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); give a GGUF of a supported family "
                         f"written by llama.cpp, or a checkpoint directory") from None
    tok = _tokenizer(tokenizer_dir, src.spec) if tokenizer_dir else with_pad(gguf_tokenizer(file))
    _stop_on(model, gguf_stop_ids(file))  # the file's EOS and end-of-turn ids, as llama.cpp reads them
    note = f"{file.name} dequantized to {dtype} by transformers (weights carry the GGUF error; matmuls in float)"
    return Loaded(model, tok, src, dtype, [note])


def load_checkpoint(src: ModelSource, device: str) -> Loaded:
    """A transformers checkpoint (a directory, a packaged model's converted cache, a Hub id) in its stored dtype."""
    from qtune.models.load import resolve_model_path

    path = src.path or resolve_model_path(src.spec)
    return Loaded(_from_pretrained(path, src.spec, device), _tokenizer(path, src.spec), src, "")


LOADERS = {"run": load_run, "export": load_export, "gguf": load_gguf,
           "checkpoint": load_checkpoint, "packaged": load_checkpoint, "hub": load_checkpoint}


def _stop_on(model, ids: list[int]) -> None:
    """Generation stops on ``ids`` as well as on what the model's generation config names."""
    from qtune.models.generation_config import merge_ids

    if ids:
        model.generation_config.eos_token_id = merge_ids(ids, model.generation_config.eos_token_id)


def _from_pretrained(path, spec: str, device: str):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", device_map={"": device})
    except (OSError, ValueError) as e:  # missing files; a model_type or config transformers does not know
        raise QtuneError(f"MODEL: could not load '{spec}' ({str(e).splitlines()[0]}); without Hub access {accepted()}") from None


def _tokenizer(path, spec: str):
    from qtune.models.tokenizer import load_tokenizer_at

    return load_tokenizer_at(path, "MODEL", spec)


def export_dirs(run: Path) -> list[Path]:
    """Every export of a run: ``<run>/exports/*/qtune_export.json``, sorted by name."""
    return sorted(p.parent for p in (run / rundir.EXPORTS).glob(f"*/{rundir.EXPORT_MANIFEST}"))

