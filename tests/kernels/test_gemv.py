"""Batch-1 GEMV kernel vs dequantize-then-matmul through the torch reference."""

import pytest
import torch

from tests.kernels.conftest import diff, quantize

from qtune.kernels.gemv import gemv_reference, gemv_triton
from qtune.kernels.storage import from_quant_state

# Measured under the interpreter: fp32 differs by <= 2e-7 of max|y| (summation order only), bf16/fp16 by 0 (each
# weight is rounded to the dtype as the reference does). The bounds allow one ulp of the dtype for a GPU's order.
RTOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("nested", [False, True], ids=["absmax", "double-quant"])
@pytest.mark.parametrize("shape,blocksize", [((40, 256), 64), ((24, 70), 32), ((17, 512), 256)],
                         ids=["40x256-bs64", "24x70-bs32", "17x512-bs256"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gemv_matches_reference(device, nested, shape, blocksize, dtype):
    torch.manual_seed(0)
    packed, state = quantize(torch.randn(shape, device=device), "nf4", blocksize, nested)
    w = from_quant_state(packed, state)
    x = torch.randn(1, shape[1], device=device).to(dtype)
    ref, out = gemv_reference(x, w), gemv_triton(x, w, block_n=8, block_k=64)
    assert out.shape == (1, shape[0]) and out.dtype == dtype
    scale = ref.float().abs().max().item()
    assert (out.float() - ref.float()).abs().max().item() <= RTOL[dtype] * scale, diff(out, ref)
