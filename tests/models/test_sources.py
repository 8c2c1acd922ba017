"""MODEL resolution: runs, exports, checkpoints, GGUF files, packaged names, Hub ids."""

from __future__ import annotations

import json

import pytest

from qtune.errors import QtuneError
from qtune.models.sources import export_dirs, resolve_source


def test_each_kind_is_recognised(tiny_run, tiny_checkpoint, tmp_path):
    assert resolve_source(str(tiny_run)).kind == "run"
    assert resolve_source(str(tiny_checkpoint)).kind == "checkpoint"
    assert resolve_source("smollm2-135m-instruct").kind == "packaged"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    export = tmp_path / "exports" / "gguf"
    export.mkdir(parents=True)
    (export / "qtune_export.json").write_text(json.dumps({"format": "gguf", "bits": 4.5, "group_size": 32, "files": ["m.gguf"]}))
    src = resolve_source(str(export))
    assert (src.kind, src.meta["bits"]) == ("export", 4.5)
    assert export_dirs(tmp_path) == [export]


def test_unusable_models_are_one_line_errors(tmp_path):
    with pytest.raises(QtuneError, match="not a run"):
        resolve_source(str(tmp_path))
    with pytest.raises(QtuneError, match="no such GGUF file"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(QtuneError, match="no such file or directory './nope'"):
        resolve_source("./nope")
    (tmp_path / "qtune_export.json").write_text(json.dumps({"format": "gguff"}))
    with pytest.raises(QtuneError, match="'gguff' is not one of merged, gptq, awq, gguf"):
        resolve_source(str(tmp_path))


def test_gguf_file_scores_like_the_checkpoint_converted_from_it():
    """The packaged checkpoint *is* the packaged GGUF dequantized to float32 by transformers, so
    loading the .gguf directly must give the same perplexity (measured: identical to ~1e-7)."""
    from qtune.eval.measure import EvalSettings, text_perplexity
    from qtune.models.sources import load_source
    from qtune.models.packaged import gguf_path

    settings = EvalSettings(window=64, stride=32, max_tokens=160)
    gguf = load_source(resolve_source(str(gguf_path("smollm2-135m-instruct"))), "cpu")
    assert gguf.dtype == "float32" and "dequantized" in gguf.notes[0]
    from_gguf = text_perplexity(gguf.model, gguf.tokenizer, settings)
    del gguf
    packaged_model = load_source(resolve_source("smollm2-135m-instruct"), "cpu")
    packaged = text_perplexity(packaged_model.model, packaged_model.tokenizer, settings)
    assert from_gguf["text_tokens"] == packaged["text_tokens"] == 160
    assert from_gguf["perplexity"] == pytest.approx(packaged["perplexity"], rel=1e-5), (from_gguf["perplexity"], packaged["perplexity"])


def test_half_precision_checkpoint_runs_in_float32_on_cpu(tiny_llama_dir, tmp_path):
    """A float16 checkpoint (what merged exports are) is upcast on CPU, weights unchanged, and says so."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from qtune.models.sources import load_source

    half = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16)
    shutil.copytree(tiny_llama_dir, tmp_path / "half")  # tokenizer files; the weights are replaced below
    half.save_pretrained(tmp_path / "half", safe_serialization=True)
    loaded = load_source(resolve_source(str(tmp_path / "half")), "cpu")
    assert loaded.model.dtype == torch.float32 and loaded.dtype == "float32"
    assert any("stored as float16" in n for n in loaded.notes), loaded.notes
    w16 = half.model.layers[0].mlp.down_proj.weight
    assert torch.equal(loaded.model.model.layers[0].mlp.down_proj.weight, w16.float())
