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
