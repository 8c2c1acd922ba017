"""The named training steps: an objective brings its own Trainer class and data step; the others are shared."""

from __future__ import annotations

import pytest
import torch

from qtune.data.collate import PadCollator
from qtune.errors import QtuneError
from qtune.recipe import load_recipe
from qtune.train.objectives import Objective, objective
from qtune.train.steps import make_trainer
from qtune.train.trainer import QtuneTrainer

from tests.conftest import write_recipe


def test_an_objective_plugs_in_its_trainer_class_with_the_shared_guards(tmp_path, tiny_llama_dir):
    class PreferenceTrainer(QtuneTrainer):  # as a TRL trainer carrying QtuneTrainer's behaviour would
        pass

    from transformers import TrainingArguments

    goal = Objective("pairs", "a test objective", datasets=lambda recipe, tokenizer, family: None,
                     refuse=lambda encoded, data, tokenizer: None, collator=lambda recipe, tokenizer: PadCollator(0),
                     trainer=lambda: PreferenceTrainer, arguments=lambda recipe: (TrainingArguments, {}))
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, train={"on_nan": "skip"}))
    trainer = make_trainer(recipe, torch.nn.Linear(1, 1), [], None, PadCollator(0), tmp_path, "cpu", [], [], goal)
    assert type(trainer) is PreferenceTrainer
    assert trainer.nonfinite.policy == "skip" and trainer.nonfinite.trainer is trainer and trainer.signal_stop is not None
    assert trainer.args.max_steps == 2 and trainer.args.per_device_train_batch_size == 4  # the recipe's arguments


def test_sft_is_the_default_objective_and_unknown_ones_are_refused():
    assert objective().name == "sft" and objective("sft").trainer() is QtuneTrainer
    with pytest.raises(QtuneError, match="train.objective: 'ppo' is not one of sft, dpo"):
        objective("ppo")
