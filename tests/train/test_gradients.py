"""LoRA gradients of the sequence ``qtune train`` runs, against a pure-torch reference, on any CPU.

``qtune train`` evaluates, then trains. Each test builds the model exactly as ``train`` does
(:func:`qtune.train.steps.setup_model`), runs ``QtuneTrainer.evaluate`` and one ``Trainer`` step, and
compares every LoRA gradient with the same step through a plain float32 Llama whose frozen linears are
bitsandbytes' own dequantized weights under ``F.linear`` with the LoRA term written out. Every machine
is made to look like one with AVX512-BF16 (bitsandbytes' ``has_avx512bf16`` answers yes), where
bitsandbytes repacks 4-bit weights for its inference kernel on the first eval forward: the tests
then hold on every CPU, not only on the ones that have the instruction set.

Tolerance: float32, max |grad - ref| <= 1e-4 x max |ref| per tensor. Measured with the fix: NF4 (with
and without double quant) and FP4 bit-identical, INT8 7e-7 (bitsandbytes scales its int8 rows in a
different order), NF4 through qtune's fused Triton linear (``train.kernels: triton``, interpreter) 4e-7. Without it
(the repack left armed, the guard removed) every 4-bit case fails: the
worst LoRA gradient is off by 2.2x its own size, the mean gap 1.2e-2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qtune.recipe import load_recipe

from tests.conftest import write_recipe

QUANT = {  # case id -> quant section
    "nf4-dq": {"method": "nf4", "double_quant": True},
    "nf4": {"method": "nf4", "double_quant": False},
    "fp4": {"method": "fp4", "double_quant": False},
    "int8": {"method": "int8"},
}
KERNELS = {"nf4-dq": ["bitsandbytes", "triton"]}  # train.kernels per case (default: bitsandbytes); triton in its CPU interpreter
RTOL = 1e-4


@pytest.fixture
def avx512_bf16_cpu(monkeypatch):
    """bitsandbytes believes this CPU has AVX512-BF16: every Linear4bit built now arms the repack."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


class _Recorder:
    """Wraps the training collator to keep the batch the step trained on."""

    def __init__(self, collate):
        self.collate, self.batch = collate, None

    def __call__(self, rows):
        self.batch = self.collate(rows)
        return self.batch

    def __getattr__(self, name):
        return getattr(self.collate, name)


def _grads_after_eval_then_step(recipe, strip_guard: bool = False):
    """Build as ``train`` does, evaluate, train one step; the LoRA grads, their start values, the batch."""
    from transformers import TrainerCallback

    from qtune.data.dataset import build_datasets
    from qtune.models.load import load_tokenizer
    from qtune.train.callbacks import LayoutGuard
    from qtune.memory import PeakMemory
    from qtune.train.steps import setup_model, setup_trainer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(recipe.model)
    data = build_datasets(recipe.data, tokenizer, recipe.train.seed)
    model, _ = setup_model(recipe, "cpu")
    with torch.no_grad():  # peft starts B at zero; non-zero B gives A a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    grads: dict = {}

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    run = Path(recipe.train.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    trainer = setup_trainer(recipe, model, data, tokenizer, run, "cpu", [], PeakMemory("cpu").begin())
    trainer.add_callback(Capture())
    if strip_guard:
        trainer.remove_callback(LayoutGuard)
    trainer.data_collator = recorder = _Recorder(trainer.data_collator)
    trainer.evaluate()
    trainer.train()
    return model, grads, start, recorder.batch


def _dequantized(layer) -> torch.Tensor:
    """bitsandbytes' own float32 view of a frozen linear, as its training matmul multiplies it."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbF

    if isinstance(layer, bnb.nn.Linear4bit):
        return bnbF.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    cb, scb = layer.weight.data, layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    return bnbF.int8_vectorwise_dequant(cb, scb).float()


class _RefLoRALinear(torch.nn.Module):
    """``W x + s B A x`` with plain ``F.linear``; W frozen, A and B trainable."""

    def __init__(self, weight, lora_a, lora_b, scaling):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.lora_a, self.lora_b = torch.nn.Parameter(lora_a.clone()), torch.nn.Parameter(lora_b.clone())
        self.scaling = scaling

    def forward(self, x):  # (B, T, in) -> (B, T, out)
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling


def _reference_grads(recipe, frozen: dict, start: dict, scaling: float, batch) -> dict:
    """LoRA grads of the same step through a float32 Llama with ``frozen`` linears; keyed like peft's."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(recipe.model.path, dtype=torch.float32)
    for p in ref.parameters():
        p.requires_grad_(False)
    wrapped = {}
    for path, weight in frozen.items():
        parent, _, child = path.rpartition(".")
        prefix = f"base_model.model.{path}"
        layer = _RefLoRALinear(weight, start[f"{prefix}.lora_A.default.weight"], start[f"{prefix}.lora_B.default.weight"], scaling)
        setattr(ref.get_submodule(parent), child, layer)
        wrapped[prefix] = layer
    ref.train()
    ref(**batch).loss.backward()
    out = {}
    for prefix, layer in wrapped.items():
        out[f"{prefix}.lora_A.default.weight"] = layer.lora_a.grad
        out[f"{prefix}.lora_B.default.weight"] = layer.lora_b.grad
    return out


def _frozen_weights(model) -> dict:
    """module path (as in the plain model) -> dequantized frozen weight, for every LoRA-wrapped linear."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): _dequantized(m.base_layer)
            for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _recipe(tmp_path, tiny_llama_dir, case, kernels="bitsandbytes"):
    path = write_recipe(
        tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)},
        quant={**QUANT[case], "compute_dtype": "float32"},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        data={"max_examples": 8, "max_eval_examples": 8},
        train={"max_steps": 1, "micro_batch_size": 8, "max_grad_norm": 1e9, "lr": 1e-3,  # one batch, no clipping
               "kernels": kernels},
    )
    return load_recipe(path)


def _compare(grads: dict, ref: dict) -> dict:
    """name -> (max |Δ|, max |ref|) for every LoRA gradient."""
    assert set(grads) == set(ref) and grads, (sorted(grads)[:3], sorted(ref)[:3])
    return {n: ((grads[n] - ref[n]).abs().max().item(), ref[n].abs().max().item()) for n in ref}


@pytest.mark.parametrize("case,kernels", [(c, k) for c in QUANT for k in KERNELS.get(c, ["bitsandbytes"])])
def test_lora_gradients_match_the_dequantized_reference(tmp_path, tiny_llama_dir, avx512_bf16_cpu, case, kernels):
    recipe = _recipe(tmp_path, tiny_llama_dir, case, kernels)
    model, grads, start, batch = _grads_after_eval_then_step(recipe)
    ref = _reference_grads(recipe, _frozen_weights(model), start, recipe.lora.scaling, batch)  # frozen: unmoved by the step
    gaps = _compare(grads, ref)
    worst = max(gaps, key=lambda n: gaps[n][0] / max(gaps[n][1], 1e-12))
    for name, (diff, size) in gaps.items():
        assert diff <= RTOL * size, (
            f"{case} ({kernels}): {name}: max |grad - ref| {diff:.3e} > {RTOL} x max |ref| {size:.3e} "
            f"(worst {worst}: {gaps[worst][0]:.3e} / {gaps[worst][1]:.3e}; "
            f"mean over tensors {sum(d for d, _ in gaps.values()) / len(gaps):.3e})"
        )


@pytest.mark.parametrize("case", ["nf4-dq", "fp4"])
def test_the_reference_catches_training_through_a_repacked_weight(tmp_path, tiny_llama_dir, avx512_bf16_cpu, monkeypatch, case):
    """With qtune's protection undone (the repack left armed, the guard removed), the comparison fails."""
    from qtune.models import bnb_layout

    recipe = _recipe(tmp_path, tiny_llama_dir, case)
    frozen = {}

    def without_the_fix(base):  # keeps bitsandbytes' defaults on this "CPU"; notes the weights first
        names = {id(m): n for n, m in base.named_modules()}
        frozen.update({names[id(m)]: _dequantized(m) for m in bnb_layout.linear4bit_layers(base)})
        return 0

    monkeypatch.setattr("qtune.models.load.keep_training_layout", without_the_fix)
    model, grads, start, batch = _grads_after_eval_then_step(recipe, strip_guard=True)
    assert all(getattr(m.weight.quant_state, bnb_layout.CPU_PACKED) for m in bnb_layout.linear4bit_layers(model)), \
        "the eval forward should have repacked every 4-bit weight"
    gaps = _compare(grads, _reference_grads(recipe, frozen, start, recipe.lora.scaling, batch))
    off = [n for n, (diff, size) in gaps.items() if diff > RTOL * size]
    assert len(off) > len(gaps) // 2, f"only {len(off)} of {len(gaps)} gradients differ through the repacked base"
