"""What pinning GPTQ's numerics to one thread costs: one SmolLM2-shaped layer's Hessian + solve, timed
with N threads pinned (qtune's code) and unpinned (the same arithmetic left on N threads), interleaved.

    PYTHONPATH=. python scripts/bench_gptq_threads.py [--threads 2] [--repeats 5] [--tokens 8192]

Prints the median seconds of each and their ratio, and whether the two results are bit-identical to the
1-thread result (pinned must be; unpinned usually is not).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qtune.export import gptq
from qtune.export.threads import cpu_threads


def layer(d_in: int, d_out: int, tokens: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_in, generator=g) @ (torch.randn(d_in, d_in, generator=g) / d_in**0.5)
    return x, torch.randn(d_out, d_in, generator=g) * 0.05


def pinned(x, w):
    acc = gptq.HessianAccumulator(x.shape[1])
    for chunk in x.split(2048):  # the pipeline's calibration batches: 8 blocks x 256 tokens
        acc.add(chunk)
    return gptq.gptq_quantize(w, acc.H, 4, 64, act_order=True, grid_search=True)


def unpinned(x, w):
    H = torch.zeros(x.shape[1], x.shape[1])
    n = 0
    for chunk in x.split(2048):
        m = chunk.shape[0]
        H *= n / (n + m)
        n += m
        c = chunk * (2 / n) ** 0.5
        H += c.T @ c
    return gptq._gptq_quantize(w, H, 4, 64, False, True, 0.01, 128, True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    for d_in, d_out in ((576, 1536), (1536, 576)):  # SmolLM2's gate/up and down
        x, w = layer(d_in, d_out, args.tokens)
        with cpu_threads(1):
            ref = pinned(x, w).q
        times = {"pinned": [], "unpinned": []}
        same = {}
        with cpu_threads(args.threads):
            for _ in range(args.repeats):
                for name, fn in (("pinned", pinned), ("unpinned", unpinned)):
                    t = time.perf_counter()
                    q = fn(x, w).q
                    times[name].append(time.perf_counter() - t)
                    same[name] = same.get(name, True) and torch.equal(q, ref)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"({d_out}, {d_in}) x {args.tokens} tokens, {args.threads} threads: pinned {med['pinned']:.3f}s, unpinned "
              f"{med['unpinned']:.3f}s, ratio {med['pinned'] / med['unpinned']:.2f}; equal to 1 thread: pinned "
              f"{same['pinned']}, unpinned {same['unpinned']}", flush=True)


if __name__ == "__main__":
    main()
