"""GGUF through llama.cpp's converter: what qtune stages for it."""

import json
import shutil

import pytest

from qtune.export.gguf_export import check_convertible, convert
from qtune.recipe.schema import ModelSection

from tests.conftest import TINY_FAMILIES, family_tokens, tiny_family_dir, tiny_spm_tokenizer


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


@pytest.mark.parametrize("model_type", list(TINY_FAMILIES))
def test_the_end_of_turn_id_written_is_the_familys_where_it_is_not_the_eos(model_type, tmp_path):
    from qtune.export.gguf_export import end_of_turn_id
    from qtune.registry.families import family

    specials, eos = family_tokens(model_type)
    tok = tiny_spm_tokenizer(tmp_path, "LlamaTokenizer", specials, eos)
    eot = family(model_type).end_of_turn
    assert end_of_turn_id(tok, model_type) == (None if eot == tok.eos_token else tok.convert_tokens_to_ids(eot))


def test_the_gguf_names_the_end_of_turn_as_llama_cpp_reads_it(tmp_path):
    """The converter writes the EOS only; qtune adds ``tokenizer.ggml.eot_token_id`` and types the token CONTROL
    (Gemma's <end_of_turn> here; every family's full export: tests/models/test_families.py, which runs llama.cpp
    on it). Read back with the gguf package, the fields llama.cpp reads: it ends generation on each of these ids."""
    import gguf
    from transformers import AutoTokenizer

    from qtune.models.generation_config import gguf_stops
    from qtune.export.gguf_export import end_of_turn_id, mark_end_of_turn

    base = tiny_family_dir("gemma2", tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    path = tmp_path / "vocab.gguf"
    convert(base, path, "F16", vocab_only=True)
    written = gguf_stops(gguf.GGUFReader(str(path)))
    assert written == {"eos": tok.eos_token_id}
    eot = end_of_turn_id(tok, "gemma2")
    mark_end_of_turn(path, eot)
    reader = gguf.GGUFReader(str(path))
    assert gguf_stops(reader) == {"eos": tok.eos_token_id, "eot": tok.convert_tokens_to_ids("<end_of_turn>")}
    assert reader.fields["tokenizer.ggml.tokens"].contents()[eot] == "<end_of_turn>"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[eot] == gguf.TokenType.CONTROL
    stamp = path.stat().st_mtime_ns
    mark_end_of_turn(path, eot)  # already marked: the file is left alone
    assert path.stat().st_mtime_ns == stamp
