"""The 4-bit layout guard: no repack on qtune's models, a repack undone, a refused model, a named path.

The repack is produced with bitsandbytes' own conversion (``_convert_weight_packed_for_cpu``), the
one its ``Linear4bit.forward`` calls on a CPU with AVX512-BF16: plain torch, so it runs on any CPU.
"""

from __future__ import annotations

import pytest
import torch

from qtune.errors import QtuneError
from qtune.models import bnb_layout
from qtune.models.load import load_base_model
from qtune.recipe.schema import ModelSection, QuantSection


def _load(tiny_llama_dir, double_quant: bool, method: str = "nf4"):
    quant = QuantSection(method=method, double_quant=double_quant, compute_dtype="float32")
    return load_base_model(ModelSection(path=str(tiny_llama_dir)), quant, "cpu")


def _dequantized(model) -> dict:
    import bitsandbytes.functional as F

    return {id(m): F.dequantize_4bit(m.weight.data, m.weight.quant_state) for m in bnb_layout.linear4bit_layers(model)}


def _repack(model) -> None:
    """What bitsandbytes' first eval forward does to every 4-bit layer on an AVX512-BF16 CPU."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    for m in bnb_layout.linear4bit_layers(model):
        m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu(m.weight.data, m.weight.quant_state)


def test_qtune_loads_never_arm_the_repack(tiny_llama_dir, monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    model = _load(tiny_llama_dir, double_quant=True)
    layers = bnb_layout.linear4bit_layers(model)
    assert len(layers) == 2 * 7
    assert not any(getattr(m, bnb_layout.REPACK_SWITCH) for m in layers)
    with torch.no_grad():
        model.eval()(torch.randint(0, 1000, (1, 8)))  # the forward that would repack
    assert not any(getattr(m.weight.quant_state, bnb_layout.CPU_PACKED, False) for m in layers)
    bnb_layout.check_training_layout(model)


@pytest.mark.parametrize("double_quant", [False, True])
def test_a_repacked_model_is_restored_up_to_the_bf16_absmax(tiny_llama_dir, double_quant):
    model = _load(tiny_llama_dir, double_quant)
    before = _dequantized(model)
    _repack(model)
    with pytest.raises(QtuneError, match=r"^model: 14 4-bit layers are repacked .* no gradient; load the model through qtune"):
        bnb_layout.check_training_layout(model)
    assert bnb_layout.keep_training_layout(model) == 14
    bnb_layout.check_training_layout(model)
    after = _dequantized(model)
    for m in bnb_layout.linear4bit_layers(model):
        ref, got = before[id(m)], after[id(m)]
        assert got.shape == ref.shape and m.weight.quant_state.nested == double_quant
        # absmax went through bf16 (8 significant bits: at most 2^-8 of the block's absmax) and, when
        # double-quantized, a fresh 8-bit blockwise quantization of it (bound 2^-6); measured worst on this
        # model: 0.34% (plain) and 0.51% (double quant) of max |w|
        bound = (2**-8 if not double_quant else 2**-6) * ref.abs().max()
        diff = (got - ref).abs()
        assert diff.max() <= bound, f"max {diff.max():.3e} mean {diff.mean():.3e} > {bound:.3e}"


def test_an_armed_model_is_refused(tiny_llama_dir):
    model = _load(tiny_llama_dir, double_quant=False)
    for m in bnb_layout.linear4bit_layers(model):
        setattr(m, bnb_layout.REPACK_SWITCH, True)
    with pytest.raises(QtuneError, match=r"^model: 14 4-bit layers would be repacked"):
        bnb_layout.check_training_layout(model)


def test_describe_names_the_path_and_compute_dtype(tiny_llama_dir, monkeypatch):
    import bitsandbytes.functional as bnbF

    model = _load(tiny_llama_dir, double_quant=True)
    assert bnb_layout.describe(model) == {"path": bnb_layout.PATH_CANONICAL, "compute_dtype": "float32"}
    monkeypatch.setattr(bnbF, "has_avx512bf16", lambda: False)
    assert not bnb_layout.allow_cpu_inference_layout(model)
    assert bnb_layout.describe(model)["path"] == bnb_layout.PATH_CANONICAL
    monkeypatch.setattr(bnbF, "has_avx512bf16", lambda: True)
    assert bnb_layout.allow_cpu_inference_layout(model)
    assert bnb_layout.describe(model) == {"path": bnb_layout.PATH_CPU_BF16, "compute_dtype": "bfloat16"}
    dense = load_base_model(ModelSection(path=str(tiny_llama_dir)), QuantSection(method="none"), "cpu")
    assert bnb_layout.describe(dense) == {"path": "dense", "compute_dtype": "float32"}


def test_training_refuses_a_model_repacked_before_it_starts(tmp_path, tiny_llama_dir, monkeypatch):
    """The guard runs inside ``qtune train``: a model that arrives repacked stops it in one line."""
    from qtune.recipe import load_recipe
    from qtune.train.run import train

    from tests.conftest import write_recipe

    def arrives_repacked(model):
        _repack(model)
        return 0

    monkeypatch.setattr("qtune.models.load.keep_training_layout", arrives_repacked)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, quant={"method": "nf4"}))
    with pytest.raises(QtuneError, match="repacked for bitsandbytes' CPU inference kernel, which has no gradient"):
        train(recipe)
