"""``QtuneTrainer``: transformers' Trainer with atomic, rotated checkpoints and token-weighted eval loss."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from transformers import Trainer

from qtune.data.collate import PadCollator, real_tokens
from qtune.eval.loss import mean_token_nll
from qtune.train.resume import prune_checkpoints


class QtuneTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_seconds = 0.0  # time spent in evaluate(), so throughput can leave it out
        self.last_eval: tuple[int, float] | None = None  # (step, loss) of the latest evaluation
        self.loss_finite = None  # a bool tensor: every micro batch's loss of the current step was finite

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step; also notes whether its loss was finite (read by :class:`~qtune.train.guards.NonFiniteGuard`)."""
        import torch

        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()  # stays a tensor: no device sync per micro batch
        self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Token-weighted mean NLL over the eval rows (see :mod:`qtune.eval.loss`), logged as ``eval_loss``.

        Rows are never packed here: they are right-padded whatever the training collator is.
        """
        start = time.perf_counter()
        rows = self.eval_dataset if eval_dataset is None else eval_dataset
        loss = mean_token_nll(
            self.model, rows, PadCollator(self.data_collator.pad_token_id),
            batch_size=self.args.per_device_eval_batch_size,
        )
        self.eval_seconds += time.perf_counter() - start
        metrics = {f"{metric_key_prefix}_loss": loss}
        self.last_eval = (self.state.global_step, loss)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _track_num_input_tokens(self, inputs) -> None:
        """Count real tokens; a packed batch has no attention_mask, so Trainer alone would count its padding."""
        if self.args.include_num_input_tokens_seen == "non_padding":
            self.state.num_input_tokens_seen += real_tokens(inputs)
            return
        super()._track_num_input_tokens(inputs)

    def final_eval_loss(self) -> float:
        """Eval loss at the current step, reusing the evaluation the schedule may have just run."""
        if self.last_eval is not None and self.last_eval[0] == self.state.global_step:
            return self.last_eval[1]
        return self.evaluate()["eval_loss"]

    def _save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-N`` under a staging folder, rename it into place when complete, keep the newest
        ``args.save_total_limit`` (``train.keep_checkpoints``)."""
        final_root = self.args.output_dir
        staging_root = os.path.join(final_root, ".staging")
        name = f"checkpoint-{self.state.global_step}"
        shutil.rmtree(staging_root, ignore_errors=True)
        self.args.output_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = final_root
        final = Path(final_root) / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(os.path.join(staging_root, name), final)
        # A pickled copy of TrainingArguments: resuming does not read it, and recipe.yaml says the same.
        (final / "training_args.bin").unlink(missing_ok=True)
        shutil.rmtree(staging_root, ignore_errors=True)
        if self.args.save_total_limit:
            prune_checkpoints(Path(final_root), self.args.save_total_limit)
