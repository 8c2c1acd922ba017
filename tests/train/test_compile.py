"""``train.compile: layers``: each decoder layer compiled in place trains as the eager model does."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_memory_switches import _recipe, _train_losses


def test_compiled_layers_train_with_the_eager_losses(tmp_path, tiny_llama_dir, monkeypatch):
    """Tiny NF4 Llama, float32, gradient checkpointing on, 3 steps: the compiled run's losses equal the eager run's
    within 1e-5 relative (measured: at most 1.8e-7), and every layer was compiled."""
    from qtune.train import compile as compile_module

    compiled = []
    real = compile_module.compile_layers

    def spy(model):
        n = real(model)
        layers = model.get_base_model().model.layers
        compiled.extend(layer._compiled_call_impl is not None for layer in layers)
        return n

    monkeypatch.setattr(compile_module, "compile_layers", spy)
    eager = _train_losses(_recipe(tmp_path, tiny_llama_dir, "eager", kernels="bitsandbytes"))
    assert not compiled
    torch._dynamo.reset()
    fast = _train_losses(_recipe(tmp_path, tiny_llama_dir, "compiled", kernels="bitsandbytes", compile="layers"))
    assert compiled and all(compiled), compiled
    gaps = [abs(a - b) / abs(a) for a, b in zip(fast, eager)]
    print(f"compile layers: losses {fast} vs eager {eager}, max relative gap {max(gaps):.2e}")
    assert len(fast) == 3 and max(gaps) < 1e-5, (fast, eager, gaps)


def test_auto_is_off_until_measured():
    from qtune.kernels.dispatch import resolve_switch

    assert resolve_switch("compile", "auto", "cpu") == "off"
    assert resolve_switch("compile", "layers", "cpu") == "layers"


@pytest.mark.parametrize("kernels", ["blocks", "triton"])
def test_compile_with_the_fused_kernels_is_refused(kernels):
    """Their per-instance forwards make dynamo recompile every layer (qtune.train.compile): refused, before any load,
    with the fix named."""
    from qtune.errors import QtuneError
    from qtune.kernels.dispatch import check_switches
    from qtune.recipe.schema import TrainSection

    with pytest.raises(QtuneError, match="train.compile: 'layers' runs with train.kernels=bitsandbytes only"):
        check_switches(TrainSection(kernels=kernels, compile="layers"), None)
    assert check_switches(TrainSection(kernels="auto", compile="layers"), "cpu")["compile"] == "layers"
