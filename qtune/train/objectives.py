"""Training objectives, keyed by name (``train.objective``, names from :mod:`qtune.registry.objectives`): what
differs between them is the data step, the TrainingArguments class and the Trainer class.

:func:`qtune.train.steps.setup_data` reads the rows through :attr:`Objective.datasets` and refuses them through
:attr:`Objective.refuse`; :func:`qtune.train.steps.make_trainer` builds :attr:`Objective.trainer` with
:attr:`Objective.arguments` (the recipe's TrainingArguments, plus the objective's own fields), the collator,
callbacks and guards; every other step (pre-flight, the run directory, the model, fit, save) is shared. The
preference objectives (dpo, orpo, kto, simpo) run TRL's trainers with qtune's behaviour mixed in
(:mod:`qtune.train.preference`) on the rows of :mod:`qtune.data.preference`; TRL tokenizes and collates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from qtune.errors import QtuneError
from qtune.registry.objectives import DEFAULT_OBJECTIVE, OBJECTIVES as SPECS


@dataclass(frozen=True)
class Objective:
    name: str  # a key of qtune.registry.objectives.OBJECTIVES (what the recipe schema offers)
    about: str
    # (recipe, tokenizer, family) -> qtune.data.dataset.Encoded: the rows it trains and evaluates on
    datasets: Callable
    # (encoded, recipe.data, tokenizer) -> None, raising QtuneError when training on the rows would be wrong
    refuse: Callable
    # (recipe, tokenizer) -> the training collator (None: the Trainer's own)
    collator: Callable
    # () -> the Trainer class (imported only when a trainer is built)
    trainer: Callable[[], type]
    # (recipe) -> (TrainingArguments class, its fields beyond the ones every run sets)
    arguments: Callable
    # (tokenizer) -> keyword arguments of the Trainer beyond the ones every run passes
    trainer_kwargs: Callable = lambda tokenizer: {}


def _sft_datasets(recipe, tokenizer, family):
    from qtune.data.dataset import recipe_datasets

    return recipe_datasets(recipe, tokenizer, family=family)


def _sft_refuse(encoded, data, tokenizer):
    from qtune.data.dataset import refuse_training

    refuse_training(encoded, data, tokenizer)


def _sft_collator(recipe, tokenizer):
    from qtune.data.dataset import collator_for

    return collator_for(recipe.data, tokenizer.pad_token_id)


def _qtune_trainer() -> type:
    from qtune.train.trainer import QtuneTrainer

    return QtuneTrainer


def _training_arguments(recipe):
    from transformers import TrainingArguments

    return TrainingArguments, {}


def _preference(name: str) -> Objective:
    kind = SPECS[name].rows

    def datasets(recipe, tokenizer, family):
        from qtune.data.preference import preference_datasets

        return preference_datasets(recipe, tokenizer, family, kind)

    def refuse(encoded, data, tokenizer):
        from qtune.data.preference import refuse_preference

        refuse_preference(encoded, data, tokenizer)

    def trainer():
        from qtune.train.preference import TRAINERS

        return TRAINERS[name][0]

    def arguments(recipe):
        from qtune.train.preference import TRAINERS, config_fields

        return TRAINERS[name][1], config_fields(recipe)

    return Objective(name, SPECS[name].about, datasets, refuse, lambda recipe, tokenizer: None, trainer, arguments,
                     lambda tokenizer: {"processing_class": tokenizer})


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("sft", SPECS["sft"].about, _sft_datasets, _sft_refuse, _sft_collator, _qtune_trainer,
                     _training_arguments),
    **{name: _preference(name) for name, spec in SPECS.items() if spec.rows != "sft"},
}
assert OBJECTIVES.keys() == SPECS.keys(), "every objective name has its steps, and no steps lack a name"


def objective(name: str = DEFAULT_OBJECTIVE) -> Objective:
    if name not in OBJECTIVES:
        raise QtuneError(f"train.objective: '{name}' is not one of {', '.join(SPECS)}")
    return OBJECTIVES[name]
