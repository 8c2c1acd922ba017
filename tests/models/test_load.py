"""Loading the base: ``quant.quant_storage`` (bnb_4bit_quant_storage) stores the same 4-bit codes in a float dtype."""

import torch

from qtune.models import bnb_layout
from qtune.models.load import load_base_model
from qtune.recipe.schema import ModelSection, QuantSection


def test_float_storage_holds_the_same_weights_as_uint8(tiny_llama_dir):
    """FSDP shards only floats: the packed codes are reinterpreted, not re-quantized, so outputs are identical."""
    models = {
        storage: load_base_model(ModelSection(path=str(tiny_llama_dir)),
                                 QuantSection(method="nf4", compute_dtype="float32", quant_storage=storage), "cpu")
        for storage in ("uint8", "float32")
    }
    layers = {s: bnb_layout.linear4bit_layers(m) for s, m in models.items()}
    assert layers["uint8"] and {l.weight.dtype for l in layers["uint8"]} == {torch.uint8}
    assert {l.weight.dtype for l in layers["float32"]} == {torch.float32}
    assert all(a.weight.data.view(torch.uint8).equal(b.weight.data.view(torch.uint8).reshape(a.weight.shape))
               for a, b in zip(layers["uint8"], layers["float32"]))
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        out = {s: m(input_ids=ids).logits for s, m in models.items()}
    assert torch.equal(out["uint8"], out["float32"]), (out["uint8"] - out["float32"]).abs().max()


def test_a_gguf_file_is_converted_once_and_every_command_takes_it(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    """One rule for a ``.gguf`` model.path: validate reads its header, data inspect and train convert it
    once into the cache (as the packaged models are) and train on it; the second use hits the cache."""
    from qtune.cli import main
    from qtune.export.gguf_export import convert
    from qtune.models.load import resolve_model_path
    from tests.conftest import write_recipe

    monkeypatch.setenv("QTUNE_CACHE", str(tmp_path / "cache"))
    gguf_file = tmp_path / "tiny.gguf"
    convert(tiny_llama_dir, gguf_file, "F32")
    recipe = write_recipe(tmp_path / "r.yaml", model={"path": str(gguf_file)}, quant={"method": "nf4", "compute_dtype": "float32"},
                          train={"max_steps": 1, "output_dir": str(tmp_path / "run"), "device": "cpu"})
    assert main(["validate", str(recipe)]) == 0
    assert not (tmp_path / "cache").exists(), "validate converted the GGUF"
    assert main(["data", "inspect", str(recipe), "-n", "1"]) == 0
    assert f"converting 'tiny.gguf' once" in capsys.readouterr().err
    (converted,) = (tmp_path / "cache" / "models").iterdir()
    assert resolve_model_path(str(gguf_file)) == str(converted)
    assert main(["train", str(recipe), "--no-plan-check"]) == 0, capsys.readouterr().err[-2000:]
    assert "converting" not in capsys.readouterr().err
    with torch.no_grad():  # the converted weights are the tiny model's own (F32 GGUF: exact)
        from transformers import AutoModelForCausalLM

        a, b = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32) for p in (tiny_llama_dir, converted))
        ids = torch.arange(1, 9).unsqueeze(0)
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
