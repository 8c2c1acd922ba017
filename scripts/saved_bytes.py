"""Saved-for-backward bytes of a QLoRA step on CPU for each memory switch, as ratios against the baseline of the same run.

The model is bench_train_step.py's (a random Llama, NF4 + double quant, LoRA on all linears, peft's
``prepare_model_for_kbit_training`` with gradient checkpointing), built in bfloat16 — the compute dtype, so
``train.frozen_dtype: compute`` has something to keep. One model object runs every combination:

    baseline            peft + bitsandbytes as qtune trains today (frozen embeddings, lm_head and norms in float32)
    frozen=compute      train.frozen_dtype: compute (those parts back in bfloat16)
    ce=liger            train.cross_entropy: liger (liger-kernel's fused linear + cross-entropy, Triton interpreter)
    compute+liger       both

For each, counted with ``torch.autograd.graph.saved_tensors_hooks`` (distinct storages, bytes):

    checkpoint/layer    what the forward keeps per decoder layer with checkpointing on: the layer's input
    layer (recomputed)  what one decoder layer saves when it runs with autograd on (checkpointing off), which is what
                        backward holds for the layer it recomputes
    head                what the forward saves from the final norm on: the final norm, lm_head, logits and the loss

    python scripts/saved_bytes.py                  # small shape (hidden 512, 4 layers, vocab 32000), 2 x 128 tokens
    python scripts/saved_bytes.py --size small --batch 1 --seq 256
"""

from __future__ import annotations

import argparse
import os
import time

import torch

COMBOS = {  # name -> (frozen dtype is the compute dtype, liger cross-entropy)
    "baseline": (False, False),
    "frozen=compute": (True, False),
    "ce=liger": (False, True),
    "compute+liger": (True, True),
}


class Meter:
    """Distinct storages saved for backward, split at the moment the head (the final norm) starts."""

    def __init__(self):
        self.body, self.head, self.in_head = {}, {}, False

    def pack(self, t: torch.Tensor):
        (self.head if self.in_head else self.body)[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t


def checkpointed_forward(model, ids) -> tuple[int, int]:
    """(bytes the layers keep, bytes the head keeps) of one forward with gradient checkpointing on; then backward."""
    base = model.get_base_model()
    meter = Meter()
    hook = base.model.norm.register_forward_pre_hook(lambda *a: setattr(meter, "in_head", True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    finally:
        hook.remove()
    model.zero_grad(set_to_none=True)
    return sum(meter.body.values()), sum(meter.head.values())


def configure(model, frozen_compute: bool, liger_ce: bool, dtype: torch.dtype) -> None:
    from bench_train_step import set_frozen_dtype

    from qtune.kernels import liger
    from qtune.registry.families import FAMILIES

    liger.remove(model)
    set_frozen_dtype(model, dtype if frozen_compute else torch.float32)
    liger.apply(model, FAMILIES["llama"], "liger" if liger_ce else "torch", "torch", "torch")


def main() -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # liger's kernels on CPU; before liger is imported
    from bench_train_step import SIZES, build, layer_saved_bytes

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    dtype = torch.bfloat16
    t0 = time.perf_counter()
    model = build(args.size, "cpu", dtype, args.rank)
    model.train()
    layers = model.config.num_hidden_layers
    ids = torch.randint(0, SIZES[args.size]["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    print(f"cpu; {args.size} Llama ({layers} layers, hidden {model.config.hidden_size}, vocab {model.config.vocab_size}), "
          f"NF4 + double quant, LoRA r={args.rank} all-linear, {dtype}, micro batch {args.batch}x{args.seq}; "
          f"built in {time.perf_counter() - t0:.0f}s")
    rows = {}
    for name, (frozen_compute, liger_ce) in COMBOS.items():
        configure(model, frozen_compute, liger_ce, dtype)
        body, head = checkpointed_forward(model, ids)
        recomputed = layer_saved_bytes(model, ids, "cpu", dtype)
        rows[name] = (body / layers, recomputed, head)
    base = rows["baseline"]
    print(f"{'':>16} {'checkpoint/layer':>22} {'layer (recomputed)':>24} {'head (logits, loss)':>24}")
    for name, row in rows.items():
        cells = [f"{v / 2**20:8.3f} MiB ({v / b:.2f}x)" for v, b in zip(row, base)]
        print(f"{name:>16} " + " ".join(f"{c:>23}" for c in cells))


if __name__ == "__main__":
    main()
