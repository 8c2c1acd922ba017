"""The memory switches through the code ``qtune train`` runs (``setup_model``, ``setup_trainer``) on a tiny NF4 Llama on
CPU: each trains with the torch path's losses, ``train.frozen_dtype`` reaches the loaded model, and
``train.offload_activations`` runs torch's ``save_on_cpu`` around every training forward (a no-op move on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qtune.recipe import load_recipe

from tests.conftest import write_recipe


def _recipe(tmp_path: Path, model_dir, name: str, compute_dtype: str = "float32", **train):
    path = write_recipe(
        tmp_path / f"{name}.yaml", model={"path": str(model_dir)}, quant={"method": "nf4", "compute_dtype": compute_dtype},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0}, data={"max_examples": 16, "max_eval_examples": 4},
        train={"max_steps": 3, "micro_batch_size": 4, "lr": 1e-3, "gradient_checkpointing": True,
               "output_dir": str(tmp_path / name), **train},
    )
    return load_recipe(path)


def _train_losses(recipe) -> list[float]:
    """Build as ``train`` does and run its Trainer for max_steps; the logged training losses."""
    from qtune.data.dataset import build_datasets
    from qtune.models.load import load_tokenizer
    from qtune.memory import PeakMemory
    from qtune.train.steps import setup_model, setup_trainer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(recipe.model)
    data = build_datasets(recipe.data, tokenizer, recipe.train.seed)
    model, _ = setup_model(recipe, "cpu")
    run = Path(recipe.train.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    trainer = setup_trainer(recipe, model, data, tokenizer, run, "cpu", [], PeakMemory("cpu").begin())
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_offload_trains_with_equal_losses(tmp_path, tiny_llama_dir, monkeypatch):
    """Offloaded (save_on_cpu around each training forward) and not: the same losses, bit for bit on CPU."""
    from qtune.train import trainer as trainer_module

    entered = []
    real = trainer_module.maybe_offloaded

    def spy(enabled, device_type):
        entered.append(enabled)
        return real(enabled, device_type)

    monkeypatch.setattr(trainer_module, "maybe_offloaded", spy)
    plain = _train_losses(_recipe(tmp_path, tiny_llama_dir, "plain"))
    assert entered and not any(entered)
    entered.clear()
    offloaded = _train_losses(_recipe(tmp_path, tiny_llama_dir, "offload", offload_activations=True))
    assert len(entered) == 3 and all(entered), entered  # one training forward per step, every one offloaded
    assert offloaded == plain and len(plain) == 3, (offloaded, plain)


def test_save_on_cpu_moves_nothing_on_cpu():
    """On CPU the hooks hand autograd back the very tensor it saved (no copy, nothing saved); gradients unchanged."""
    from qtune.train.offload import saved_on_host

    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(16, 16, requires_grad=True)
    (torch.tanh(x @ w) ** 2).sum().backward()
    ref = (x.grad.clone(), w.grad.clone())
    x.grad = w.grad = None
    hooks = saved_on_host("cpu")
    assert hooks.unpack_hook(hooks.pack_hook(x)) is x
    with hooks:
        y = torch.tanh(x @ w)
    (y ** 2).sum().backward()
    assert torch.equal(x.grad, ref[0]) and torch.equal(w.grad, ref[1])


# float32 compute on CPU under Triton's interpreter. Measured: liger's cross-entropy and RoPE with frozen_dtype=compute
# (float32 here) and offload give the torch path's losses to 2e-7 relative (3 steps); rtol 1e-5 leaves room.
def test_the_liger_switches_train_with_the_torch_losses(tmp_path, tiny_llama_dir):
    pytest.importorskip("liger_kernel")
    torch_path = _train_losses(_recipe(tmp_path, tiny_llama_dir, "torch", cross_entropy="torch", rope="torch"))
    fast = _train_losses(_recipe(tmp_path, tiny_llama_dir, "fast", cross_entropy="liger", rope="liger",
                                 frozen_dtype="compute", offload_activations=True))
    print(f"losses torch {torch_path}, fast {fast}")
    assert fast == pytest.approx(torch_path, rel=1e-5), (fast, torch_path)


@pytest.mark.parametrize("frozen, dtype", [("auto", torch.float32), ("float32", torch.float32), ("compute", torch.bfloat16)])
def test_frozen_dtype_reaches_the_model(tmp_path, tiny_llama_dir, frozen, dtype):
    from qtune.train.steps import setup_model

    model, _ = setup_model(_recipe(tmp_path, tiny_llama_dir, "m", compute_dtype="bfloat16", frozen_dtype=frozen), "cpu")
    frozen_float = {p.dtype for n, p in model.named_parameters() if "lora_" not in n and p.dtype.is_floating_point}
    assert frozen_float == {dtype}, frozen_float
