"""Benchmark: one QLoRA training step, qtune's fused kernels vs HF peft + bitsandbytes, same model, same run.

The model is a randomly initialised Llama (no download): the Llama-2-7B shape on CUDA (hidden 4096,
intermediate 11008, 32 layers, 32 heads, vocab 32000), a small one on CPU. Every linear but lm_head becomes a
bitsandbytes ``Linear4bit`` (NF4, blocksize 64, double quant) exactly as transformers' bnb quantizer builds
it, then ``prepare_model_for_kbit_training`` (gradient checkpointing) and peft LoRA r=16 on all linears.

The same model object runs as HF peft + bitsandbytes (``train.kernels: bitsandbytes``, the baseline) and in each
qtune mode: ``triton`` (each LoRA linear one fused node) and ``blocks`` (q/k/v one node, the gated MLP one node;
:mod:`qtune.kernels.blocks`), with Triton dequantization on CUDA, the torch reference on CPU; and ``fast``, the
combined fast path: ``blocks`` + ``train.frozen_dtype: compute`` (the frozen embeddings, lm_head and norms cast back
from peft's float32 to the compute dtype, in place and exactly: they were built in it) + liger-kernel's fused linear +
cross-entropy, RMSNorm and RoPE (``cross_entropy / rms_norm / rope: liger``; RMSNorm stays torch on CPU, where liger's
kernel does not run); ``compiled``: the baseline with every decoder layer ``torch.compile``-d in place
(``train.compile: layers``; the warm-up steps include the compile). ``--fast`` measures the baseline and ``fast``
only, side by side. Printed per mode and
micro batch: tokens/s over the timed steps, peak memory (CUDA: ``max_memory_allocated`` since the mode began; CPU:
peak bytes saved for backward), the losses; the modes alternate ``--repeats`` times and the ratios mode /
baseline use each mode's best run. Losses must equal the baseline's within ``--loss-tol`` (exit 1 otherwise).
A ratio measured on a GPU enters ``train.kernels: auto`` through ``qtune.kernels.dispatch.MEASURED``.

    python scripts/bench_train_step.py                      # CUDA: 7B shape, micro batches 4 x 1024 and 1 x 2048
    python scripts/bench_train_step.py --size small         # CPU default: small shape, 2 x 128
    python scripts/bench_train_step.py --fast               # the combined fast path against the baseline only
"""

from __future__ import annotations

import argparse
import os
import time
import weakref
from contextlib import nullcontext

import torch
from timing import device_name

SIZES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    # intermediate a multiple of the blocksize 64: bitsandbytes 0.50.2's CPU dequantize_4bit mis-scales rows whose
    # length is not (e.g. 1376), which would make the baseline compute a different model
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=32000),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),  # scripts/gpu_all.py --tiny (the CI rehearsal)
}


class _Box:
    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor):
        self.t = t


class SavedBytes:
    """Peak bytes held by autograd's saved tensors (a device-agnostic activation-memory figure)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        box = _Box(t)
        weakref.finalize(box, self._free, n)
        return box

    def _free(self, n: int) -> None:
        self.live -= n

    @staticmethod
    def unpack(box: _Box) -> torch.Tensor:
        return box.t


def build(size: str, device: str, dtype: torch.dtype, rank: int):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=4096, **SIZES[size])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, compress_statistics=True, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4", blocksize=64).to(device)
                setattr(parent, name, q)
    model.is_loaded_in_4bit = True
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def run_mode(model, ids, device, dtype, warmup: int, steps: int):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    meter = SavedBytes()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    losses, t0 = [], None
    for i in range(warmup + steps):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        # the saved-bytes hooks cost host time per saved tensor, more in modes that save more: CPU only, where they
        # are the memory figure; CUDA reads max_memory_allocated
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"), \
                (torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack) if device == "cpu" else nullcontext()):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else meter.peak
    del opt
    return ids.numel() * steps / seconds, peak, losses


def layer_saved_bytes(model, ids, device, dtype) -> int:
    """Bytes of the distinct storages one decoder layer saves for backward, checkpointing off (so they are seen)."""
    base = model.get_base_model()
    layer = base.model.layers[0]
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    handles = [layer.register_forward_pre_hook(lambda *a: hooks.__enter__()),
               layer.register_forward_hook(lambda *a: hooks.__exit__(None, None, None))]
    base.gradient_checkpointing_disable()
    try:
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            model(input_ids=ids, labels=ids)
    finally:
        for h in handles:
            h.remove()
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})  # as peft set it
    return sum(storages.values())


# train.kernels modes (bitsandbytes, HF peft + bnb, is the baseline); fast: blocks + the memory switches; compiled:
# the baseline with every decoder layer torch.compile-d in place (train.compile: layers, which takes bitsandbytes only)
MODES = ("bitsandbytes", "triton", "blocks", "fast", "compiled")


def set_frozen_dtype(model, dtype: torch.dtype) -> None:
    """The frozen float parameters that are not 4-bit (embeddings, lm_head, norms) in ``dtype``: what
    ``prepare_model_for_kbit_training`` upcasts, and ``train.frozen_dtype: compute`` keeps."""
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dtype.is_floating_point and type(p).__name__ != "Params4bit":
            p.data = p.data.to(dtype)


def apply_mode(model, mode: str, device: str, dtype: torch.dtype) -> int:
    """Route ``model`` through ``mode``; returns how many layers/blocks/modules a qtune mode took."""
    from qtune.kernels import blocks, liger, peft_layers
    from qtune.registry.families import FAMILIES

    layers = model.get_base_model().model.layers
    for layer in layers:  # undo an earlier mode's compile
        layer._compiled_call_impl = None
    blocks.unfuse(model)
    liger.remove(model)
    set_frozen_dtype(model, torch.float32)  # peft's upcast, as build() prepared it
    if mode == "triton":
        return peft_layers.fuse(model, "triton" if device == "cuda" else "torch")
    if mode in ("blocks", "fast"):
        counts = blocks.fuse(model, "triton" if device == "cuda" else "torch")
        taken = counts["groups"] + counts["mlps"]
        if mode == "fast":
            set_frozen_dtype(model, dtype)
            on = liger.apply(model, FAMILIES["llama"], "liger", "liger" if device == "cuda" else "torch", "liger")
            taken += sum(on.values())
        return taken
    if mode == "compiled":  # the warm-up steps absorb the compile; a fresh cache, so no recompile limit is hit
        from qtune.train.compile import compile_layers

        torch._dynamo.reset()
        return compile_layers(model)
    return 0


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # liger's Triton kernels (the fast mode) run in Triton's CPU interpreter; set before they load
        os.environ.setdefault("TRITON_INTERPRET", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), default="7b" if device == "cuda" else "small")
    ap.add_argument("--micro", nargs="+", default=["4x1024", "1x2048"] if device == "cuda" else ["2x128"],
                    help="micro batches as BATCHxSEQ, each measured for every mode")
    ap.add_argument("--batch", type=int, help="one micro batch: BATCH (with --seq), instead of --micro")
    ap.add_argument("--seq", type=int)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--fast", action="store_true", help="only the baseline and the combined fast path (--modes fast)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5 if device == "cuda" else 3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loss-tol", type=float, default=2e-2 if device == "cuda" else 1e-4,
                    help="largest |loss - baseline loss| called equal (bf16 on CUDA, fp32 on CPU)")
    args = ap.parse_args()
    micros = [(args.batch or 4, args.seq or 1024)] if args.batch or args.seq else \
        [tuple(int(v) for v in m.split("x")) for m in args.micro]
    modes = ["bitsandbytes"] + [m for m in (["fast"] if args.fast else args.modes) if m != "bitsandbytes"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = build(args.size, device, dtype, args.rank)
    model.train()
    print(f"device: {device_name(device)}; {args.size} Llama, NF4 + double quant, LoRA r={args.rank} all-linear, "
          f"gradient checkpointing, {dtype}; built in {time.perf_counter() - t0:.0f}s")
    memory_kind = "peak CUDA allocated" if device == "cuda" else "peak saved-for-backward"
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    status = 0
    for batch, seq in micros:
        ids = torch.randint(0, SIZES[args.size]["vocab_size"], (batch, seq),
                            generator=torch.Generator().manual_seed(0)).to(device)
        print(f"-- micro batch {batch}x{seq}")
        results = {mode: [] for mode in modes}
        for _ in range(args.repeats):  # modes alternate, so a slow spell of a shared machine hits all
            for mode in modes:
                with torch.no_grad():  # every mode trains the same adapter from the same start: same losses expected
                    for n, p in model.named_parameters():
                        if n in start:
                            p.copy_(start[n])
                taken = apply_mode(model, mode, device, dtype)
                tps, peak, losses = run_mode(model, ids, device, dtype, args.warmup, args.steps)
                results[mode].append((tps, peak, losses))
                print(f"{mode:>13}: {tps:10.1f} tokens/s, {memory_kind} {peak / 2**30:.3f} GiB, "
                      f"losses {[round(x, 4) for x in losses]}" + (f" ({taken} fused)" if taken else ""))
        layer_bytes = {}
        for mode in modes:
            apply_mode(model, mode, device, dtype)
            layer_bytes[mode] = layer_saved_bytes(model, ids, device, dtype)
        print("saved for backward by one decoder layer (checkpointing off): " + ", ".join(
            f"{m} {b / 2**20:.1f} MiB ({b / layer_bytes['bitsandbytes']:.2f}x)" for m, b in layer_bytes.items()))
        base_tps = max(r[0] for r in results["bitsandbytes"])
        base_peak = max(r[1] for r in results["bitsandbytes"])
        base_losses = results["bitsandbytes"][0][2]
        for mode in modes[1:]:
            tps, peak = max(r[0] for r in results[mode]), max(r[1] for r in results[mode])
            gap = max(abs(a - b) for a, b in zip(results[mode][0][2], base_losses))
            equal = "equal" if gap <= args.loss_tol else "NOT equal"
            status |= gap > args.loss_tol
            print(f"ratio {mode}/bitsandbytes at {batch}x{seq}: {tps / base_tps:.2f}x tokens/s, "
                  f"{peak / base_peak:.2f}x {memory_kind}; losses {equal} (max |Δ| {gap:.2g}, tol {args.loss_tol:g})")
    raise SystemExit(status)


if __name__ == "__main__":
    main()
