"""Benchmark: batch-1 4-bit GEMV (``y = x · Wᵀ``, x one bf16 row) vs a dense bf16 GEMV and bitsandbytes.

NF4, blocksize 64, double quant. The baseline is ``F.linear`` on the bf16 weight (cuBLAS), measured in the
same run; also bitsandbytes' ``matmul_4bit`` (its own GEMV kernel for one row on CUDA). On CUDA qtune's
Triton GEMV runs over a few (BLOCK_N, BLOCK_K, num_warps) configs; on CPU qtune's path is dequantize (torch
reference) + matmul. Each result's max |diff| vs dequantize-then-matmul is printed.

    python scripts/bench_gemv.py [--shapes 4096x4096,11008x4096,4096x11008]
"""

from __future__ import annotations

import argparse

import torch
from timing import device_name, time_us

import bitsandbytes as bnb
import bitsandbytes.functional as F
from qtune.kernels.gemv import gemv_reference, gemv_triton
from qtune.kernels.storage import from_quant_state

CONFIGS = [(4, 512, 4), (8, 256, 4), (8, 512, 4), (16, 256, 4), (16, 512, 8), (32, 256, 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device_name(device)}")
    print(f"{'shape (out x in)':>18} {'impl':>26} {'µs':>10} {'vs bf16':>8} {'max|diff|':>10}")
    for spec in args.shapes.split(","):
        shape = tuple(int(d) for d in spec.split("x"))
        torch.manual_seed(0)
        dense = torch.randn(shape, dtype=torch.bfloat16, device=device) / shape[1] ** 0.5
        packed, state = F.quantize_4bit(dense, blocksize=64, quant_type="nf4", compress_statistics=True)
        state.dtype = torch.bfloat16
        w = from_quant_state(packed, state)
        x = torch.randn(1, shape[1], dtype=torch.bfloat16, device=device)
        want = gemv_reference(x, w).float()
        rows = [("bf16 dense F.linear", lambda: torch.nn.functional.linear(x, dense), False),
                ("bitsandbytes matmul_4bit", lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state), True)]
        if device == "cuda":
            rows += [(f"qtune triton {bn}x{bk} w{nw}", lambda bn=bn, bk=bk, nw=nw: gemv_triton(x, w, bn, bk, nw), True)
                     for bn, bk, nw in CONFIGS]
        else:
            rows += [("qtune torch dequant+mm", lambda: gemv_reference(x, w), True)]
        base_us, best = None, None
        for name, fn, quantized in rows:
            us = time_us(fn, device, iters=50 if device == "cuda" else 10)
            base_us = base_us or us
            err = (fn().float() - want).abs().max().item() if quantized else float("nan")
            print(f"{spec:>18} {name:>26} {us:>10.1f} {base_us / us:>7.2f}x {err:>10.3g}")
            if name.startswith("qtune") and (best is None or us < best[1]):
                best = (name, us)
        print(f"{'':>18} best qtune: {best[0]}, {base_us / best[1]:.2f}x bf16 dense")


if __name__ == "__main__":
    main()
