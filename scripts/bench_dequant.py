"""Benchmark: qtune's NF4 dequantization vs bitsandbytes.functional.dequantize_4bit, same run, same input.

NF4, blocksize 64, double quant (QLoRA's default), bf16 out, on the Llama shapes 4096x4096, 11008x4096 and
28672x8192. Bytes moved per call = n/2 packed + 2n written + absmax storage (uint8 + fp32 absmax2 when nested);
GB/s = bytes / time, and "of copy" = that over a device-to-device copy measured here (read + write).

On CUDA: the Triton kernel over a few BLOCK sizes (the best one is reported), vs bitsandbytes' CUDA kernel.
On CPU (no Triton without the interpreter): the pure-torch reference, qtune's CPU path, vs bitsandbytes' CPU
backend, on smaller shapes unless --shapes is given. Every result is checked bit-exact against bitsandbytes.

    python scripts/bench_dequant.py [--shapes 4096x4096,11008x4096,28672x8192]
"""

from __future__ import annotations

import argparse

import torch
from timing import copy_bandwidth, device_name, time_us

import bitsandbytes.functional as F
from qtune.kernels.dequant import dequantize_reference, dequantize_triton
from qtune.kernels.storage import from_quant_state

GPU_SHAPES = "4096x4096,11008x4096,28672x8192"
CPU_SHAPES = "1024x1024,4096x4096"
TRITON_CONFIGS = [(512, 4), (1024, 4), (2048, 4), (2048, 8), (4096, 8)]  # (BLOCK, num_warps)


def storage_bytes(w) -> int:
    n = w.numel
    absmax = w.absmax.numel() * w.absmax.element_size()
    if w.nested:
        absmax += w.absmax2.numel() * 4
    return n // 2 + 2 * n + absmax


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [tuple(int(d) for d in s.split("x")) for s in (args.shapes or (GPU_SHAPES if device == "cuda" else CPU_SHAPES)).split(",")]
    copy = copy_bandwidth(device, 1 << 30 if device == "cuda" else 1 << 28)
    print(f"device: {device_name(device)}; copy bandwidth {copy:.0f} GB/s (read + write)")
    print(f"{'shape':>12} {'impl':>26} {'µs':>10} {'GB/s':>8} {'of copy':>8} {'vs bnb':>7}  exact")
    for shape in shapes:
        torch.manual_seed(0)
        weight = torch.randn(shape, dtype=torch.bfloat16, device=device)
        packed, state = F.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
        del weight
        state.dtype = torch.bfloat16
        w = from_quant_state(packed, state)
        nbytes = storage_bytes(w)
        want = F.dequantize_4bit(packed, state)
        rows = [("bitsandbytes", lambda packed=packed, state=state: F.dequantize_4bit(packed, state))]
        if device == "cuda":
            rows += [(f"qtune triton B{b} w{nw}", lambda b=b, nw=nw, w=w: dequantize_triton(w, torch.bfloat16, b, nw))
                     for b, nw in TRITON_CONFIGS]
        else:
            rows += [("qtune torch reference", lambda w=w: dequantize_reference(w, torch.bfloat16))]
        bnb_us = None
        best = None
        for name, fn in rows:
            exact = torch.equal(fn(), want)
            us = time_us(fn, device)
            bnb_us = bnb_us or us
            gbs = nbytes / us / 1e3
            print(f"{'x'.join(map(str, shape)):>12} {name:>26} {us:>10.1f} {gbs:>8.2f} {gbs / copy:>8.0%} "
                  f"{bnb_us / us:>6.2f}x  {exact}")
            if name != "bitsandbytes" and (best is None or us < best[1]):
                best = (name, us)
        print(f"{'':>12} best qtune: {best[0]}, {bnb_us / best[1]:.2f}x bitsandbytes, "
              f"{nbytes / best[1] / 1e3 / copy:.0%} of copy bandwidth")
        del packed, state, w, want


if __name__ == "__main__":
    main()
