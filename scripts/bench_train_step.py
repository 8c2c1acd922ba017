"""Benchmark: one QLoRA training step in each ``train.kernels`` mode and memory switch, through the steps ``qtune train``
runs, side by side in one run; with ``--record``, the ratios go into the table ``train.kernels: auto`` reads.

The model is a randomly initialised Llama (no download), saved once as a checkpoint in a temporary folder: the
Llama-2-7B shape on CUDA (hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab 32000), a small one on CPU.
Each mode is a recipe over that checkpoint (NF4, blocksize 64, double quant; LoRA r=16 on all linears, alpha 2r,
dropout 0; gradient checkpointing; adamw_torch at a constant lr 1e-5) whose ``train`` section names the mode's
switches, and runs as ``qtune train`` would: :func:`qtune.train.steps.setup_model` loads and quantizes the base
through transformers, attaches LoRA, applies the memory switches, kernels and compile;
:func:`qtune.train.steps.make_trainer` builds the Trainer ``train`` trains with; the same seed before each build
gives every mode the same LoRA start. Modes: ``bitsandbytes`` (HF peft + bitsandbytes, the baseline), ``triton``,
``blocks`` (:mod:`qtune.kernels.blocks`), ``fast`` (``blocks`` + ``frozen_dtype: compute`` + liger's cross-entropy,
RMSNorm (CUDA only) and RoPE) and ``compiled`` (``compile: layers``; the warm-up steps include the compile).
``--fast`` measures the baseline and ``fast`` only.

Printed per mode and micro batch: tokens/s over the timed steps, peak memory (CUDA: :class:`qtune.memory.PeakMemory`,
the figure ``train`` reports, over the steps with the weights resident; CPU: peak bytes saved for backward, a
device-agnostic activation figure), the losses; the modes alternate ``--repeats`` times (each run builds its model
afresh and frees it after) and the ratios mode / baseline use each mode's best run. Losses must equal the
baseline's within ``--loss-tol`` (exit 1 otherwise).

``--record`` writes each ratio whose losses are equal into ``qtune/kernels/measured.json`` with the device, the
library versions and the git commit beside it; ``train.kernels: auto`` (and the memory switches' ``auto``) reads
only figures of a mode that differs from the baseline in one switch (:mod:`qtune.kernels.dispatch`).

    python scripts/bench_train_step.py                      # CUDA: 7B shape, micro batches 4 x 1024 and 1 x 2048
    python scripts/bench_train_step.py --size small         # CPU default: small shape, 2 x 128
    python scripts/bench_train_step.py --fast               # the combined fast path against the baseline only
    python scripts/bench_train_step.py --record             # also write the ratios into qtune/kernels/measured.json
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import weakref
from contextlib import nullcontext
from pathlib import Path

import torch
from timing import device_name

from qtune.kernels.dispatch import MEASURED_FILE

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


# train.<switch> settings of each mode; every switch a mode does not name stays at today's choice (TODAY), so a
# figure never depends on the table it may be written into. bitsandbytes is the baseline.
MODES: dict[str, dict[str, str]] = {
    "bitsandbytes": {},
    "triton": {"kernels": "triton"},
    "blocks": {"kernels": "blocks"},
    "fast": {"kernels": "blocks", "frozen_dtype": "compute", "cross_entropy": "liger", "rms_norm": "liger", "rope": "liger"},
    "compiled": {"compile": "layers"},
}


def write_model(size: str, dtype: torch.dtype, out: Path) -> None:
    """A randomly initialised Llama of ``size`` saved as a checkpoint in ``out`` (the recipes' model.path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=4096, **SIZES[size]))
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out)


def mode_settings(mode: str, device: str) -> dict[str, str]:
    """The mode's train switches on ``device`` (liger's RMSNorm runs on CUDA only)."""
    from qtune.kernels.dispatch import TODAY

    settings = {**TODAY, **MODES[mode]}
    if device != "cuda" and settings["rms_norm"] == "liger":
        settings["rms_norm"] = "torch"
    return settings


def mode_recipe(model_dir: Path, mode: str, device: str, rank: int, batch: int, steps: int):
    from qtune.recipe.schema import Recipe

    return Recipe.model_validate({
        "model": {"path": str(model_dir)},
        "quant": {"method": "nf4", "double_quant": True, "blocksize": 64,
                  "compute_dtype": "bfloat16" if device == "cuda" else "float32"},
        "lora": {"rank": rank, "alpha": 2 * rank, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": [str(model_dir / "unused.jsonl")]},  # rows come from the bench, not from data
        "train": {"device": device, "micro_batch_size": batch, "max_steps": steps, "lr": 1e-5, "scheduler": "constant",
                  "gradient_checkpointing": True, "logging_steps": 1, "seed": 0, **mode_settings(mode, device)},
    })


def run_mode(recipe, rows: list[dict], device: str, warmup: int, with_layer: bool):
    """Build the mode's model and Trainer as ``qtune train`` does, train ``warmup`` + timed steps; returns
    (tokens/s, peak bytes, losses, resolved kernel mode, bytes one decoder layer saves or None)."""
    from transformers import TrainerCallback, set_seed

    from qtune.data.collate import PadCollator
    from qtune.memory import PeakMemory
    from qtune.train.steps import make_trainer, setup_model

    if recipe.train.compile == "layers":  # a fresh dynamo cache per build, so no recompile limit is hit
        torch._dynamo.reset()
    set_seed(recipe.train.seed)  # the same LoRA start in every mode
    meter = PeakMemory(device).begin()
    model, kernels = setup_model(recipe, device)
    meter.holds(model)
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                if device == "cuda":
                    torch.cuda.synchronize()
                clock["t0"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            clock["t1"] = time.perf_counter()

    saved = SavedBytes()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(recipe, model, rows, None, PadCollator(0), Path(tmp), device, [], [Clock()])
        meter.reset_peak()
        # the saved-bytes hooks cost host time per saved tensor, more in modes that save more: CPU only, where they
        # are the memory figure; CUDA reads PeakMemory
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack) if device == "cpu" else nullcontext():
            trainer.train()
    timed = recipe.train.max_steps - warmup
    tokens = sum(len(r["input_ids"]) for r in rows) * timed
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    peak = meter.peak() if device == "cuda" else saved.peak
    ids = torch.tensor([r["input_ids"] for r in rows], device=model.get_base_model().device)
    layer = layer_saved_bytes(model, ids, device, torch.bfloat16 if device == "cuda" else torch.float32) if with_layer else None
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return tokens / (clock["t1"] - clock["t0"]), peak, losses, kernels, layer


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


def build(size: str, device: str, dtype: torch.dtype, rank: int, mode: str = "bitsandbytes"):
    """The bench's model in ``mode`` for the scripts that import it (profile_train_step.py, saved_bytes.py): the random
    Llama written to a temporary checkpoint and built by :func:`qtune.train.steps.setup_model`."""
    from transformers import set_seed

    from qtune.train.steps import setup_model

    with tempfile.TemporaryDirectory() as tmp:
        write_model(size, dtype, Path(tmp))
        set_seed(0)
        model, _ = setup_model(mode_recipe(Path(tmp), mode, device, rank, batch=1, steps=1), device)
    return model


def set_frozen_dtype(model, dtype: torch.dtype) -> None:
    """The frozen float parameters that are not 4-bit (embeddings, lm_head, norms) in ``dtype`` (saved_bytes.py)."""
    for name, p in model.named_parameters():
        if not p.requires_grad and p.dtype.is_floating_point and type(p).__name__ != "Params4bit":
            p.data = p.data.to(dtype)


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
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--fast", action="store_true", help="only the baseline and the combined fast path (--modes fast)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5 if device == "cuda" else 3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loss-tol", type=float, default=2e-2 if device == "cuda" else 1e-4,
                    help="largest |loss - baseline loss| called equal (bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--record", nargs="?", const=str(MEASURED_FILE), metavar="FILE",
                    help=f"write the ratios with equal losses into FILE (default {MEASURED_FILE})")
    args = ap.parse_args()
    micros = [(args.batch or 4, args.seq or 1024)] if args.batch or args.seq else \
        [tuple(int(v) for v in m.split("x")) for m in args.micro]
    modes = ["bitsandbytes"] + [m for m in (["fast"] if args.fast else args.modes) if m != "bitsandbytes"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    memory_kind = "peak CUDA allocated" if device == "cuda" else "peak saved-for-backward"
    figures, status = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_model(args.size, dtype, Path(tmp))
        print(f"device: {device_name(device)}; {args.size} Llama (random weights, saved in {time.perf_counter() - t0:.0f}s), "
              f"NF4 + double quant, LoRA r={args.rank} all-linear, gradient checkpointing, {dtype}; through qtune.train.steps")
        for batch, seq in micros:
            ids = torch.randint(0, SIZES[args.size]["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
            rows = [{"input_ids": r.tolist(), "labels": r.tolist()} for r in ids]
            print(f"-- micro batch {batch}x{seq}")
            results, layer_bytes = {mode: [] for mode in modes}, {}
            for repeat in range(args.repeats):  # modes alternate, so a slow spell of a shared machine hits all
                for mode in modes:
                    recipe = mode_recipe(Path(tmp), mode, device, args.rank, batch, args.warmup + args.steps)
                    tps, peak, losses, kernels, layer = run_mode(recipe, rows, device, args.warmup, repeat == 0)
                    if layer is not None:
                        layer_bytes[mode] = layer
                    results[mode].append((tps, peak, losses))
                    print(f"{mode:>13}: {tps:10.1f} tokens/s, {memory_kind} {peak / 2**30:.3f} GiB, "
                          f"losses {[round(x, 4) for x in losses]} ({kernels} kernels)")
            print("saved for backward by one decoder layer (checkpointing off): " + ", ".join(
                f"{m} {b / 2**20:.1f} MiB ({b / layer_bytes['bitsandbytes']:.2f}x)" for m, b in layer_bytes.items()))
            status |= compare(results, modes, batch, seq, memory_kind, args, device, figures)
    if args.record:
        record(Path(args.record), figures)
    raise SystemExit(status)


def compare(results: dict, modes: list[str], batch: int, seq: int, memory_kind: str, args, device: str,
            figures: list[dict]) -> int:
    """Print each mode's ratios to the baseline; a figure per mode whose losses are equal. Returns 1 if any differ."""
    base_tps = max(r[0] for r in results["bitsandbytes"])
    base_peak = max(r[1] for r in results["bitsandbytes"])
    base_losses = results["bitsandbytes"][0][2]
    status = 0
    for mode in modes[1:]:
        tps, peak = max(r[0] for r in results[mode]), max(r[1] for r in results[mode])
        gap = max(abs(a - b) for a, b in zip(results[mode][0][2], base_losses))
        equal = gap <= args.loss_tol
        status |= not equal
        print(f"ratio {mode}/bitsandbytes at {batch}x{seq}: {tps / base_tps:.2f}x tokens/s, "
              f"{peak / base_peak:.2f}x {memory_kind}; losses {'equal' if equal else 'NOT equal'} "
              f"(max |Δ| {gap:.2g}, tol {args.loss_tol:g})")
        if equal:
            base, this = mode_settings("bitsandbytes", device), mode_settings(mode, device)
            figures.append({"switches": {k: v for k, v in this.items() if base[k] != v}, "mode": mode,
                            "ratio": round(tps / base_tps, 3), "tokens_per_s": round(tps, 1),
                            "baseline_tokens_per_s": round(base_tps, 1), "shape": args.size, "micro_batch": f"{batch}x{seq}",
                            "max_loss_gap": gap})
    return status


def record(path: Path, figures: list[dict]) -> None:
    """Put ``figures`` into the measured table at ``path``, each with the device, versions and commit beside it;
    a figure of the same device kind, switches, shape and micro batch is replaced."""
    from qtune import rundir
    from qtune.kernels.dispatch import device_kind

    stamp = {"device_kind": device_kind("cuda" if torch.cuda.is_available() else "cpu"),
             "device": device_name("cuda" if torch.cuda.is_available() else "cpu"),
             "versions": library_versions(), "commit": git_commit(), "measured": time.strftime("%Y-%m-%d"),
             "source": "scripts/bench_train_step.py"}
    new = [{**f, **stamp} for f in figures]
    table = rundir.read_json(path) if path.is_file() else {"figures": []}
    same = lambda a, b: all(a[k] == b[k] for k in ("device_kind", "switches", "shape", "micro_batch"))
    table["figures"] = [f for f in table["figures"] if not any(same(f, n) for n in new)] + new
    rundir.write_json(path, table)
    print(f"recorded {len(new)} figure(s) in {path}")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"cuda": torch.version.cuda or "none"}
    for dist in ("torch", "transformers", "peft", "bitsandbytes", "triton", "liger-kernel"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or ``unknown`` outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


if __name__ == "__main__":
    main()
