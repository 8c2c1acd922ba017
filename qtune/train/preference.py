"""The preference objectives on TRL's trainers: DPO (``DPOTrainer``), KTO (``KTOTrainer``), ORPO (``trl.experimental``'s
``ORPOTrainer``) and SimPO (``trl.experimental``'s ``CPOTrainer`` with ``loss_type="simpo"``), TRL 1.16.

Each class here is TRL's trainer with :class:`~qtune.train.trainer.QtuneBehaviour` mixed in before it, so the NaN
guard, the SIGINT stop, atomic rotated checkpoints, metrics.jsonl and the progress bar work as for SFT; the loss,
the tokenization of the rows (:mod:`qtune.data.preference` hands TRL its standard rows) and the evaluation
(``eval_loss`` is the objective's loss on the eval rows, with TRL's ``eval_rewards/*``) are TRL's.

The reference model costs no second copy of the base. The model ``train`` hands over is already a peft model and
no ``ref_model`` is given; for that case TRL 1.16's ``DPOTrainer`` and ``KTOTrainer`` (``__init__``, "elif
is_peft_model(model) and ref_model is None") add a frozen adapter ``ref`` copied from the ``default`` one, and
``compute_ref_log_probs`` runs the policy under ``use_adapter(model, "ref")``: the same 4-bit base with the
initial adapter, which for a fresh LoRA (B = 0) is the base with the adapter disabled. It costs one more LoRA
copy (the trainable parameters' size, frozen) and a forward without gradients per step. With
``preference.reference: precomputed`` TRL computes those log-probs once over the rows before training
(``precompute_ref_log_probs``) and no reference forward runs while training. Only the ``default`` adapter is
saved (:func:`qtune.train.run.save`). ORPO and SimPO have no reference.

TRL casts a quantized model's trainable parameters to bfloat16 (the QLoRA paper's choice); qtune keeps the
adapter in the dtype SFT trains it in (float32 from peft), so the dtypes are put back after TRL's ``__init__``.
"""

from __future__ import annotations

import time

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from qtune.train import distributed
from qtune.train.trainer import QtuneBehaviour

MASKS = ("attention_mask", "chosen_attention_mask", "rejected_attention_mask")  # the real tokens of each trainer's batch


class PreferenceBehaviour(QtuneBehaviour):
    """:class:`QtuneBehaviour` over a TRL trainer: adapter dtypes kept, TRL's evaluation timed and remembered."""

    def __init__(self, *args, **kwargs):
        from datasets import Dataset

        for split in ("train_dataset", "eval_dataset"):  # qtune's rows are lists of dicts; TRL maps a Dataset
            if isinstance(kwargs.get(split), list):
                kwargs[split] = Dataset.from_list(kwargs[split])
        model = kwargs["model"]
        dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
        super().__init__(*args, **kwargs)
        for name, p in self.model.named_parameters():
            if name in dtypes and p.dtype != dtypes[name]:
                p.data = p.data.to(dtypes[name])

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """TRL's evaluation (the objective's loss and reward metrics on the eval rows), timed and remembered."""
        start = time.perf_counter()
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        self.eval_seconds += time.perf_counter() - start
        self.last_eval = (self.state.global_step, metrics[f"{metric_key_prefix}_loss"])
        return metrics

    def count_input_tokens(self, inputs) -> None:
        """Real tokens of every sequence in the batch (prompt, chosen, rejected, completion: TRL's masks)."""
        if self.args.include_num_input_tokens_seen == "non_padding":
            mine = sum(int(inputs[k].sum()) for k in MASKS if k in inputs)
            self.state.num_input_tokens_seen += int(distributed.all_sum([float(mine)])[0]) if self.args.world_size > 1 else mine
            return
        self.trainer_count_input_tokens(inputs)


class QtuneDPOTrainer(PreferenceBehaviour, DPOTrainer):
    pass


class QtuneKTOTrainer(PreferenceBehaviour, KTOTrainer):
    pass


class QtuneORPOTrainer(PreferenceBehaviour, ORPOTrainer):
    pass


class QtuneCPOTrainer(PreferenceBehaviour, CPOTrainer):
    pass


def _reference(p) -> dict:
    return {"precompute_ref_log_probs": p.reference == "precomputed"}


# objective -> (trainer class, config class, the config's objective fields from the recipe)
TRAINERS = {
    "dpo": (QtuneDPOTrainer, DPOConfig, lambda r, p: {
        "beta": p.beta, "loss_type": [p.loss_type or "sigmoid"], "label_smoothing": p.label_smoothing,
        "max_length": r.data.max_length, **_reference(p)}),
    "kto": (QtuneKTOTrainer, KTOConfig, lambda r, p: {
        "beta": p.beta, "loss_type": p.loss_type or "kto", "desirable_weight": p.desirable_weight,
        "undesirable_weight": p.undesirable_weight, "max_length": r.data.max_length, **_reference(p)}),
    "orpo": (QtuneORPOTrainer, ORPOConfig, lambda r, p: {
        "beta": p.beta, "max_length": r.data.max_length}),
    "simpo": (QtuneCPOTrainer, CPOConfig, lambda r, p: {
        "loss_type": "simpo", "beta": p.beta, "simpo_gamma": p.simpo_gamma, "cpo_alpha": p.cpo_alpha,
        "label_smoothing": p.label_smoothing, "max_length": r.data.max_length}),
}


def config_fields(recipe) -> dict:
    """TRL's config fields for ``recipe``'s objective, beyond the TrainingArguments every run sets. Gradient
    checkpointing stays off in TRL's config (TRL's default is on): qtune switches it on while attaching LoRA
    (train.gradient_checkpointing)."""
    _, _, fields = TRAINERS[recipe.train.objective]
    return {"activation_checkpointing": False, **fields(recipe, recipe.preference)}
