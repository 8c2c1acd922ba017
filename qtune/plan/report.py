"""A recipe's plan: the peak-memory breakdown at its micro batch × max_length, the peaks of eval,
merge and GPTQ/AWQ calibration, what fits the budget, and the time per step — as text or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qtune.plan import fit, memory
from qtune.memory import rss as process_rss
from qtune.plan.budget import device_memory
from qtune.plan.shape import ModelShape, load_config, shape_of

GiB = 2**30


@dataclass
class Plan:
    recipe_model: str
    device: str
    batch: int
    seq: int
    shape: ModelShape
    breakdown: memory.Breakdown
    budget: int
    budget_what: str
    overhead: int  # bytes the process holds besides what the breakdown counts (CPU: RSS before loading)
    eval_peak: int
    merge_peak: int
    calibration_peak: int
    max_micro_batch: int
    max_seq_len: int
    time: dict | None
    speed: object | None = None  # qtune.plan.throughput.Speed of the probe, when timed

    @property
    def peak(self) -> int:
        return self.breakdown.total

    @property
    def fits(self) -> bool:
        return max(self.peak, self.eval_peak) + self.overhead <= self.budget

    def verdict(self) -> str:
        head = f"plan: ~{self.peak / GiB:.2f} GiB peak"
        if self.overhead:
            head += f" + {self.overhead / GiB:.2f} GiB process"
        head += f" of {self.budget / GiB:.1f} GiB ({self.budget_what})"
        if self.fits:
            return (f"{head} — fits; micro batch up to {self.max_micro_batch} at seq {self.seq}, "
                    f"seq up to {self.max_seq_len} at batch {self.batch}")
        return (
            f"{head} — does not fit; largest micro batch at seq {self.seq}: {self.max_micro_batch}, "
            f"largest seq at batch {self.batch}: {self.max_seq_len}"
        )

    def as_dict(self) -> dict:
        return {
            "model": self.recipe_model,
            "device": self.device,
            "micro_batch_size": self.batch,
            "seq_len": self.seq,
            "shape": {k: v for k, v in asdict(self.shape).items() if k not in ("linears", "other_params")},
            "params": self.shape.params,
            "breakdown": [asdict(i) for i in self.breakdown.items],
            "train_peak_bytes": self.peak,
            "eval_peak_bytes": self.eval_peak,
            "merge_peak_bytes": self.merge_peak,
            "calibration_peak_bytes": self.calibration_peak,
            "budget_bytes": self.budget,
            "budget": self.budget_what,
            "overhead_bytes": self.overhead,
            "fits": self.fits,
            "max_micro_batch": self.max_micro_batch,
            "max_seq_len": self.max_seq_len,
            "time": self.time,
            "verdict": self.verdict(),
        }


def make_plan(recipe, device: str, budget: int | None = None, timed: bool = True, shape: ModelShape | None = None) -> Plan:
    """Plan ``recipe`` on ``device`` within ``budget`` bytes (default: the device's memory)."""
    shape = shape or shape_of(load_config(recipe.model))
    batch, seq = recipe.train.micro_batch_size, recipe.data.max_length
    if budget is None:
        budget, what = device_memory(device)
    else:
        what = f"given, {device}"
    overhead = process_rss() if device == "cpu" else 0
    time = speed = None
    if timed:
        from qtune.plan.throughput import optimizer_step, probe

        speed = probe(
            device,
            memory.load_dtype(recipe, shape),
            recipe.quant.method,
            batch * seq,
            shape.hidden,
            shape.intermediate,
            recipe.lora.rank,
            recipe.quant.blocksize,
        )
        time = {
            **optimizer_step(recipe, shape, batch, seq, speed),
            "matmul_tflops": speed.matmul_flops / 1e12,
            "lora_matmul_tflops": speed.lora_flops / 1e12,
            "dequant_ns_per_weight": speed.dequant_s_per_weight * 1e9,
            "bandwidth_gbs": speed.bandwidth / 1e9,
        }
    return Plan(
        recipe_model=recipe.model.path,
        device=device,
        batch=batch,
        seq=seq,
        shape=shape,
        breakdown=memory.train_peak(recipe, shape, batch, seq, device),
        budget=budget,
        budget_what=what,
        overhead=overhead,
        eval_peak=memory.eval_peak(recipe, shape, batch, seq),
        merge_peak=memory.merge_peak(shape),
        calibration_peak=memory.calibration_peak(recipe, shape),
        max_micro_batch=fit.max_micro_batch(recipe, shape, seq, budget, overhead, device),
        max_seq_len=fit.max_seq_len(recipe, shape, batch, budget, overhead, device),
        time=time,
        speed=speed,
    )


def _size(n: float) -> str:
    return f"{n / GiB:8.3f} GiB" if n >= GiB / 10 else f"{n / 2**20:8.1f} MiB"


def render(plan: Plan) -> str:
    s = plan.shape
    lines = [
        f"{plan.recipe_model}: {s.model_type}, {s.layers} layers, hidden {s.hidden}, intermediate {s.intermediate}, "
        f"heads {s.heads}/{s.kv_heads} kv, vocab {s.vocab}, {s.params / 1e6:,.1f}M parameters (from config, meta device)",
        f"training peak at micro batch {plan.batch} × seq {plan.seq} on {plan.device}:",
    ]
    for i in plan.breakdown.items:
        lines.append(f"  {_size(i.bytes)}  {i.label}" + (f" [{i.note}]" if i.note else "") + ("" if i.counted else "  (not in peak)"))
    lines.append(f"  {_size(plan.peak)}  total (allocator peak)")
    if plan.overhead:
        lines.append(f"  {_size(plan.overhead)}  this process before loading (CPU: python, torch, transformers), added for the fit")
    lines += [
        f"other peaks: eval {_size(plan.eval_peak).strip()} (no grad, same batch); merge {_size(plan.merge_peak).strip()} "
        f"(CPU RAM, float32 base); GPTQ/AWQ calibration {_size(plan.calibration_peak).strip()} (export device)",
    ]
    if plan.time:
        t = plan.time
        lines.append(
            f"time per optimizer step: ~{t['step_s']:.2f}s for {t['tokens']} tokens (~{t['tokens_per_s']:.0f} tok/s at full "
            f"length; matmul {t['matmul_s']:.2f}s, LoRA matmul {t['lora_matmul_s']:.2f}s, 4-bit dequant "
            f"{t['dequant_s']:.2f}s, element-wise {t['elementwise_s']:.2f}s "
            f"per micro step) — probe: {t['matmul_tflops']:.3f} / {t['lora_matmul_tflops']:.3f} TFLOP/s base / "
            f"LoRA matmul, {t['bandwidth_gbs']:.1f} GB/s copy"
        )
    else:
        lines.append("time per optimizer step: not estimated (no probe: --no-time, or the device is not on this machine)")
    lines.append(plan.verdict())
    return "\n".join(lines)
