"""``qtune plan --measure``: two real training steps of the recipe, measured beside the plan.

The steps run the train code path itself: ``qtune.train.run.build_model`` (quantized base, k-bit
preparation, LoRA, kernels, the memory switches), the recipe's collator and ``QtuneTrainer`` with the recipe's
TrainingArguments and ``train.offload_activations`` — on the recipe's ``2 × micro_batch_size`` longest training rows, so the batches
are as long as the data allows (the plan is evaluated at the measured shape too).

What "peak" means:

- CUDA: ``torch.cuda.max_memory_allocated`` over the two steps (reset after the model is built;
  the weights are allocated, so they are in it), the same quantity the plan counts.
- CPU: the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` after
  the model is built) minus its resident set just before the model was loaded (python, torch,
  transformers, the tokenizer and the tokenized data) and minus the file-backed pages mapped
  since (``RssFile``): the checkpoint file the loader leaves mapped after quantizing from it, and
  shared-library code run for the first time by the steps — clean pages that are not the
  model's memory. Parameters that are views into the mapped checkpoint are counted back in.
  glibc's mmap threshold is fixed at 64 KiB for the measuring process (``mallopt``), so a freed
  tensor leaves the resident set as it leaves CUDA's allocated count; with glibc's default,
  sliding threshold the heap keeps freed activations and the RSS peak is higher
  (``--measure-allocator default`` measures that).
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from qtune.plan import memory
from qtune.plan.budget import process_rss


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 64 * 1024


def fix_mmap_threshold() -> bool:
    """Make glibc serve every allocation of 64 KiB or more with its own mapping, returned on free."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def checkpoint_views(model) -> int:
    """Bytes of the parameters whose storage lies in a mapped ``.safetensors`` file (loaded without a copy)."""
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            head = line.split()
            if head[-1].endswith(".safetensors"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                maps.append((lo, hi))
    seen, views = set(), 0
    for p in model.parameters():
        st = p.untyped_storage()
        if st.data_ptr() not in seen and any(lo <= st.data_ptr() < hi for lo, hi in maps):
            seen.add(st.data_ptr())
            views += st.nbytes()
    return views


def _peak_rss() -> int:
    return _status("VmHWM")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
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
    from transformers import PrinterCallback, TrainerCallback, set_seed

    from qtune.data.dataset import collator_for, recipe_datasets
    from qtune.models.load import load_tokenizer
    from qtune.train.callbacks import LayoutGuard
    from qtune.train.run import build_model, training_arguments
    from qtune.train.trainer import QtuneTrainer

    set_seed(recipe.train.seed)
    tokenizer = load_tokenizer(recipe.model)
    data = recipe_datasets(recipe, tokenizer)
    b = recipe.train.micro_batch_size
    rows = sorted(data.train, key=lambda r: len(r["input_ids"]), reverse=True)[: 2 * b]
    rows = (rows * (2 * b // max(len(rows), 1) + 1))[: 2 * b]
    steps = recipe.model_copy(update={"train": recipe.train.model_copy(update={
        "max_steps": 2, "eval_steps": None, "save_steps": None, "grad_accumulation": 1, "logging_steps": 1})})

    fixed = device == "cpu" and allocator == "fixed" and fix_mmap_threshold()
    gc.collect()
    before, file_before = process_rss(), _status("RssFile")
    model, kernels = build_model(steps, device)
    gc.collect()
    views = checkpoint_views(model) if device == "cpu" else 0
    loaded = process_rss() - before - (_status("RssFile") - file_before) + views
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

    file_pages = 0
    collate = _ShapeRecorder(collator_for(recipe.data, tokenizer.pad_token_id))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = QtuneTrainer(model=model, args=training_arguments(steps, Path(tmp), device, []), train_dataset=rows,
                               data_collator=collate, callbacks=[LayoutGuard(), Clock()],
                               offload_activations=recipe.train.offload_activations)
        trainer.remove_callback(PrinterCallback)  # the side-by-side table says what matters
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            trainer.train()
            peak, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
        else:
            reset = _reset_peak_rss()
            trainer.train()
            file_pages = _status("RssFile") - file_before - views
            peak = _peak_rss() - before - file_pages
            kind = ("peak RSS − RSS before loading − file pages mapped since"
                    + (", glibc mmap threshold 64 KiB" if fixed else ", default allocator")
                    + ("" if reset else " (peak not resettable: includes loading)"))
    planned = memory.train_peak(recipe, shape, collate.batch, collate.seq, device)
    static = memory.static(recipe, shape, device)
    resident = sum(i.bytes for i in static.items if i.key in ("weights", "quant_state", "float_parts", "lora"))
    return {
        "batch": collate.batch, "seq": collate.seq, "peak_bytes": int(peak), "peak_kind": kind,
        "planned_peak_bytes": planned.total, "ratio": planned.total / peak if peak else None,
        "loaded_bytes": int(loaded) if device == "cpu" else None,
        "planned_loaded_bytes": resident, "step_s": times[-1] if times else None, "steps_s": times,
        "kernels": kernels, "baseline_rss_bytes": before if device == "cpu" else None,
        "file_pages_bytes": file_pages if device == "cpu" else None,
    }
