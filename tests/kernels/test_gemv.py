"""Batch-1 GEMV kernel vs dequantize-then-matmul through the torch reference."""

import pytest
import torch

from tests.kernels.conftest import diff, quantize

from qtune.kernels.gemv import gemv_reference, gemv_triton
from qtune.kernels.storage import from_quant_state

# Relative to max|y|. Measured under the interpreter over these cases: fp32 3e-7 (summation order), fp16 8e-4,
# bf16 7e-3: the kernel keeps each weight in fp32 where the reference rounds it to the dtype first (~2 ulps
# of y at most). The bounds are about twice that.
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
# (shape, blocksize, block_k): 9x320 with 128-column steps ends on a half-full step; 33x4096 has one block a row.
CASES = [((40, 256), 64, 128), ((24, 96), 32, 64), ((17, 512), 256, 256), ((9, 320), 64, 128), ((33, 4096), 4096, 64)]


@pytest.mark.parametrize("nested", [False, True], ids=["absmax", "double-quant"])
@pytest.mark.parametrize("shape,blocksize,block_k", CASES, ids=[f"{s[0]}x{s[1]}-bs{b}-k{k}" for s, b, k in CASES])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gemv_matches_reference(device, nested, shape, blocksize, block_k, dtype):
    torch.manual_seed(0)
    packed, state = quantize(torch.randn(shape, device=device), "nf4", blocksize, nested)
    w = from_quant_state(packed, state)
    x = torch.randn(1, shape[1], device=device).to(dtype)
    ref, out = gemv_reference(x, w), gemv_triton(x, w, block_n=8, block_k=block_k)
    assert out.shape == (1, shape[0]) and out.dtype == dtype
    scale = ref.float().abs().max().item()
    assert (out.float() - ref.float()).abs().max().item() <= RTOL[dtype] * scale, diff(out, ref)


def test_gemv_refuses_rows_that_split_a_block(device):
    packed, state = quantize(torch.randn(8, 70, device=device), "nf4", 64, False)
    with pytest.raises(ValueError, match="not a multiple of the blocksize 64"):
        gemv_triton(torch.randn(1, 70, device=device), from_quant_state(packed, state))
