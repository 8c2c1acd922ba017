"""``train.kernels: blocks`` on tiny NF4 models of each family: the loss and every LoRA gradient equal peft +
bitsandbytes', and fewer activation bytes are saved for backward."""

import pytest
import torch

from qtune.kernels import blocks

from tests.conftest import tiny_family_dir
from tests.kernels.test_lora_blocks import Saved


def build(path, gradient_checkpointing: bool = True, dropout: float = 0.0, device: str = "cpu"):
    """NF4 + double quant with float32 compute, peft's k-bit preparation, LoRA r=8 on all linears, B non-zero."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.float32,
                                                device_map={"": device})
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    return model


def step(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def block_nodes(model, ids) -> tuple[int, int]:
    """How many group and MLP nodes one forward builds: with checkpointing off, as reentrant checkpointing (peft's
    k-bit preparation) hides the nodes of a layer behind one CheckpointFunction node."""
    model.get_base_model().gradient_checkpointing_disable()
    counts = nodes(model(input_ids=ids, labels=ids).loss.grad_fn)
    return counts.get("LoRAGroupBackward", 0), counts.get("LoRAMLPBackward", 0)


def nodes(fn) -> dict[str, int]:
    """How many autograd nodes of each kind the graph ending at ``fn`` holds."""
    seen, todo, counts = set(), [fn], {}
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        counts[type(f).__name__] = counts.get(type(f).__name__, 0) + 1
        todo += [g for g, _ in f.next_functions]
    return counts


FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "phi3"]
EXPECTED = {"phi3": (0, 0)}  # fused qkv_proj and gate_up_proj: no group, no gated MLP; every linear per-linear


# Measured on CPU in float32 (max |Δ| / max |grad| over all LoRA gradients): 3e-7 (llama), 4e-7 (qwen2),
# 2e-7 (gemma2); losses equal to 1e-7. rtol 1e-4, the bound, leaves room for other summation orders.
@pytest.mark.parametrize("model_type", FAMILIES)
def test_blocks_equal_peft_bitsandbytes(model_type, tmp_path):
    path = tiny_family_dir(model_type, tmp_path / model_type)
    model = build(path)
    ids = torch.randint(3, 120, (2, 16), generator=torch.Generator().manual_seed(0))
    loss_ref, grads_ref = step(model, ids)
    counts = blocks.fuse(model, "torch")
    layers = model.config.num_hidden_layers
    assert (counts["groups"], counts["mlps"]) == EXPECTED.get(model_type, (layers, layers)), counts
    loss, grads = step(model, ids)
    assert loss == pytest.approx(loss_ref, rel=1e-6)
    for name, g in grads.items():
        ref = grads_ref[name]
        scale = ref.abs().max().clamp_min(1e-12)
        assert ((g - ref).abs().max() / scale).item() < 1e-4, f"{name}: max |Δ| {(g - ref).abs().max().item():.3g}"
    blocks.unfuse(model)
    assert step(model, ids)[0] == loss_ref  # peft's own path back, bit for bit
    blocks.fuse(model, "torch")
    assert block_nodes(model, ids) == EXPECTED.get(model_type, (layers, layers))  # the blocks ran, not a fallback


def test_blocks_save_fewer_activation_bytes_per_layer(tmp_path):
    """Without gradient checkpointing (so every layer's saves are visible): the MLP node keeps X, E, U where peft +
    bitsandbytes keeps X, E, act(E), U and Hm, so each layer saves at least two (N, intermediate) tensors less."""
    path = tiny_family_dir("llama", tmp_path / "llama")
    model = build(path, gradient_checkpointing=False)
    ids = torch.randint(3, 120, (2, 16), generator=torch.Generator().manual_seed(0))
    saved = {}
    for mode in ("peft", "blocks"):
        if mode == "blocks":
            blocks.fuse(model, "torch")
        meter = Saved()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            model(input_ids=ids, labels=ids).loss.backward()
        saved[mode] = meter.bytes
    cfg = model.config
    two_intermediates = 2 * ids.numel() * cfg.intermediate_size * 4 * cfg.num_hidden_layers
    print(f"saved for backward: peft + bnb {saved['peft']} B, blocks {saved['blocks']} B "
          f"({saved['blocks'] / saved['peft']:.3f}x)")
    assert saved["blocks"] <= saved["peft"] - two_intermediates, saved


def test_dropout_trains_through_the_blocks(tmp_path):
    """With LoRA dropout the blocks still take every layer (masks drawn per call), and the loss is finite and
    differs from the no-dropout one (the masks act); their gradients are checked against autograd in
    test_lora_blocks.py."""
    path = tiny_family_dir("llama", tmp_path / "llama")
    model = build(path, dropout=0.3)
    ids = torch.randint(3, 120, (2, 16), generator=torch.Generator().manual_seed(0))
    counts = blocks.fuse(model, "torch")
    assert counts["mlps"] == model.config.num_hidden_layers
    torch.manual_seed(0)
    loss, grads = step(model, ids)
    assert block_nodes(model, ids)[1] == model.config.num_hidden_layers
    model.eval()
    with torch.no_grad():
        clean = model(input_ids=ids, labels=ids).loss.item()
    assert torch.isfinite(torch.tensor(loss)) and loss != clean
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
