"""Benchmark: batch-1 4-bit GEMV (``y = x · Wᵀ``, x one bf16 row) vs a dense bf16 GEMV and bitsandbytes.

NF4, blocksize 64, double quant. The baseline is ``F.linear`` on the bf16 weight (cuBLAS), measured in the
same run; also bitsandbytes' ``matmul_4bit`` (its own GEMV kernel for one row on CUDA). On CUDA qtune's
Triton GEMV runs over :data:`CONFIGS` (block_n, block_k, num_warps, split_k) plus the shape's
``default_config``; a config that fails to compile or run prints its error and the run goes on. On CPU
qtune's path is dequantize (torch reference) + matmul. Each result's max |diff| vs dequantize-then-matmul is
printed.

Two times per row: ``µs`` is one call timed with CUDA events (what a Python caller sees, launch included);
``graph µs`` is one call inside a CUDA graph of 20 calls (the kernels alone, launch overhead removed), so a
row whose ``µs`` is far above its ``graph µs`` is bound by the launch, not the GPU. bitsandbytes (a ctypes call)
is not captured, so that a capture it does not support cannot upset the rows after it.

    python scripts/bench_gemv.py [--shapes 4096x4096,11008x4096,4096x11008]
"""

from __future__ import annotations

import argparse
import math

import torch
from timing import device_name, time_us

import bitsandbytes as bnb
import bitsandbytes.functional as F
from qtune.kernels.gemv import GemvConfig, default_config, gemv_reference, gemv_triton
from qtune.kernels.storage import from_quant_state

# (block_n, block_k, num_warps, split_k). A thread reuses its x values only across the rows it holds itself, which
# needs more rows a program than its warps cover: on sm_90 PTX, 4 rows x 4 warps issue ~14.5 global loads a 32-bit
# word (8 of them the code[] lookups, 4 the x pairs), 8-16 rows x 2 warps ~9-11. Fewer warps and more rows a program mean fewer
# programs, so those configs also split K to keep 4096-row layers at 512-1024 programs.
CONFIGS = [GemvConfig(4, 512, 4, 1), GemvConfig(4, 1024, 4, 2), GemvConfig(8, 512, 2, 1), GemvConfig(8, 512, 2, 2),
           GemvConfig(16, 256, 2, 2), GemvConfig(16, 512, 2, 4), GemvConfig(32, 256, 4, 8), GemvConfig(8, 1024, 4, 2)]


def time_graph_us(fn, calls: int = 20) -> float:
    """One call of ``fn`` replayed inside a CUDA graph of ``calls`` calls, in µs (NaN if capture fails)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm (compile) outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        return time_us(graph.replay, "cuda", iters=20) / calls
    except Exception:  # noqa: BLE001 - a library that cannot be captured just gets no graph time
        torch.cuda.synchronize()
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device_name(device)}")
    print(f"{'shape (out x in)':>18} {'impl':>30} {'µs':>8} {'vs bf16':>8} {'graph µs':>9} {'vs bf16':>8} "
          f"{'max|diff|':>10}")
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
            default = default_config(*shape)
            configs = [default] + [c for c in CONFIGS if c != default]
            rows += [(f"qtune {'default ' if c == default else ''}{c.block_n}x{c.block_k} w{c.num_warps} "
                      f"s{c.split_k}", lambda c=c: gemv_triton(x, w, c), True) for c in configs]
        else:
            rows += [("qtune torch dequant+mm", lambda: gemv_reference(x, w), True)]
        base, best, best_graph = None, None, None
        for name, fn, quantized in rows:
            try:
                err = (fn().float() - want).abs().max().item() if quantized else float("nan")
                us = time_us(fn, device, iters=50 if device == "cuda" else 10)
                graph_us = time_graph_us(fn) if device == "cuda" and "bitsandbytes" not in name else float("nan")
            except Exception as e:  # noqa: BLE001 - one failing config must not end the run
                print(f"{spec:>18} {name:>30} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                if device == "cuda":
                    torch.cuda.synchronize()
                continue
            base = base or (us, graph_us)
            print(f"{spec:>18} {name:>30} {us:>8.1f} {base[0] / us:>7.2f}x {graph_us:>9.1f} "
                  f"{base[1] / graph_us:>7.2f}x {err:>10.3g}")
            if name.startswith("qtune"):
                best = min(best or (name, us), (name, us), key=lambda r: r[1])
                if not math.isnan(graph_us):
                    best_graph = min(best_graph or (name, graph_us), (name, graph_us), key=lambda r: r[1])
        if best is None:
            print(f"{'':>18} best qtune: none ran")
            continue
        print(f"{'':>18} best qtune: {best[0]}, {base[0] / best[1]:.2f}x bf16 dense")
        if best_graph is not None:
            print(f"{'':>18} best qtune in a CUDA graph: {best_graph[0]}, {base[1] / best_graph[1]:.2f}x bf16 dense")


if __name__ == "__main__":
    main()
