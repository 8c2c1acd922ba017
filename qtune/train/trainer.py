"""``QtuneTrainer``: transformers' Trainer with atomic, rotated checkpoints, token-weighted eval loss and offloaded activations.

:class:`QtuneBehaviour` holds what every qtune trainer adds over the Trainer class it is mixed into (the finite-loss
note the NaN guard reads, offloaded activations, atomic checkpoints, the eval clock); :class:`QtuneTrainer` is it
over transformers' Trainer with the token-weighted eval loss of SFT, and :mod:`qtune.train.preference` mixes it
into TRL's preference trainers.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from transformers import Trainer

from qtune.compat.transformers import TrainerHooks
from qtune.data.collate import PadCollator, real_tokens
from qtune.eval.loss import token_nll_sums
from qtune.train import distributed
from qtune.train.offload import maybe_offloaded
from qtune.train.resume import prune_checkpoints


class QtuneBehaviour(TrainerHooks):
    """Mixed in before a Trainer class: ``class X(QtuneBehaviour, SomeTrainer)``."""

    def __init__(self, *args, offload_activations: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.offload_activations = offload_activations  # train.offload_activations (qtune.train.offload)
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

    def compute_loss(self, model, inputs, *args, **kwargs):
        """The Trainer's loss; its forward's saved tensors go to host memory with ``train.offload_activations``."""
        device_type = next(v.device.type for v in inputs.values() if hasattr(v, "device"))
        with maybe_offloaded(self.offload_activations and model.training, device_type):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def count_input_tokens(self, inputs) -> None:
        """Count real tokens; a packed batch has no attention_mask, so Trainer alone would count its padding."""
        if self.args.include_num_input_tokens_seen == "non_padding":
            mine = real_tokens(inputs)
            self.state.num_input_tokens_seen += int(distributed.all_sum([float(mine)])[0]) if self.args.world_size > 1 else mine
            return
        self.trainer_count_input_tokens(inputs)

    def final_eval_loss(self) -> float:
        """Eval loss at the current step, reusing the evaluation the schedule may have just run."""
        if self.last_eval is not None and self.last_eval[0] == self.state.global_step:
            return self.last_eval[1]
        return self.evaluate()["eval_loss"]

    def save_checkpoint(self, model, trial) -> None:
        """Write ``checkpoint-N`` under a staging folder, rename it into place when complete, keep the newest
        ``args.save_total_limit`` (``train.keep_checkpoints``)."""
        final_root = self.args.output_dir
        staging_root = os.path.join(final_root, ".staging")
        name = f"checkpoint-{self.state.global_step}"
        main = self.is_world_process_zero()
        if main:
            shutil.rmtree(staging_root, ignore_errors=True)
        distributed.barrier()
        self.args.output_dir = staging_root
        try:
            self.trainer_save_checkpoint(model, trial)  # every rank writes its part (its RNG state, FSDP shards)
        finally:
            self.args.output_dir = final_root
        distributed.barrier()
        if not main:
            return
        final = Path(final_root) / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(os.path.join(staging_root, name), final)
        # A pickled copy of TrainingArguments: resuming does not read it, and recipe.yaml says the same.
        (final / "training_args.bin").unlink(missing_ok=True)
        shutil.rmtree(staging_root, ignore_errors=True)
        if self.args.save_total_limit:
            prune_checkpoints(Path(final_root), self.args.save_total_limit)


class QtuneTrainer(QtuneBehaviour, Trainer):
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Token-weighted mean NLL over the eval rows (see :mod:`qtune.eval.loss`), logged as ``eval_loss``.

        Rows are never packed here: they are right-padded whatever the training collator is. With
        several processes each rank scores its share of the rows and the sums and token counts are
        added over ranks, so the figure is the one a single process would report.
        """
        start = time.perf_counter()
        rows = self.eval_dataset if eval_dataset is None else eval_dataset
        share = distributed.shard_rows(list(rows), self.args.process_index, self.args.world_size)
        total, count = token_nll_sums(
            self.model, share, PadCollator(self.data_collator.pad_token_id),
            batch_size=self.args.per_device_eval_batch_size,
        )
        total, count = distributed.all_sum([total, float(count)])
        loss = total / count if count else math.nan
        self.eval_seconds += time.perf_counter() - start
        metrics = {f"{metric_key_prefix}_loss": loss}
        self.last_eval = (self.state.global_step, loss)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
