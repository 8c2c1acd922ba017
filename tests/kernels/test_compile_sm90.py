"""The Triton kernels compile for a Hopper GPU (sm_90) on a machine without one.

The interpreter accepts programs the compiler rejects, so CPU-only CI also lowers each kernel to PTX and
cubin (Triton's bundled ptxas) for sm_90, in a subprocess with TRITON_INTERPRET=0, for the dtypes, absmax kinds
and tile shapes the benchmarks launch, and checks that the dequantization's double-quant scale is computed
without a fused multiply-add (bitsandbytes rounds the product and the offset addition separately; an FMA would
break bit-exactness) and that it writes each word's eight bf16/fp16 values with one 16-byte store.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMPILE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qtune.kernels.dequant import _dequant_kernel
from qtune.kernels.gemv import _gemv_kernel, _sum_splits_kernel

def lower(fn, signature, constexprs, num_warps=4, fp_fusion=False):
    # pointers and sizes 16-divisible, as the launcher specializes them on real weights
    aligned = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items()
               if v.startswith("*") or k in ("n", "N", "K", "blocksize2")}
    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    options = {"num_warps": num_warps, "enable_fp_fusion": fp_fusion}
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    assert kernel.asm["cubin"], "no cubin"
    return kernel.asm["ptx"]

tables = {"code_ptr": "*fp32", "absmax2_ptr": "*fp32", "code2_ptr": "*fp32", "offset_ptr": "*fp32"}
for out, nested, rows, warps in [("bf16", True, 64, 4), ("fp16", False, 128, 8), ("fp32", True, 1, 4)]:
    sig = {"words_ptr": "*i32", "absmax_ptr": "*u8" if nested else "*fp32", **tables, "out_ptr": f"*{out}",
           "n": "i32", "blocksize2": "i32"}
    ptx = lower(_dequant_kernel, sig, {"NESTED": nested, "BLOCKSIZE": 64 if rows > 1 else 4096, "ROWS": rows}, warps)
    assert "fma.rn.f32" not in ptx, f"dequant {out}: fused multiply-add in the scale"
    if out != "fp32":
        assert "st.global.v4" in ptx, f"dequant {out}: the 8 values of a word are not one 16-byte store"
# (block_n, blocks_k, num_warps, split_k): the bench_gemv configs' shapes at blocksize 64, and 1 block a step
GEMV = [("bf16", True, (4, 8, 4, 1)), ("bf16", True, (16, 8, 2, 4)), ("bf16", False, (32, 4, 4, 8)),
        ("fp16", False, (8, 8, 2, 1)), ("fp32", True, (4, 1, 4, 1)), ("fp32", True, (8, 1, 4, 2))]
for x, nested, (block_n, blocks_k, warps, split) in GEMV:
    sig = {"x_ptr": "*fp32" if x == "fp32" else "*i32", "words_ptr": "*i32", "absmax_ptr": "*u8" if nested else "*fp32",
           **tables, "out_ptr": f"*{x}" if split == 1 else "*fp32", "N": "i32", "K": "i32", "blocks_per_split": "i32",
           "blocksize2": "i32"}
    lower(_gemv_kernel, sig, {"NESTED": nested, "BLOCKSIZE": 64, "BLOCK_N": block_n, "BLOCKS_K": blocks_k,
                              "SPLIT_K": split, "X_BITS": {"bf16": 16, "fp16": -16, "fp32": 32}[x]}, warps,
          fp_fusion=True)
for out in ("bf16", "fp16", "fp32"):
    lower(_sum_splits_kernel, {"part_ptr": "*fp32", "out_ptr": f"*{out}", "N": "i32"}, {"SPLIT_K": 4, "BLOCK": 1024})
print("compiled")
"""


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton build has no bundled ptxas")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
