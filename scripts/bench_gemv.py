"""Benchmark: batch-1 4-bit GEMV (``y = x · Wᵀ``, x one bf16 row) vs a dense bf16 GEMV and bitsandbytes.

NF4, blocksize 64, double quant. The baseline is ``F.linear`` on the bf16 weight (cuBLAS), measured in the
same run; also bitsandbytes' ``matmul_4bit`` (its own GEMV kernel for one row on CUDA). On CUDA qtune's
Triton GEMV runs over a few (BLOCK_N, BLOCK_K, num_warps) configs; on CPU qtune's path is dequantize (torch
reference) + matmul. Each result's max |diff| vs dequantize-then-matmul is printed.

Memory-bound work is only compared honestly with the weights out of L2: each implementation is timed warm (one
weight, repeated), cold (rotating through copies of the weight worth ``--cold-bytes``), and on CUDA cold inside
one CUDA graph (no launch overhead); the ratio against dense bf16 uses the graph figure.

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
COLD_BYTES = 512 * 2**20  # weights rotated through per call: well past any GPU's L2 (H100/H200: 50 MB)


def graph_us(calls, iters: int = 20) -> float:
    """µs per call of ``calls`` (one per weight copy) captured in one CUDA graph: no launch overhead, cold L2."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in calls:  # warm up (Triton compiles, cuBLAS picks) outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    return time_us(graph.replay, "cuda", warmup=2, iters=iters) / len(calls)


def rows_for(copy, x, device):
    """(name, fn, quantized) per implementation, for one copy (dense, packed, state, w) of the weight."""
    dense, packed, state, w = copy
    rows = [("bf16 dense F.linear", lambda: torch.nn.functional.linear(x, dense), False),
            ("bitsandbytes matmul_4bit", lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state), True)]
    if device == "cuda":
        rows += [(f"qtune triton {bn}x{bk} w{nw}", lambda bn=bn, bk=bk, nw=nw: gemv_triton(x, w, bn, bk, nw), True)
                 for bn, bk, nw in CONFIGS]
    else:
        rows += [("qtune torch dequant+mm", lambda: gemv_reference(x, w), True)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    ap.add_argument("--cold-bytes", type=int, default=COLD_BYTES, help="bytes of dense weight copies to rotate")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device_name(device)}")
    print("warm: one weight, called again and again (its bytes stay in L2); cold: a new copy each call, rotating "
          f"through {args.cold_bytes / 2**20:.0f} MiB of dense weights; graph: the cold calls in one CUDA graph "
          "(no launch overhead)")
    print(f"{'shape (out x in)':>18} {'impl':>26} {'warm µs':>9} {'cold µs':>9} {'graph µs':>9} "
          f"{'vs bf16 (graph)':>15} {'max|diff|':>10}")
    for spec in args.shapes.split(","):
        shape = tuple(int(d) for d in spec.split("x"))
        torch.manual_seed(0)
        n_copies = max(2, args.cold_bytes // (2 * shape[0] * shape[1])) if device == "cuda" else 2
        copies = []
        for _ in range(n_copies):
            dense = torch.randn(shape, dtype=torch.bfloat16, device=device) / shape[1] ** 0.5
            packed, state = F.quantize_4bit(dense, blocksize=64, quant_type="nf4", compress_statistics=True)
            state.dtype = torch.bfloat16
            copies.append((dense, packed, state, from_quant_state(packed, state)))
        x = torch.randn(1, shape[1], dtype=torch.bfloat16, device=device)
        want = gemv_reference(x, copies[0][3]).float()
        per_copy = [rows_for(c, x, device) for c in copies]
        base, best = None, None
        for i, (name, fn, quantized) in enumerate(per_copy[0]):
            warm = time_us(fn, device, iters=50 if device == "cuda" else 10)
            calls = [rows[i][1] for rows in per_copy]
            turn = iter(range(10**9))
            cold = time_us(lambda: calls[next(turn) % len(calls)](), device, iters=len(calls) if device == "cuda" else 4)
            graph = graph_us(calls) if device == "cuda" else float("nan")
            key = graph if device == "cuda" else cold
            base = base or key
            err = (fn().float() - want).abs().max().item() if quantized else float("nan")
            print(f"{spec:>18} {name:>26} {warm:>9.1f} {cold:>9.1f} {graph:>9.1f} {base / key:>14.2f}x {err:>10.3g}")
            if name.startswith("qtune") and (best is None or key < best[1]):
                best = (name, key)
        print(f"{'':>18} best qtune: {best[0]}, {base / best[1]:.2f}x bf16 dense "
              + ("(cold, in a CUDA graph)" if device == "cuda" else "(cold)"))


if __name__ == "__main__":
    main()
