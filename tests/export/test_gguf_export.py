"""GGUF through llama.cpp's converter: what qtune stages for it."""

import json
import shutil

from qtune.export.gguf_export import check_convertible, convert
from qtune.recipe.schema import ModelSection


def test_a_base_saved_without_architectures_converts(tmp_path, tiny_llama_dir):
    """A config saved on its own (no ``architectures``) made the converter fail to detect the model;
    qtune stages links with the field filled in from transformers' causal-LM map."""
    base = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, base)
    config = json.loads((base / "config.json").read_text())
    del config["architectures"]
    (base / "config.json").write_text(json.dumps(config))
    check_convertible(ModelSection(path=str(base)), ["Q8_0"])  # the vocabulary-only conversion of the base
    assert "architectures" not in json.loads((base / "config.json").read_text()), "the base is left as it was"
    convert(tiny_llama_dir, tmp_path / "with.gguf", "F16", vocab_only=True)  # the unstaged path still works
