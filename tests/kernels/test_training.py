"""A short QLoRA run on a tiny NF4 Llama: ``train.kernels: triton`` reproduces the bitsandbytes run."""

import pytest
import torch

from qtune.kernels import apply
from qtune.kernels.dispatch import resolve

STEPS = 3


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return str(path)


def build(path: str, device: str, compute_dtype: str):
    """What qtune.models.load does for an nf4 recipe, spelled out with transformers and peft (no pydantic, so
    this runs on the GPU image too): NF4 + double quant, LoRA r=8 on all linears, gradient checkpointing."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, compute_dtype)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype, device_map={"": device})
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    return model


def run(path: str, kernels: str, device: str, compute_dtype: str) -> tuple[list[float], int]:
    model = build(path, device, compute_dtype)
    assert apply(model, kernels, device) == kernels
    fused = sum(hasattr(m, "_qtune_original_forward") for m in model.modules())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1)).to(device)
    model.train()
    losses = []
    for _ in range(STEPS):  # step 1 trains from B = 0; later steps run with B != 0
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, fused


# bf16 compute, QLoRA's default. Measured on CPU: triton's losses of 5 steps agree with bitsandbytes' to all 6
# printed decimals, in bf16 and in fp32; blocks' agree exactly in fp32 and to 7e-4 in bf16 (the block nodes run the
# adapter in bf16 as autocast would; peft without autocast runs it in the adapter's fp32). The bounds leave room
# for a GPU's different reduction order.
@pytest.mark.parametrize("kernels,tol", [("triton", 1e-3), ("blocks", 2e-3)])
def test_fused_run_matches_bitsandbytes_run(tiny_llama, device, kernels, tol, compute_dtype="bfloat16"):
    theirs, none_fused = run(tiny_llama, "bitsandbytes", device, compute_dtype)
    ours, fused = run(tiny_llama, kernels, device, compute_dtype)
    assert none_fused == 0 and fused == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert theirs[-1] < theirs[0]  # the run really trains
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    assert worst <= tol, f"losses {kernels} {ours} vs bitsandbytes {theirs}: max diff {worst:.3g}"


# Measured on CPU, logits of size ~0.5: the prompt's (dequantize + matmul) equal peft + bitsandbytes' exactly;
# the one-token (GEMV) logits differ by 7e-8 in fp32 and 1e-3 in bf16 (the GEMV keeps weights in fp32 where
# bitsandbytes rounds them to bf16). The bounds are about 10x that.
@pytest.mark.parametrize("compute_dtype,tol", [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_generation_forward_matches_bitsandbytes(tiny_llama, device, compute_dtype, tol):
    """No autograd: one token goes through the GEMV kernel, a prompt through dequantize + matmul."""
    model = build(tiny_llama, device, compute_dtype)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B != 0: the adapter changes the output
    model.eval()
    prompt = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(3)).to(device)
    logits = {}
    for kernels in ("bitsandbytes", "triton"):
        apply(model, kernels, device)
        with torch.no_grad():
            logits[kernels] = [model(input_ids=prompt).logits, model(input_ids=prompt[:, :1]).logits]
    for want, got in zip(logits["bitsandbytes"], logits["triton"]):
        worst = (got.float() - want.float()).abs().max().item()
        assert worst <= tol, f"logits {tuple(got.shape)}: max diff {worst:.3g}, mean {(got - want).abs().mean():.3g}"


def test_the_measured_table_is_data_with_its_provenance(tmp_path):
    """auto's table is the bench's file: each figure names its device, library versions and commit; a combination
    of switches says nothing about one switch, and a choice counts at its slowest measured shape."""
    import json

    from qtune.kernels.dispatch import MEASURED_FILE, measured

    for f in json.loads(MEASURED_FILE.read_text())["figures"]:
        assert f["ratio"] > 0 and f["device"] and f["device_kind"] and f["versions"]["torch"] and f["commit"], f
    stamp = {"device_kind": "cuda sm90", "device": "H100", "versions": {"torch": "2.11"}, "commit": "abc", "shape": "7b"}
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"figures": [
        {**stamp, "switches": {"kernels": "blocks"}, "ratio": 1.3, "micro_batch": "4x1024"},
        {**stamp, "switches": {"kernels": "blocks"}, "ratio": 1.1, "micro_batch": "1x2048"},
        {**stamp, "switches": {"kernels": "blocks", "rope": "liger"}, "ratio": 1.5, "micro_batch": "4x1024"},
        {**stamp, "switches": {"rope": "liger"}, "ratio": 1.2, "micro_batch": "4x1024"},
    ]}))
    table = measured(path)
    assert table["kernels"] == {"cuda sm90": {"blocks": 1.1}} and table["rope"] == {"cuda sm90": {"liger": 1.2}}
    assert table["compile"] == {}


def test_auto_is_the_measured_faster_path_and_triton_needs_cuda(monkeypatch):
    from qtune.kernels.dispatch import auto_mode, measured

    assert resolve("auto", "cpu") == "bitsandbytes"
    assert measured()["kernels"]["cuda sm90"] == {"triton": 0.96}  # measured on an H100 (qtune/kernels/measured.json)
    assert auto_mode("cuda sm90") == "bitsandbytes"
    faster = {"cuda sm90": {"triton": 0.96, "blocks": 1.3}}
    assert auto_mode("cuda sm90", faster) == "blocks"  # a mode enters auto through a measurement
    assert auto_mode("cuda sm80", faster) == "bitsandbytes"  # on that kind of device only
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from qtune.errors import QtuneError

    with pytest.raises(QtuneError, match="train.kernels: 'triton' needs a CUDA GPU"):
        resolve("triton", "cpu")
