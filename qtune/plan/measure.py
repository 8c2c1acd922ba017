"""``qtune plan --measure``: two real training steps of the recipe, measured beside the plan.

The steps are ``qtune train``'s own (:mod:`qtune.train.steps`): ``setup_data`` (tokenizer, the objective's rows),
``setup_model`` (quantized base, k-bit preparation, LoRA, the memory switches, kernels, compile) and
``make_trainer`` (the objective's Trainer with the recipe's TrainingArguments, collator, guards and
``train.offload_activations``) — on the recipe's ``2 × micro_batch_size`` longest training rows, so the batches
are as long as the data allows (the plan is evaluated at the measured shape too).

"Peak" is :class:`qtune.memory.PeakMemory`, the figure ``train`` writes to ``summary.json``: its baseline is
taken before the model loads, its peak reset after the model is built (the weights are resident, so they are
in it). CUDA: ``max_memory_allocated``, the quantity the plan counts. CPU: peak RSS less the RSS before loading
and the file-backed pages mapped since (see :mod:`qtune.memory`). glibc's mmap threshold is fixed at 64 KiB
for the measuring process (``mallopt``), so a freed tensor leaves the resident set as it leaves CUDA's
allocated count; with glibc's default, sliding threshold (``qtune train``'s, ``--measure-allocator default``
here) the heap keeps freed activations and the RSS peak is higher.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from qtune.plan import memory


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 64 * 1024


def fix_mmap_threshold() -> bool:
    """Make glibc serve every allocation of 64 KiB or more with its own mapping, returned on free."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


class _ShapeRecorder:
    """Wraps the recipe's collator and remembers the largest batch shape it produced."""

    def __init__(self, collate):
        self.collate, self.batch, self.seq = collate, 0, 0
        self.pad_token_id = collate.pad_token_id

    def __call__(self, rows):
        out = self.collate(rows)
        b, t = out["input_ids"].shape
        self.batch, self.seq = max(self.batch, b), max(self.seq, t)
        return out


def measure(recipe, device: str, shape, allocator: str = "fixed") -> dict:
    import torch
    from transformers import TrainerCallback, set_seed

    from qtune.memory import PeakMemory
    from qtune.models.load import model_family
    from qtune.train.objectives import objective
    from qtune.train.steps import make_trainer, setup_data, setup_model

    set_seed(recipe.train.seed)
    sft = objective("sft")
    tokenizer, data = setup_data(recipe, model_family(recipe.model), sft, say=lambda *a, **k: None)
    b = recipe.train.micro_batch_size
    rows = sorted(data.train, key=lambda r: len(r["input_ids"]), reverse=True)[: 2 * b]
    rows = (rows * (2 * b // max(len(rows), 1) + 1))[: 2 * b]
    steps = recipe.model_copy(update={"train": recipe.train.model_copy(update={
        "max_steps": 2, "eval_steps": None, "save_steps": None, "grad_accumulation": 1, "logging_steps": 1})})

    fixed = device == "cpu" and allocator == "fixed" and fix_mmap_threshold()
    gc.collect()
    meter = PeakMemory(device).begin()  # the baseline: before the model loads, as train takes it
    model, kernels = setup_model(steps, device)
    gc.collect()
    meter.holds(model)
    loaded = meter.current()
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            times[-1] = time.perf_counter() - times[-1]

    collate = _ShapeRecorder(sft.collator(recipe, tokenizer))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(steps, model, rows, None, collate, Path(tmp), device, [], [Clock()], sft)
        meter.reset_peak()
        trainer.train()
        peak = meter.peak()
    cpu = device == "cpu"
    planned = memory.train_peak(recipe, shape, collate.batch, collate.seq, device)
    static = memory.static(recipe, shape, device)
    resident = sum(i.bytes for i in static.items if i.key in ("weights", "quant_state", "float_parts", "lora"))
    return {
        "batch": collate.batch, "seq": collate.seq, "peak_bytes": int(peak), "peak_kind": meter.kind,
        "allocator": None if not cpu else "glibc mmap threshold 64 KiB" if fixed else "glibc default allocator",
        "peak_includes_loading": not meter.resettable,
        "planned_peak_bytes": planned.total, "ratio": planned.total / peak if peak else None,
        "loaded_bytes": int(loaded) if cpu else None,
        "planned_loaded_bytes": resident, "step_s": times[-1] if times else None, "steps_s": times,
        "kernels": kernels, "baseline_rss_bytes": meter.baseline if cpu else None,
        "file_pages_bytes": meter.file_pages() if cpu else None,
    }
