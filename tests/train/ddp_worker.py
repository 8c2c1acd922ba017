"""Run under torchrun by test_distributed, so that one launch serves every check:

1. ``qtune train RECIPE`` as ``torchrun -m qtune.cli`` runs it (train.max_steps steps, a checkpoint every 2);
2. the run is made to look killed after step 2's checkpoint (the main rank removes what steps 3-4 left:
   the later checkpoints, the adapter, summary.json; metrics.jsonl keeps its later lines, which resume
   must cut), then ``qtune train RECIPE --resume``: every rank continues from checkpoint-2;
3. which train rows each rank's Trainer dataloader yields in one epoch. The rows are numbered (row i is
   the single token ``i + 3``), the TrainingArguments are the ones ``qtune train`` builds from the
   recipe, and the dataloader is the Trainer's own: its seeded sampler and accelerate's per-rank
   sharding are what is being checked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = 16
FIRST_ID = 3


def epoch_batches(recipe_path: str, out_dir: str) -> list[list[int]]:
    """The row numbers of each micro batch this process sees in epoch 0."""
    import torch

    from qtune.data.collate import PadCollator
    from qtune.recipe import load_recipe
    from qtune.train import distributed
    from qtune.train.steps import training_arguments
    from qtune.train.trainer import QtuneTrainer

    recipe = load_recipe(recipe_path)
    distributed.init(recipe.distributed, "cpu")
    rows = [{"input_ids": [FIRST_ID + i], "labels": [FIRST_ID + i]} for i in range(ROWS)]
    trainer = QtuneTrainer(model=torch.nn.Linear(1, 1), args=training_arguments(recipe, Path(out_dir), "cpu", []),
                           train_dataset=rows, data_collator=PadCollator(0, pad_to_multiple_of=1))
    return [(batch["input_ids"][:, 0] - FIRST_ID).tolist() for batch in trainer.get_train_dataloader()]


def crash_after(run: Path, step: int) -> None:
    """What a kill right after ``checkpoint-<step>`` leaves (later lines of metrics.jsonl included)."""
    import shutil

    from qtune import rundir

    for ckpt in (run / rundir.CHECKPOINTS).glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(run / rundir.ADAPTER)
    (run / rundir.SUMMARY).unlink()


if __name__ == "__main__":  # ddp_worker.py TRAIN_RECIPE CRASH_AFTER_STEP ROWS_RECIPE OUT_DIR
    from qtune.cli import main
    from qtune.recipe import load_recipe
    from qtune.train import distributed

    train_recipe, crash_step, rows_recipe, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    if main(["train", train_recipe]) != 0:
        sys.exit(1)
    if distributed.is_main():
        crash_after(Path(load_recipe(train_recipe).train.output_dir), crash_step)
    distributed.barrier()
    if main(["train", train_recipe, "--resume"]) != 0:
        sys.exit(1)
    batches = epoch_batches(rows_recipe, str(out / "rows-run"))
    (out / f"rows-{distributed.world().rank}.json").write_text(json.dumps(batches))
