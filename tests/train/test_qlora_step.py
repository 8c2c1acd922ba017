"""A QLoRA optimizer step moves the adapters and nothing else."""

import pytest
import torch

from qtune.models.load import attach_lora, load_base_model
from qtune.recipe.schema import LoraSection, ModelSection, QuantSection


STORAGE = {"nf4": torch.uint8, "fp4": torch.uint8, "int8": torch.int8}


@pytest.mark.parametrize("method", list(STORAGE))
def test_one_step_leaves_quantized_base_bit_identical_and_moves_lora(tiny_llama_dir, method):
    torch.manual_seed(0)
    base = load_base_model(ModelSection(path=str(tiny_llama_dir)), QuantSection(method=method, compute_dtype="float32"), "cpu")
    model = attach_lora(base, LoraSection(rank=4, alpha=8, dropout=0.0), quantized=True, gradient_checkpointing=False)
    with torch.no_grad():  # B starts at zero in peft; make it non-zero so A gets a gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    scales = {n: _scale_of(m).clone() for n, m in model.named_modules() if _scale_of(m) is not None}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    assert len(scales) == 2 * 7, "every decoder linear should carry quantization scales"
    packed = [n for n, p in frozen.items() if p.dtype == STORAGE[method]]
    assert len(packed) == 2 * 7, f"every decoder linear should hold {STORAGE[method]} storage"

    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 49152, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    optim.step()

    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), f"frozen parameter {n} changed"
    for n, m in model.named_modules():
        if n in scales:
            assert torch.equal(_scale_of(m), scales[n]), f"quantization scales of {n} changed"
    changed = {n for n, p in model.named_parameters() if n in lora and not torch.equal(p.detach(), lora[n])}
    assert changed == set(lora), f"LoRA weights that did not move: {sorted(set(lora) - changed)[:4]}"


def _scale_of(module):
    """The per-block absmax (4-bit) or per-row SCB (LLM.int8) of a bitsandbytes linear, else None."""
    import bitsandbytes as bnb

    if isinstance(module, bnb.nn.Linear4bit):
        return module.weight.quant_state.absmax
    if isinstance(module, bnb.nn.Linear8bitLt):  # the first forward moves SCB from the weight into the state
        return module.weight.SCB if module.weight.SCB is not None else module.state.SCB
    return None
