"""Time per training step, from FLOPs and this machine's measured speed.

Per micro step of ``N = B·T`` tokens, with ``P_base`` the frozen linears (quantized or not, plus
the lm_head), ``P_lora`` the LoRA parameters and ``A = 4·T·q_dim·layers`` the attention's
matmul FLOPs per token (QKᵀ and AV, 2 FLOPs per multiply-add, no causal saving counted):

    forward               2·N·(P_base + P_lora) + N·A
    backward              2·N·(P_base + P_lora) + 2·N·A   (gradients w.r.t. the inputs, through the frozen base)
                        + 2·N·P_lora                      (gradients w.r.t. the LoRA weights: 6·N·P_lora in all)
    recompute (ckpt)      2·N·(P_layers + P_lora) + N·A   (one more forward of the decoder layers)

Matmul time is FLOPs / the throughput of a timed matmul probe in the compute dtype. Two terms that
FLOPs miss are measured too: bitsandbytes dequantizes every 4-bit weight once per forward and once
per backward (and once more per recompute), timed per element with ``dequantize_4bit``; and the
element-wise work (norms, activations, softmax, the cross-entropy over ``B·T·V``) is
memory-bound: about three passes over the saved activations and the logits block, at the
bandwidth of a timed copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from qtune.plan import memory
from qtune.plan.shape import ModelShape, lora_targets


@dataclass
class Speed:
    matmul_flops: float  # FLOP/s of a square matmul in the compute dtype
    dequant_s_per_weight: float  # seconds to dequantize one 4-bit weight (0 for other methods)
    bandwidth: float  # bytes/s of a large tensor copy (read + write counted)
    device: str
    dtype: str


def _timed(fn, min_s: float) -> float:
    """Seconds per call of ``fn``, after one warm-up call, over at least ``min_s`` seconds."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return elapsed / calls


def probe(device: str, dtype: str, method: str, min_s: float = 0.2) -> Speed:
    """Time a matmul, a 4-bit dequantization and a copy on ``device`` (about a second in all)."""
    import torch

    dt = getattr(torch, dtype)
    n = 4096 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    flops = 2 * n**3 / _timed(lambda: a @ b, min_s)
    dequant = 0.0
    if method in ("nf4", "fp4"):
        import bitsandbytes.functional as bnbf

        w = torch.randn(2048, 2048, device=device, dtype=dt)
        packed, state = bnbf.quantize_4bit(w, blocksize=memory.BLOCK_4BIT, compress_statistics=True, quant_type=method)
        dequant = _timed(lambda: bnbf.dequantize_4bit(packed, state), min_s) / w.numel()
    x = torch.empty(32 * 2**20 // 4, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    bandwidth = 2 * x.numel() * 4 / _timed(lambda: y.copy_(x), min_s)
    return Speed(flops, dequant, bandwidth, device, dtype)


def step_flops(recipe, shape: ModelShape, batch: int, seq: int) -> dict[str, float]:
    n = batch * seq
    p_layers = sum(l.numel for l in shape.linears)
    p_base = p_layers + shape.lm_head.numel
    p_lora = sum(memory.lora_params(recipe, shape))
    attn = 4 * seq * shape.q_dim * shape.layers
    flops = {
        "forward": 2 * n * (p_base + p_lora) + n * attn,
        "backward": 2 * n * (p_base + p_lora) + 2 * n * attn + 2 * n * p_lora,
    }
    if recipe.train.gradient_checkpointing:
        flops["recompute"] = 2 * n * (p_layers + p_lora) + n * attn
    return flops


def micro_step_seconds(recipe, shape: ModelShape, batch: int, seq: int, speed: Speed) -> dict[str, float]:
    """Seconds of one micro step, by part: matmuls, 4-bit dequantization, element-wise traffic."""
    flops = sum(step_flops(recipe, shape, batch, seq).values())
    passes = 3 if recipe.train.gradient_checkpointing else 2  # forward, backward (+ recompute)
    dequant = passes * sum(l.numel for l in shape.linears) * speed.dequant_s_per_weight if recipe.quant.method in ("nf4", "fp4") else 0.0
    bd = memory.Breakdown()
    memory.activations(recipe, shape, batch, seq, bd)
    memory.logits(recipe, shape, batch, seq, bd)
    traffic = 3 * bd.total
    return {"matmul_s": flops / speed.matmul_flops, "dequant_s": dequant, "elementwise_s": traffic / speed.bandwidth}


def optimizer_step(recipe, shape: ModelShape, batch: int, seq: int, speed: Speed) -> dict:
    """Seconds and tokens of one optimizer step (``train.grad_accumulation`` micro steps)."""
    parts = micro_step_seconds(recipe, shape, batch, seq, speed)
    micro = sum(parts.values())
    accum = recipe.train.grad_accumulation
    tokens = recipe.train.effective_batch_size * seq
    return {"micro_step_s": micro, **parts, "step_s": micro * accum, "tokens": tokens,
            "tokens_per_s": tokens / (micro * accum), "flops": sum(step_flops(recipe, shape, batch, seq).values()) * accum,
            "lora_targets": len(lora_targets(shape, recipe.lora.target_modules))}
