"""The fused QLoRA linear: forward and every gradient vs autograd through the reference dequant."""

import pytest
import torch

from tests.kernels.conftest import diff, quantize

from qtune.kernels.dequant import dequantize_reference, dequantize_triton
from qtune.kernels.qlora_linear import qlora_linear
from qtune.kernels.storage import from_quant_state

OUT, IN, R, S = 48, 70, 8, 2.0  # 48x70 = 3360 values: not a multiple of the blocksize 64


def setup(device, dtype):
    torch.manual_seed(0)
    packed, state = quantize(torch.randn(OUT, IN, device=device), "nf4", 64, True)
    w = from_quant_state(packed, state)
    x = torch.randn(2, 5, IN, device=device, dtype=dtype, requires_grad=True)  # (B, T, in)
    a = (0.1 * torch.randn(R, IN, device=device, dtype=dtype)).requires_grad_()
    b = (0.1 * torch.randn(OUT, R, device=device, dtype=dtype)).requires_grad_()  # non-zero: the adapter counts
    bias = torch.randn(OUT, device=device, dtype=dtype, requires_grad=True)
    return w, x, a, b, bias


def reference(w, x, x_lora, a, b, bias):
    return torch.nn.functional.linear(x, dequantize_reference(w, x.dtype), bias) + (x_lora @ a.t() @ b.t()) * S


# Measured on CPU (interpreter): output and all gradients identical to autograd, in fp32 and bf16. The bounds
# (relative to the largest value) leave room for a GPU summing in another order: 1e-5 fp32, ~2 bf16 ulps.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dropout", [False, True], ids=["shared-input", "dropout-input"])
def test_forward_and_gradients_match_autograd(device, dtype, dropout):
    w, x, a, b, bias = setup(device, dtype)
    mask = (torch.rand(x.shape, device=device) > 0.3).to(dtype) / 0.7 if dropout else None
    upstream = torch.randn(2, 5, OUT, device=device, dtype=dtype)
    results = []
    for fused in (True, False):
        for t in (x, a, b, bias):
            t.grad = None
        x_lora = x * mask if dropout else x
        y = (qlora_linear(x, x_lora, w, dequantize_triton, a, b, S, bias) if fused
             else reference(w, x, x_lora, a, b, bias))
        (y * upstream).sum().backward()
        results.append([y.detach()] + [t.grad.clone() for t in (x, a, b, bias)])
    for name, got, want in zip(["y", "dX", "dA", "dB", "dbias"], *results):
        scale = want.float().abs().max().item()
        assert got.dtype == want.dtype, name
        assert (got.float() - want.float()).abs().max().item() <= TOL[dtype] * scale, f"{name}: {diff(got, want)}"


def test_dequantized_weight_is_not_saved_for_backward(device):
    """Nothing of W's size is kept between forward and backward: backward dequantizes again."""
    w, x, a, b, bias = setup(device, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = qlora_linear(x, x, w, dequantize_triton, a, b, S, bias)
    assert (OUT, IN) not in saved and (IN, OUT) not in saved, saved
    calls = []
    counting = lambda *args: calls.append(1) or dequantize_triton(*args)  # noqa: E731
    y = qlora_linear(x, x, w, counting, a, b, S, bias)
    y.sum().backward()
    assert len(calls) == 2  # once in forward, once more in backward


def test_autocast_matches_autograd(device):
    """Under bf16 autocast (how the Trainer runs bf16) with fp32 adapter weights, as in peft after
    prepare_model_for_kbit_training: backward reruns under the forward's autocast, gradients keep fp32.
    Measured on CPU: dX, dA, dB identical; y and dbias within 0.5% of their largest value (the fused path adds
    base and adapter in fp32, the reference in bf16), inside the bf16 bound used above."""
    w, x, a, b, bias = setup(device, torch.float32)
    upstream = torch.randn(2, 5, OUT, device=device)
    results = []
    for fused in (True, False):
        for t in (x, a, b, bias):
            t.grad = None
        with torch.autocast(device, dtype=torch.bfloat16):
            xb = x.to(torch.bfloat16)
            y = (qlora_linear(xb, x, w, dequantize_triton, a, b, S, bias.to(torch.bfloat16), torch.float32) if fused
                 else reference(w, xb, x, a, b, bias.to(torch.bfloat16)).float())
        (y * upstream).sum().backward()
        results.append([y.detach()] + [t.grad.clone() for t in (x, a, b, bias)])
    for name, got, want in zip(["y", "dX", "dA", "dB", "dbias"], *results):
        assert got.dtype == want.dtype == torch.float32, name
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= TOL[torch.bfloat16] * scale, f"{name}: {diff(got, want)}"


def test_gradients_only_where_asked(device):
    """An input without grad (the first layer) or a frozen adapter: the other gradients still match."""
    w, x, a, b, bias = setup(device, torch.float32)
    x_const = x.detach()
    qlora_linear(x_const, x_const, w, dequantize_triton, a, b, S).square().sum().backward()
    got = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    reference(w, x_const, x_const, a, b, None).square().sum().backward()
    for name, g, want in zip(["dA", "dB"], got, (a.grad, b.grad)):
        assert (g - want).abs().max() <= TOL[torch.float32] * want.abs().max(), f"{name}: {diff(g, want)}"
    a_frozen, b_frozen = a.detach(), b.detach()
    qlora_linear(x, x, w, dequantize_triton, a_frozen, b_frozen, S).square().sum().backward()
    got = x.grad.clone()
    x.grad = None
    reference(w, x, x, a_frozen, b_frozen, None).square().sum().backward()
    assert (got - x.grad).abs().max() <= TOL[torch.float32] * x.grad.abs().max(), f"dX: {diff(got, x.grad)}"
