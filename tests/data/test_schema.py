"""The ``data`` section of a recipe: source forms, defaults that keep old recipes valid, path errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qtune.errors import RecipeError
from qtune.recipe import load_recipe

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert all(Path(s.path).exists() for s in recipe.data.train)


def write(tmp_path, data: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, "data": data}))
    return path


def test_sources_as_strings_or_objects_resolve_beside_the_recipe(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b").mkdir()
    recipe = load_recipe(write(tmp_path, {"train": ["a.jsonl", {"path": "b", "weight": 0.5, "format": "sharegpt"},
                                                    "hf:org/set"], "eval": "a.jsonl"}))
    a, b, hub = recipe.data.train
    assert a.path == str(tmp_path / "a.jsonl") and a.weight == 1.0 and a.format is None
    assert b.path == str(tmp_path / "b") and b.weight == 0.5 and b.format == "sharegpt"
    assert hub.path == "hf:org/set" and hub.split == "train"
    assert recipe.data.eval.path == str(tmp_path / "a.jsonl")
    assert (recipe.data.packing, recipe.data.train_on, recipe.data.truncation, recipe.data.chat_template) == (
        False,
        "assistant",
        "left",
        "auto",
    )


def test_missing_files_and_bad_choices_are_reported_together(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, {"train": ["nope.jsonl"], "eval": "gone.jsonl"}))
    assert e.value.lines == [
        f"data.train[0].path: no such file or folder 'nope.jsonl' (looked in ./ and {tmp_path}/)",
        f"data.eval.path: no such file or folder 'gone.jsonl' (looked in ./ and {tmp_path}/)",
    ]
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, {"train": ["x"], "train_on": "assistants", "packing": "maybe"}))
    assert any(
        line.startswith("data.train_on: 'assistants' is not an allowed value (allowed: assistant, last_assistant, all")
        for line in e.value.lines
    )
    assert any(line.startswith("data.packing:") for line in e.value.lines)
