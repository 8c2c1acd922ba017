"""The Triton kernels compile for a Hopper GPU (sm_90) on a machine without one.

The interpreter accepts programs the compiler rejects, so CPU-only CI also lowers each kernel to PTX and
cubin (Triton's bundled ptxas) for sm_90, in a subprocess with TRITON_INTERPRET=0, and checks that the
double-quant scale is computed without a fused multiply-add (bitsandbytes rounds the product and the
offset addition separately; an FMA would break bit-exactness).
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
from qtune.kernels.gemv import _gemv_kernel

def lower(fn, signature, constexprs):
    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "enable_fp_fusion": False})
    assert kernel.asm["cubin"], "no cubin"
    return kernel.asm["ptx"]

tables = {"code_ptr": "*fp32", "absmax2_ptr": "*fp32", "code2_ptr": "*fp32", "offset_ptr": "*fp32"}
for out, nested in [("bf16", True), ("fp16", False), ("fp32", True)]:
    sig = {"packed_ptr": "*u8", "absmax_ptr": "*u8" if nested else "*fp32", **tables, "out_ptr": f"*{out}",
           "n": "i32", "blocksize2": "i32"}
    ptx = lower(_dequant_kernel, sig, {"NESTED": nested, "BLOCKSIZE": 64, "ROWS": 32})
    assert "fma.rn.f32" not in ptx, f"dequant {out}: fused multiply-add in the scale"
sig = {"x_ptr": "*bf16", "packed_ptr": "*u8", "absmax_ptr": "*u8", **tables, "out_ptr": "*bf16", "N": "i32",
       "K": "i32", "blocksize2": "i32"}
lower(_gemv_kernel, sig, {"NESTED": True, "BLOCKSIZE": 64, "BLOCK_N": 8, "BLOCKS_K": 8})
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
