"""Profile one QLoRA training step: where its time and its memory go, so each fast-path change is chosen and judged.

The model is scripts/bench_train_step.py's (the Llama-2-7B shape on CUDA, a small Llama on CPU; NF4 + double
quant, LoRA on all linears, gradient checkpointing), run in one ``train.kernels`` mode. Printed:

- **time by class of work** from torch.profiler over ``--steps`` steps: on CUDA the kernels' device time, on CPU
  every op's self time, sorted into matmul, dequantization, attention and elementwise/other by name;
- **recompute**: a step with gradient checkpointing minus one without (both measured; what checkpointing costs);
- **host gaps** (CUDA): step wall time minus the union of kernel intervals, the time the GPU waits on Python;
- **memory at peak by owner**: the packed 4-bit weights and their quantization state, the other frozen weights by
  dtype (peft's k-bit preparation upcasts embeddings, norms and lm_head to float32), the LoRA weights, their
  gradients, AdamW's state, and the rest at the peak (activations and temporaries; CUDA only), with the float32
  logits' size for scale. On CPU the peak bytes saved for backward stand in for activations.

    python scripts/profile_train_step.py                          # CUDA: 7B, 4 x 1024, bitsandbytes
    python scripts/profile_train_step.py --kernels bitsandbytes blocks --batch 1 --seq 2048
    python scripts/profile_train_step.py --size small --kernels bitsandbytes blocks --out docs/profile/cpu-small.txt
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_train_step import SIZES, SavedBytes, build
from timing import device_name

CLASSES = (  # first match wins, on the lower-cased kernel or op name
    ("dequantization", ("dequant",)),
    ("attention", ("flash", "fmha", "attention", "scaled_dot_product", "sdpa")),
    ("matmul", ("gemm", "matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "cutlass", "xmma",
                "nvjet", "cublas")),
)


def work_class(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CLASSES if any(k in low for k in keys)), "elementwise/other")


def train_step(model, ids, opt, device, dtype):
    with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def timed(model, ids, opt, device, dtype, steps: int) -> float:
    """Mean seconds per step over ``steps`` (after one warm-up step)."""
    train_step(model, ids, opt, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, ids, opt, device, dtype)
    sync()
    return (time.perf_counter() - t0) / steps


def union_us(intervals) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def profile_time(model, ids, opt, device, dtype, steps: int):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    train_step(model, ids, opt, device, dtype)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, ids, opt, device, dtype)
        if device == "cuda":
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    by_class: dict[str, float] = {}
    kernels = []
    for evt in prof.events():
        if device == "cuda":
            if evt.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = evt.time_range.end - evt.time_range.start
            kernels.append((evt.time_range.start, evt.time_range.end))
        else:
            us = evt.self_cpu_time_total  # self time: nested ops (bitsandbytes:: over aten::) are not counted twice
        by_class[work_class(evt.name)] = by_class.get(work_class(evt.name), 0.0) + us
    gaps = wall_us - union_us(kernels) if device == "cuda" else None
    return wall_us / steps, {c: us / steps for c, us in by_class.items()}, None if gaps is None else gaps / steps


def owners(model, opt) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in model.parameters():
        if p.requires_grad:
            key = "LoRA weights"
        elif p.dtype == torch.uint8:
            key = "4-bit base weights (packed)"
        else:
            key = f"other frozen weights ({str(p.dtype).removeprefix('torch.')})"
        out[key] = out.get(key, 0) + p.numel() * p.element_size()
    out["LoRA gradients"] = out["LoRA weights"]
    out["AdamW state"] = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                             if torch.is_tensor(t))
    return out


def profile_mode(model, ids, mode: str, device, dtype, steps: int, built: int, say) -> None:
    """Every figure of the module doc for ``model`` in ``mode``."""
    from qtune.kernels import apply

    mode = apply(model, mode, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    say(f"== train.kernels: {mode}")
    step_us, by_class, gaps = profile_time(model, ids, opt, device, dtype, steps)
    with_ckpt = timed(model, ids, opt, device, dtype, steps)
    model.get_base_model().gradient_checkpointing_disable()
    without = timed(model, ids, opt, device, dtype, steps)
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    say(f"step: {step_us / 1e3:.1f} ms under the profiler; {with_ckpt * 1e3:.1f} ms timed with checkpointing, "
        f"{without * 1e3:.1f} ms without")
    say("time by class of work (" + ("CUDA kernels' device time" if device == "cuda" else "ops' self CPU time")
        + ", per step):")
    for c, us in sorted(by_class.items(), key=lambda kv: -kv[1]):
        say(f"  {c:>18}: {us / 1e3:9.1f} ms  {100 * us / step_us:5.1f}%")
    say(f"  {'recompute':>18}: {(with_ckpt - without) * 1e3:9.1f} ms  {100 * (with_ckpt - without) / with_ckpt:5.1f}%"
        "  (checkpointing on minus off)")
    if gaps is not None:
        say(f"  {'host gaps':>18}: {gaps / 1e3:9.1f} ms  {100 * gaps / step_us:5.1f}%  (GPU idle)")

    meter = SavedBytes()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        train_step(model, ids, opt, device, dtype)
    owned = owners(model, opt)
    say("memory at peak by owner:")
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        params = sum(v for k, v in owned.items() if "weights" in k)
        owned["quantization state (absmax, tables)"] = built - params
        owned["activations and temporaries (the rest)"] = peak - sum(owned.values())
    else:
        peak = sum(owned.values()) + meter.peak
        owned["saved for backward (peak)"] = meter.peak
    for k, v in sorted(owned.items(), key=lambda kv: -kv[1]):
        say(f"  {k:>40}: {v / 2**30:8.3f} GiB  {100 * v / peak:5.1f}%")
    say(f"  {'peak':>40}: {peak / 2**30:8.3f} GiB" + ("" if device == "cuda" else " (the sum above)"))
    del opt


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), default="7b" if device == "cuda" else "small")
    ap.add_argument("--batch", type=int, default=4 if device == "cuda" else 2)
    ap.add_argument("--seq", type=int, default=1024 if device == "cuda" else 128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--kernels", nargs="+", default=["bitsandbytes"],
                    help="train.kernels modes to profile one after the other on one model")
    ap.add_argument("--steps", type=int, default=3 if device == "cuda" else 2)
    ap.add_argument("--out", help="also write the printout to this file")
    args = ap.parse_args()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    out = open(args.out, "w", encoding="utf-8") if args.out else None  # noqa: SIM115 - written line by line

    def say(line: str = "") -> None:  # each line reaches --out at once: a run killed at its limit keeps what it measured
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    model = build(args.size, device, dtype, args.rank)
    built = 0
    if device == "cuda":
        torch.cuda.synchronize()
        built = torch.cuda.memory_allocated()
    ids = torch.randint(0, SIZES[args.size]["vocab_size"], (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(0)).to(device)
    model.train()
    say(f"device: {device_name(device)}; {args.size} Llama, NF4 + double quant, LoRA r={args.rank} all-linear, "
        f"micro batch {args.batch}x{args.seq}, {dtype}")
    logits = args.batch * args.seq * SIZES[args.size]["vocab_size"] * 4
    say(f"(float32 logits of one micro batch: {logits / 2**30:.3f} GiB, and as much again for their gradient)")
    for mode in args.kernels:
        profile_mode(model, ids, mode, device, dtype, args.steps, built, say)
    if out:
        out.close()


if __name__ == "__main__":
    main()
