"""Benchmark: one QLoRA training step, qtune's fused kernels vs HF peft + bitsandbytes, same model, same run.

The model is a randomly initialised Llama (no download): the Llama-2-7B shape on CUDA (hidden 4096,
intermediate 11008, 32 layers, 32 heads, vocab 32000), a small one on CPU. Every linear but lm_head becomes a
bitsandbytes ``Linear4bit`` (NF4, blocksize 64, double quant) exactly as transformers' bnb quantizer builds
it, then ``prepare_model_for_kbit_training`` (gradient checkpointing) and peft LoRA r=16 on all linears.

The same model object runs first as HF peft + bitsandbytes (``train.kernels: bitsandbytes``), then with
``qtune.kernels`` routing the LoRA layers through the fused QLoRA linear: Triton dequant on CUDA, the torch
reference on CPU (Triton needs CUDA there). Printed per mode: tokens/s over the timed steps, peak memory
(CUDA: ``max_memory_allocated`` since the mode began; CPU: peak bytes saved for backward), the losses;
the modes alternate ``--repeats`` times and the ratios qtune / baseline use each mode's best run.

    python scripts/bench_train_step.py                      # CUDA: 7B shape, micro batch 4 x 1024
    python scripts/bench_train_step.py --size small         # CPU default: small shape, 2 x 128
"""

from __future__ import annotations

import argparse
import time
import weakref

import torch
from timing import device_name

SIZES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
    # intermediate a multiple of the blocksize 64: bitsandbytes 0.50.2's CPU dequantize_4bit mis-scales rows whose
    # length is not (e.g. 1376), which would make the baseline compute a different model
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=32000),
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
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"), \
                torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
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


def main() -> None:
    from qtune.kernels import peft_layers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), default="7b" if device == "cuda" else "small")
    ap.add_argument("--batch", type=int, default=4 if device == "cuda" else 2)
    ap.add_argument("--seq", type=int, default=1024 if device == "cuda" else 128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5 if device == "cuda" else 3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = build(args.size, device, dtype, args.rank)
    ids = torch.randint(0, SIZES[args.size]["vocab_size"], (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(0)).to(device)
    model.train()
    print(f"device: {device_name(device)}; {args.size} Llama, NF4 + double quant, LoRA r={args.rank} all-linear, "
          f"micro batch {args.batch}x{args.seq}, gradient checkpointing, {dtype}; built in {time.perf_counter() - t0:.0f}s")
    memory_kind = "peak CUDA allocated" if device == "cuda" else "peak saved-for-backward"
    results = {"bitsandbytes": [], "qtune": []}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for _ in range(args.repeats):  # modes alternate, so a slow spell of a shared machine hits both
        for mode in ("bitsandbytes", "qtune"):
            with torch.no_grad():  # both modes train the same adapter from the same start: same losses expected
                for n, p in model.named_parameters():
                    if n in start:
                        p.copy_(start[n])
            if mode == "qtune":
                layers = peft_layers.fuse(model, "triton" if device == "cuda" else "torch")
            else:
                peft_layers.unfuse(model)
            tps, peak, losses = run_mode(model, ids, device, dtype, args.warmup, args.steps)
            results[mode].append((tps, peak))
            print(f"{mode:>13}: {tps:10.1f} tokens/s, {memory_kind} {peak / 2**30:.3f} GiB, "
                  f"losses {[round(x, 4) for x in losses]}" + (f" ({layers} fused layers)" if mode == "qtune" else ""))
    best = {mode: (max(t for t, _ in runs), max(m for _, m in runs)) for mode, runs in results.items()}
    (b_tps, b_peak), (q_tps, q_peak) = best["bitsandbytes"], best["qtune"]
    print(f"best of {args.repeats}: bitsandbytes {b_tps:.1f} tokens/s, qtune {q_tps:.1f} tokens/s")
    print(f"ratio qtune/bitsandbytes: {q_tps / b_tps:.2f}x tokens/s, {q_peak / b_peak:.2f}x {memory_kind}")


if __name__ == "__main__":
    main()
