"""``train.objective`` and the ``preference`` section: names from the registry, each objective's fields only."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtune.errors import RecipeError
from qtune.recipe import dump_recipe, load_recipe
from qtune.registry.objectives import OBJECTIVES

REPO = Path(__file__).resolve().parents[2]
DPO = REPO / "recipes" / "smollm2-135m-nf4-dpo.yaml"
SFT = REPO / "recipes" / "smollm2-135m-nf4.yaml"


def errors_of(path, *overrides) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.lines


def test_every_objective_has_a_recipe_and_sft_is_the_default():
    assert load_recipe(SFT).train.objective == "sft"
    assert {load_recipe(p).train.objective for p in (REPO / "recipes").glob("*.yaml")} >= set(OBJECTIVES)


def test_unknown_objective_lists_the_registry_names():
    (line,) = errors_of(SFT, "train.objective=dpp")
    assert line.startswith("train.objective: ") and all(name in line for name in OBJECTIVES)


def test_misspelled_preference_field_suggests_the_field():
    (line,) = errors_of(DPO, "preference.betta=0.2")
    assert line.startswith("preference.betta: ") and "did you mean 'beta'?" in line


@pytest.mark.parametrize("overrides,says", [
    (("train.objective=orpo", "preference.simpo_gamma=1.0"), "preference.simpo_gamma: train.objective 'orpo' does not use it"),
    (("train.objective=orpo",), "preference.loss_type: train.objective 'orpo' does not use it"),
    (("preference.loss_type=kto",), "preference.loss_type: 'kto' is not a loss of dpo"),
    (("preference.label_smoothing=0.5",), "preference.label_smoothing"),
    (("preference.beta=0",), "preference.beta"),
    (("data.packing=true",), "data.packing: a preference objective ('dpo')"),
])
def test_preference_fields_are_checked_per_objective(overrides, says):
    lines = errors_of(DPO, *overrides)
    assert any(says in line for line in lines), lines


def test_a_preference_section_on_an_sft_recipe_is_refused():
    (line,) = errors_of(SFT, "preference.beta=0.5")
    assert "train.objective is 'sft'" in line


def test_a_dumped_recipe_loads_again(tmp_path):
    """recipe.yaml in a run repeats every default, the other objectives' fields included."""
    for path in sorted((REPO / "recipes").glob("smollm2-*.yaml")):
        out = tmp_path / path.name
        out.write_text(dump_recipe(load_recipe(path)))
        assert load_recipe(out) == load_recipe(path)
