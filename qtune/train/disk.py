"""Free disk before a run: what its checkpoints and exports will need, against what the disk has.

A checkpoint holds the LoRA weights (float32), the optimizer state (per trainable parameter:
8 bytes for AdamW's two float32 moments, 2 for the 8-bit AdamWs, none for plain SGD) and a few
kilobytes of scheduler, RNG and trainer state. ``train.keep_checkpoints`` of them are kept, plus
the one being written under ``.staging/`` before the oldest is deleted. Exports are estimated
per format from the base's parameter count: ``merged`` (and ``gguf``, which converts it) at 2
bytes per weight, GPTQ/AWQ at bits/8 plus a quarter byte for what stays in 16 bit (embeddings,
scales), GGUF at its type's bits per weight. The check refuses only when the estimate clearly
does not fit: more than what is free.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qtune.errors import QtuneError

OPTIMIZER_BYTES = {"adamw_torch": 8, "paged_adamw_32bit": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}
GGUF_BYTES = {"F16": 2.0, "BF16": 2.0, "F32": 4.0, "Q8_0": 1.07}  # other (4-6 bit) types: 0.7
STATE_BYTES = 1 << 20  # scheduler, RNG, trainer state, tokenizer files: generously a MiB


def checkpoint_bytes(trainable: int, optimizer: str) -> int:
    return trainable * (4 + OPTIMIZER_BYTES[optimizer]) + STATE_BYTES


def export_bytes(export, base_parameters: int) -> int:
    if export is None:
        return 0
    total = 0.0
    if "merged" in export.formats or "gguf" in export.formats:
        total += 2 * base_parameters
    for fmt in ("gptq", "awq"):
        if fmt in export.formats:
            total += (export.bits / 8 + 0.25) * base_parameters
    if "gguf" in export.formats:
        total += sum(GGUF_BYTES.get(t, 0.7) for t in export.gguf_types) * base_parameters
    return int(total)


def needed_bytes(recipe, trainable: int, base_parameters: int) -> int:
    t = recipe.train
    checkpoints = (t.keep_checkpoints + 1) * checkpoint_bytes(trainable, t.optimizer) if t.save_steps else 0
    adapter = trainable * 4 + STATE_BYTES
    return checkpoints + adapter + export_bytes(recipe.export, base_parameters)


def check_free_disk(run: Path, need: int) -> None:
    """Refuse in one line when ``need`` bytes will not fit on the disk holding ``run``."""
    probe = run if run.exists() else next(p for p in run.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need > free:
        raise QtuneError(
            f"train.output_dir: '{run}' has {free / 2**30:.2f} GiB free but this run's checkpoints and exports need about "
            f"{need / 2**30:.2f} GiB; free space, lower train.keep_checkpoints, or set train.output_dir=<a bigger disk>"
        )


def base_parameters(model) -> int:
    """The base model's weight count; bitsandbytes packs two 4-bit weights per uint8 element."""
    import torch

    return sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
