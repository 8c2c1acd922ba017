"""Time per training step, from FLOPs and this machine's measured speed.

Per micro step of ``N = B·T`` tokens, with ``P_base`` the frozen linears (quantized or not, plus
the lm_head), ``P_lora`` the LoRA parameters and ``A = 4·T·q_dim·layers`` the attention's
matmul FLOPs per token (QKᵀ and AV, 2 FLOPs per multiply-add, no causal saving counted):

    forward               2·N·(P_base + P_lora) + N·A
    backward              2·N·(P_base + P_lora) + 2·N·A   (gradients w.r.t. the inputs, through the frozen base)
                        + 2·N·P_lora                      (gradients w.r.t. the LoRA weights: 6·N·P_lora in all)
    recompute (ckpt)      2·N·(P_layers + P_lora) + N·A   (one more forward of the decoder layers)

Matmul time is FLOPs / the throughput of timed matmul probes in the compute dtype at the step's own
shapes: ``(N, h) @ (h, I)`` for the base and lm_head, ``(N, h) @ (h, r)`` for LoRA's thin matmuls
(far slower per FLOP on a CPU). Two terms that
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
from qtune.registry.quant import FOUR_BIT


@dataclass
class Speed:
    matmul_flops: float  # FLOP/s of (N, h) @ (h, I) in the compute dtype
    lora_flops: float  # FLOP/s of (N, h) @ (h, r)
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


def probe(device: str, dtype: str, method: str, tokens: int, hidden: int, intermediate: int, rank: int,
          blocksize: int, min_s: float = 0.2) -> Speed:
    """Time the step's matmuls, a 4-bit dequantization and a copy on ``device`` (about a second in all)."""
    import torch

    dt = getattr(torch, dtype)
    n = max(1, min(tokens, 8192))
    x = torch.randn(n, hidden, device=device, dtype=dt)
    w, a = torch.randn(hidden, intermediate, device=device, dtype=dt), torch.randn(hidden, rank, device=device, dtype=dt)
    flops = 2 * n * hidden * intermediate / _timed(lambda: x @ w, min_s)
    lora = 2 * n * hidden * rank / _timed(lambda: x @ a, min_s)
    dequant = 0.0
    if method in FOUR_BIT:
        import bitsandbytes.functional as bnbf

        big = torch.randn(2048, 2048, device=device, dtype=dt)
        packed, state = bnbf.quantize_4bit(big, blocksize=blocksize, compress_statistics=True, quant_type=method)
        dequant = _timed(lambda: bnbf.dequantize_4bit(packed, state), min_s) / big.numel()
    src = torch.empty(32 * 2**20 // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _timed(lambda: dst.copy_(src), min_s)
    return Speed(flops, lora, dequant, bandwidth, device, dtype)


def step_flops(recipe, shape: ModelShape, batch: int, seq: int) -> dict[str, float]:
    """FLOPs of one micro step by part; ``lora_*`` are the thin LoRA matmuls, timed at their own speed."""
    n = batch * seq
    p_layers = sum(l.numel for l in shape.linears)
    p_base = p_layers + shape.lm_head.numel
    p_lora = sum(memory.lora_params(recipe, shape))
    attn = 4 * seq * shape.q_dim * shape.layers
    flops = {
        "forward": 2 * n * p_base + n * attn, "lora_forward": 2 * n * p_lora,
        "backward": 2 * n * p_base + 2 * n * attn, "lora_backward": 4 * n * p_lora,
    }
    if recipe.train.gradient_checkpointing:
        flops["recompute"] = 2 * n * p_layers + n * attn
        flops["lora_recompute"] = 2 * n * p_lora
    return flops


def micro_step_seconds(recipe, shape: ModelShape, batch: int, seq: int, speed: Speed) -> dict[str, float]:
    """Seconds of one micro step, by part: matmuls, 4-bit dequantization, element-wise traffic."""
    parts = step_flops(recipe, shape, batch, seq)
    lora = sum(v for k, v in parts.items() if k.startswith("lora_"))
    base = sum(parts.values()) - lora
    passes = 3 if recipe.train.gradient_checkpointing else 2  # forward, backward (+ recompute)
    dequant = passes * sum(l.numel for l in shape.linears) * speed.dequant_s_per_weight if recipe.quant.method in FOUR_BIT else 0.0
    bd = memory.Breakdown()
    memory.activations(recipe, shape, batch, seq, bd, speed.device)
    memory.logits(recipe, shape, batch, seq, bd, speed.device)
    traffic = 3 * bd.total
    return {
        "matmul_s": base / speed.matmul_flops,
        "lora_matmul_s": lora / speed.lora_flops,
        "dequant_s": dequant,
        "elementwise_s": traffic / speed.bandwidth,
    }


def optimizer_step(recipe, shape: ModelShape, batch: int, seq: int, speed: Speed) -> dict:
    """Seconds and tokens of one optimizer step (``train.grad_accumulation`` micro steps)."""
    parts = micro_step_seconds(recipe, shape, batch, seq, speed)
    micro = sum(parts.values())
    accum = recipe.train.grad_accumulation
    tokens = recipe.train.effective_batch_size * seq
    return {
        "micro_step_s": micro,
        **parts,
        "step_s": micro * accum,
        "tokens": tokens,
        "tokens_per_s": tokens / (micro * accum),
        "flops": sum(step_flops(recipe, shape, batch, seq).values()) * accum,
        "lora_targets": len(lora_targets(shape, recipe.lora.target_modules)),
    }
