"""The block nodes against plain autograd through the torch reference: same outputs, same gradients, less saved."""

import pytest
import torch

from qtune.kernels.dequant import dequantize_reference, dequantize_triton
from qtune.kernels.lora_blocks import Projection, Workspace, lora_group, lora_mlp
from qtune.kernels.storage import from_quant_state

from tests.kernels.conftest import diff, quantize


def projection(out_f: int, in_f: int, rank: int, seed: int, bias: bool = False, device: str = "cpu") -> Projection:
    """Quantized on ``device``; the adapter and bias stay on CPU (the tests that take them run the torch reference)."""
    g = torch.Generator().manual_seed(seed)
    packed, state = quantize((torch.randn(out_f, in_f, generator=g) * 0.1).to(device), "nf4", 64, True)
    a = (torch.randn(rank, in_f, generator=g) * 0.1).requires_grad_()
    b = (torch.randn(out_f, rank, generator=g) * 0.1).requires_grad_()  # non-zero, so the adapter shows
    return Projection(from_quant_state(packed, state), a, b, 2.0, torch.randn(out_f, generator=g) if bias else None)


def reference(p: Projection, x: torch.Tensor, x_lora: torch.Tensor) -> torch.Tensor:
    y = x @ dequantize_reference(p.weight, x.dtype).t() + p.scaling * (x_lora @ p.a.t()) @ p.b.t()
    return y if p.bias is None else y + p.bias


def grads(outputs, inputs) -> list:
    loss = sum((o * torch.linspace(-1, 1, o.shape[-1])).square().sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=True)  # the dropout is shared


class Saved:
    """Bytes of the distinct storages autograd saves for backward (a storage saved twice counts once)."""

    def __init__(self):
        self.storages = {}

    def pack(self, t):
        self.storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


# float32 on CPU. Measured: outputs and gradients agree with autograd through the reference to 2e-7 max
# (summation order only); 1e-5 leaves room.
@pytest.mark.parametrize("dropout", [False, True])
def test_group_matches_autograd(dropout):
    ws = Workspace(dequantize_reference, writes_out=False)
    projs = (projection(64, 64, 8, 0, bias=True), projection(32, 64, 8, 1, bias=True), projection(32, 64, 4, 2))
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    x_loras = tuple(torch.nn.functional.dropout(x, 0.3) if dropout else x for _ in projs)
    leaves = [x] + [t for p in projs for t in (p.a, p.b)]
    ours = lora_group(projs, x, x_loras, ws, torch.float32)
    theirs = [reference(p, x, xl) for p, xl in zip(projs, x_loras)]
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-5, msg=lambda m: f"output: {diff(o, t)}")
    for g_ours, g_theirs in zip(grads(ours, leaves), grads(theirs, leaves)):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-5, msg=lambda m: diff(g_ours, g_theirs))


def mlp_reference(gate, up, down, x, keep, scale):
    hm = torch.nn.functional.silu(reference(gate, x, x)) * reference(up, x, x)
    return reference(down, hm, hm if keep is None else hm * keep * scale)


@pytest.mark.parametrize("dropout", [False, True])
def test_mlp_matches_autograd_and_saves_only_x_e_u(dropout):
    ws = Workspace(dequantize_reference, writes_out=False)
    gate, up, down = projection(128, 64, 8, 0), projection(128, 64, 8, 1), projection(64, 128, 8, 2)
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(4)).requires_grad_()
    keep = (torch.rand(3, 7, 128, generator=torch.Generator().manual_seed(5)) > 0.25) if dropout else None
    leaves = [x] + [t for p in (gate, up, down) for t in (p.a, p.b)]
    saved = Saved()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        ours = lora_mlp(gate, up, down, torch.nn.functional.silu, x, (x, x), keep, 1 / 0.75, ws, torch.float32)
    theirs = mlp_reference(gate, up, down, x, keep, 1 / 0.75)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5, msg=lambda m: f"output: {diff(ours, theirs)}")
    for g_ours, g_theirs in zip(grads([ours], leaves), grads([theirs], leaves)):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-5, msg=lambda m: diff(g_ours, g_theirs))
    # saved: X (N, 64), E and U (N, 128), the three (N, 8) adapter products, the bool mask; never act(E) or Hm
    n = 3 * 7
    expected = 4 * n * (64 + 2 * 128 + 3 * 8) + (n * 128 if dropout else 0)
    assert saved.bytes == expected, (saved.bytes, expected)


def test_workspace_reuses_one_buffer_and_equals_a_fresh_dequantization(device):
    """The Triton kernel on the kernel fixture's device: CUDA tensors under TRITON_INTERPRET=0."""
    ws = Workspace(dequantize_triton, writes_out=True)
    big, small = projection(128, 64, 4, 0, device=device), projection(32, 64, 4, 1, device=device)
    w_big = ws.weight(big.weight, torch.float32).clone()
    w_small = ws.weight(small.weight, torch.float32)
    assert w_small.data_ptr() == ws.weight(big.weight, torch.float32).data_ptr()  # the same memory, reused
    torch.testing.assert_close(w_big, dequantize_reference(big.weight, torch.float32), rtol=0, atol=0)
    assert torch.equal(ws.weight(small.weight, torch.float32), dequantize_reference(small.weight, torch.float32))
