"""Dequantization: Triton kernel == torch reference == bitsandbytes, bit for bit."""

import pytest
import torch

from tests.kernels.conftest import diff, quantize

from qtune.kernels.dequant import dequantize_reference, dequantize_triton
from qtune.kernels.storage import FP4_CODE, NF4_CODE, from_quant_state

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (shape, blocksize): 33x70 is not a multiple of either blocksize (2310 values), 3x5 is odd (one pad nibble).
SHAPES = [((8, 256), 64), ((33, 70), 64), ((33, 70), 32), ((3, 5), 64), ((4, 512), 256), ((2, 4096), 4096)]


def test_code_tables_are_bitsandbytes():
    import bitsandbytes.functional as F

    assert torch.equal(torch.tensor(NF4_CODE), F.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(torch.tensor(FP4_CODE), F.get_4bit_type("fp4", device="cpu"))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True], ids=["absmax", "double-quant"])
@pytest.mark.parametrize("shape,blocksize", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"bs{v}")
def test_triton_equals_reference(device, quant_type, nested, shape, blocksize):
    torch.manual_seed(0)
    packed, state = quantize(3 * torch.randn(shape, device=device), quant_type, blocksize, nested)
    w = from_quant_state(packed, state)
    for dtype in DTYPES:
        ref, tri = dequantize_reference(w, dtype), dequantize_triton(w, dtype, block=256)
        assert tri.dtype == dtype and tri.shape == shape
        assert torch.equal(ref, tri), f"{dtype}: {diff(ref, tri)}"


# bitsandbytes' CPU C kernel reads blocks per row, so it mis-scales weights whose rows are shorter than the
# blocksize (e.g. 64x128 at blocksize 256); these cases keep blocksize <= in_features, as every real linear does.
# 33x71 has an odd row, which bitsandbytes' CPU backend sends through its pure-torch default path.
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True], ids=["absmax", "double-quant"])
@pytest.mark.parametrize("shape,blocksize", [((48, 256), 64), ((40, 96), 32), ((16, 1024), 256), ((33, 71), 64)],
                         ids=["48x256-bs64", "40x96-bs32", "16x1024-bs256", "33x71-bs64"])
def test_reference_equals_bitsandbytes(device, quant_type, nested, shape, blocksize):
    import bitsandbytes.functional as F

    torch.manual_seed(1)
    packed, state = quantize(3 * torch.randn(shape, device=device), quant_type, blocksize, nested)
    w = from_quant_state(packed, state)
    for dtype in DTYPES:
        state.dtype = dtype
        theirs, ours = F.dequantize_4bit(packed, state), dequantize_reference(w, dtype)
        assert torch.equal(theirs, ours), f"{dtype}: {diff(theirs, ours)}"


def test_nibble_order_high_first(device):
    """Two values in one byte: the even index sits in the high nibble (pinned without bitsandbytes)."""
    code = torch.tensor(NF4_CODE)
    from qtune.kernels.storage import Packed4bit

    w = Packed4bit(packed=torch.tensor([0x0F, 0x70], dtype=torch.uint8, device=device),
                   absmax=torch.tensor([2.0], device=device), code=code.to(device), shape=(4,), blocksize=64,
                   quant_type="nf4")
    expected = torch.tensor([-2.0, 2.0, 0.0, -2.0], device=device)
    assert torch.equal(dequantize_reference(w, torch.float32), expected)
    assert torch.equal(dequantize_triton(w, torch.float32), expected)
