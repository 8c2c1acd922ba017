"""Run under torchrun by test_distributed, so that one launch serves every check:

1. ``qtune train RECIPE`` as ``torchrun -m qtune.cli`` runs it (train.max_steps steps, a checkpoint at the end);
2. ``qtune train RECIPE train.max_steps=N --resume``: every rank continues from that checkpoint;
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
    from qtune.train.run import training_arguments
    from qtune.train.trainer import QtuneTrainer

    recipe = load_recipe(recipe_path)
    distributed.init(recipe.distributed, "cpu")
    rows = [{"input_ids": [FIRST_ID + i], "labels": [FIRST_ID + i]} for i in range(ROWS)]
    trainer = QtuneTrainer(model=torch.nn.Linear(1, 1), args=training_arguments(recipe, Path(out_dir), "cpu", []),
                           train_dataset=rows, data_collator=PadCollator(0, pad_to_multiple_of=1))
    return [(batch["input_ids"][:, 0] - FIRST_ID).tolist() for batch in trainer.get_train_dataloader()]


if __name__ == "__main__":  # ddp_worker.py TRAIN_RECIPE RESUMED_MAX_STEPS ROWS_RECIPE OUT_DIR
    from qtune.cli import main
    from qtune.train.distributed import world

    train_recipe, resumed_steps, rows_recipe, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if main(["train", train_recipe]) != 0 or main(["train", train_recipe, f"train.max_steps={resumed_steps}", "--resume"]) != 0:
        sys.exit(1)
    batches = epoch_batches(rows_recipe, str(out / "rows-run"))
    (out / f"rows-{world().rank}.json").write_text(json.dumps(batches))
