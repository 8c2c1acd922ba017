"""The vLLM kernel each quantization_config qtune writes selects (vLLM's checks, restated)."""

import pytest

from qtune.export.checkpoint import quantization_config
from qtune.export.vllm_kernels import mp_linear_kernel, quantization_method, vllm_kernel, vllm_linears

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}
LLAMA7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32}


def gptq(bits=4, group=64, sym=True, act_order=True):
    return quantization_config("gptq", bits, group, sym, act_order, 0.01)


def awq(group=64):
    return quantization_config("awq", 4, group, False, False, 0.01)


def test_fused_linear_shapes():
    assert vllm_linears(SMOLLM2) == {"qkv_proj": (576, 960), "o_proj": (576, 576), "gate_up_proj": (576, 3072),
                                     "down_proj": (1536, 576)}


@pytest.mark.parametrize("cfg,method", [
    (gptq(sym=False), "gptq"),  # asymmetric: no Marlin type (GPTQMarlinConfig.TYPE_MAP is symmetric only)
    (gptq(sym=True), "gptq_marlin"),
    (gptq(bits=8, sym=True), "gptq_marlin"),
    (gptq(bits=8, sym=False), "gptq"),
    (gptq(group=-1, sym=True), "gptq_marlin"),
    (gptq(group=256, sym=True), "gptq"),  # not in MARLIN_SUPPORTED_GROUP_SIZES
    (awq(), "awq_marlin"),
    (awq(group=256), "awq"),
])
def test_method_from_the_config_alone(cfg, method):
    assert quantization_method(cfg) == method


def test_explicit_quantization_forces_the_slow_method():
    """The AWQ card's quantization="awq" keeps vLLM off Marlin though the export qualifies."""
    assert quantization_method(awq(), "awq") == "awq"
    assert quantization_method(gptq(sym=True), "gptq") == "gptq"
    assert quantization_method(gptq(sym=True), "marlin") == "gptq_marlin"
    with pytest.raises(ValueError, match="refuses"):
        quantization_method(gptq(sym=False), "gptq_marlin")
    with pytest.raises(ValueError, match="does not read"):
        quantization_method(gptq(sym=True), "awq")


def test_gptq_needs_every_field_for_marlin():
    cfg = gptq(sym=True)
    del cfg["desc_act"]
    assert quantization_method(cfg) == "gptq"


def test_smollm2_act_order_keeps_the_576_wide_inputs_off_marlin():
    """Act-order makes Marlin check K % 128 strictly; SmolLM2's hidden size 576 is not: those linears
    fall through to exllama, on an H100/H200 gate_up_proj goes to Machete (K % 64, N % 128)."""
    k = vllm_kernel(gptq(sym=True, act_order=True), SMOLLM2, capability=90)
    assert k.kernels == {"ExllamaLinearKernel": ["qkv_proj", "o_proj"], "MacheteLinearKernel": ["gate_up_proj"],
                         "MarlinLinearKernel": ["down_proj"]} and not k.fast
    k = vllm_kernel(gptq(sym=True, act_order=False), SMOLLM2, capability=80)
    assert k.kernels == {"MarlinLinearKernel": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]} and k.fast


def test_asymmetric_gptq_never_reaches_marlin():
    k = vllm_kernel(gptq(sym=False), LLAMA7B)
    assert k.method == "gptq" and list(k.kernels) == ["GPTQLinearMethod (exllama gptq_gemm)"] and not k.fast


def test_llama_shapes_take_marlin_with_act_order():
    k = vllm_kernel(gptq(sym=True, act_order=True), LLAMA7B, capability=80)
    assert list(k.kernels) == ["MarlinLinearKernel"]


def test_awq_marlin_checks_each_layer_strictly():
    k = vllm_kernel(awq(), SMOLLM2)
    assert k.kernels == {"AWQLinearMethod (awq_gemm)": ["qkv_proj", "o_proj", "gate_up_proj"],
                         "AWQMarlinLinearMethod": ["down_proj"]}
    assert vllm_kernel(awq(), LLAMA7B).fast


@pytest.mark.parametrize("k,n,act_dtype,capability,kernel", [
    (4096, 4096, "bfloat16", 90, "MacheteLinearKernel"),
    (4096, 4096, "bfloat16", 80, "MarlinLinearKernel"),
    (576, 576, "bfloat16", 80, "TritonW4A16LinearKernel or later (not restated)"),  # exllama is float16 only
    (576, 576, "float16", 70, "ExllamaLinearKernel"),  # Marlin needs capability 7.5
])
def test_mp_kernel_order(k, n, act_dtype, capability, kernel):
    assert mp_linear_kernel(4, 64, True, k, n, capability, act_dtype) == kernel


def test_card_line_says_how_to_reach_marlin():
    from qtune.export.vllm_kernels import card_line

    assert "`gptq`" in card_line(gptq(sym=False), SMOLLM2) and "--sym" in card_line(gptq(sym=False), SMOLLM2)
    assert "--no-act-order" in card_line(gptq(sym=True), SMOLLM2)
    line = card_line(gptq(sym=True), LLAMA7B)
    assert "MacheteLinearKernel" in line and "needs" not in line  # capability 9.0: Machete before Marlin
