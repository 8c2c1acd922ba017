"""Training objectives, keyed by name: what differs between them is the data step and the Trainer class.

:func:`qtune.train.steps.setup_data` reads the rows through :attr:`Objective.datasets` and
:func:`qtune.train.steps.setup_trainer` builds :attr:`Objective.trainer` with the recipe's TrainingArguments,
callbacks and guards; every other step (pre-flight, the run directory, the model, fit, save) is shared. An
objective on one of TRL's trainers (``DPOTrainer``, ``KTOTrainer``, ``GRPOTrainer``: Trainer subclasses)
registers a trainer class carrying :class:`~qtune.train.trainer.QtuneTrainer`'s behaviour over TRL's, and a
data step that yields its rows (pairs, unpaired labels, prompts). Only ``sft`` exists today.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qtune.errors import QtuneError
from qtune.registry.choices import OBJECTIVES as NAMES


@dataclass(frozen=True)
class Objective:
    name: str  # a key of qtune.registry.choices.OBJECTIVES (what the recipe schema will offer)
    # (recipe, tokenizer, family) -> qtune.data.dataset.Encoded: the rows it trains and evaluates on
    datasets: Callable
    # (recipe, tokenizer) -> the training collator
    collator: Callable
    # () -> the Trainer class (imported only when a trainer is built)
    trainer: Callable[[], type]


def _sft_datasets(recipe, tokenizer, family):
    from qtune.data.dataset import recipe_datasets

    return recipe_datasets(recipe, tokenizer, family=family)


def _sft_collator(recipe, tokenizer):
    from qtune.data.dataset import collator_for

    return collator_for(recipe.data, tokenizer.pad_token_id)


def _qtune_trainer() -> type:
    from qtune.train.trainer import QtuneTrainer

    return QtuneTrainer


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("sft", _sft_datasets, _sft_collator, _qtune_trainer),
}
assert OBJECTIVES.keys() == NAMES.keys(), "every objective name has its steps, and no steps lack a name"


def objective(name: str = "sft") -> Objective:
    if name not in OBJECTIVES:
        raise QtuneError(f"train.objective: '{name}' is not one of {', '.join(NAMES)}")
    return OBJECTIVES[name]
