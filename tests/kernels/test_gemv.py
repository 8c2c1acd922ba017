"""Batch-1 GEMV kernel vs dequantize-then-matmul through the torch reference."""

import pytest
import torch

from tests.kernels.conftest import diff, quantize

from qtune.kernels.gemv import GemvConfig, default_config, gemv_reference, gemv_triton
from qtune.kernels.storage import from_quant_state

# Relative to max|y|. Measured under the interpreter over these cases: fp32 2.4e-7 (summation order), fp16 5.4e-4,
# bf16 6.4e-3: the kernel keeps each weight in fp32 where the reference rounds it to the dtype first (~2 ulps
# of y at most). The bounds are about twice that.
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
# (shape, blocksize, block_k, split_k): 9x320 with 128-column steps ends on a half-full step, and in 2 splits the
# second is one block; 40x256 splits 4 blocks a row 2 + 2; 33x4096 has one block a row; 17 and 33 rows leave a
# partly empty row tile.
CASES = [((40, 256), 64, 128, 2), ((24, 96), 32, 64, 1), ((17, 512), 256, 256, 1), ((9, 320), 64, 128, 2),
         ((33, 4096), 4096, 64, 1)]


@pytest.mark.parametrize("nested", [False, True], ids=["absmax", "double-quant"])
@pytest.mark.parametrize("shape,blocksize,block_k,split_k", CASES,
                         ids=[f"{s[0]}x{s[1]}-bs{b}-k{k}-split{n}" for s, b, k, n in CASES])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gemv_matches_reference(device, nested, shape, blocksize, block_k, split_k, dtype):
    torch.manual_seed(0)
    packed, state = quantize(torch.randn(shape, device=device), "nf4", blocksize, nested)
    w = from_quant_state(packed, state)
    x = torch.randn(1, shape[1], device=device).to(dtype)
    ref, out = gemv_reference(x, w), gemv_triton(x, w, GemvConfig(8, block_k, 4, split_k))
    assert out.shape == (1, shape[0]) and out.dtype == dtype
    scale = ref.float().abs().max().item()
    assert (out.float() - ref.float()).abs().max().item() <= RTOL[dtype] * scale, diff(out, ref)


def test_gemv_refuses_rows_that_split_a_block_and_odd_tiles(device):
    packed, state = quantize(torch.randn(8, 70, device=device), "nf4", 64, False)
    with pytest.raises(ValueError, match="not a multiple of the blocksize 64"):
        gemv_triton(torch.randn(1, 70, device=device), from_quant_state(packed, state))
    packed, state = quantize(torch.randn(8, 128, device=device), "nf4", 64, False)
    with pytest.raises(ValueError, match="powers of 2"):
        gemv_triton(torch.randn(1, 128, device=device), from_quant_state(packed, state), GemvConfig(3, 512, 4, 1))


def test_default_config_splits_only_short_layers():
    assert default_config(4096, 4096).split_k == 1  # 1024 programs from the rows alone
    assert default_config(1024, 4096).split_k == 4  # k/v projections with grouped-query attention
    assert default_config(64, 256).split_k == 1  # too few steps to split


def test_gemv_reads_a_16bit_row_that_starts_mid_word(device):
    """bf16/fp16 x is read as int32 pairs; a row 2 bytes off a word boundary (a slice) gives the same y."""
    torch.manual_seed(0)
    packed, state = quantize(torch.randn(16, 128, device=device), "nf4", 64, True)
    w = from_quant_state(packed, state)
    row = torch.randn(1, 129, device=device).to(torch.bfloat16)[:, 1:]  # data_ptr % 4 == 2
    assert row.data_ptr() % 4 == 2
    assert torch.equal(gemv_triton(row, w), gemv_triton(row.clone(), w))
