"""The recipe schema, overrides and one-line errors (nothing heavy is loaded here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from qtune.errors import RecipeError
from qtune.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert all(Path(s.path).is_file() for s in recipe.data.train)


def test_recipes_folder_has_the_three_promised_recipes():
    assert {"smollm2-135m-nf4.yaml", "smollm2-135m-int8.yaml", "llama7b-nf4.yaml"} <= {p.name for p in RECIPES}


def errors_of(path, *overrides) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.lines


DEFAULT = REPO / "recipes" / "smollm2-135m-nf4.yaml"


def test_misspelled_key_suggests_the_field():
    (line,) = errors_of(DEFAULT, "lora.rnak=8")
    assert line.startswith("lora.rnak: ") and "did you mean 'rank'?" in line


def test_bad_choice_lists_allowed_values_and_suggests():
    (line,) = errors_of(DEFAULT, "quant.method=nf5")
    assert "quant.method: 'nf5'" in line and "nf4, fp4, int8, none" in line and "did you mean 'nf4'?" in line


def test_all_errors_reported_at_once():
    lines = errors_of(DEFAULT, "lora.rnak=8", "train.lr=5", "tracking.backend=mlflow", "train.max_steps=0")
    assert len(lines) == 4
    assert {l.split(":")[0] for l in lines} == {"lora.rnak", "train.lr", "tracking.backend", "train.max_steps"}


def test_overrides_are_parsed_as_yaml_and_validated():
    r = load_recipe(DEFAULT, ["train.lr=1e-4", "train.max_steps=200", "lora.target_modules=[q_proj, v_proj]"])
    assert r.train.lr == 1e-4 and r.train.max_steps == 200 and r.lora.target_modules == ["q_proj", "v_proj"]
    (line,) = errors_of(DEFAULT, "train.lr")
    assert "section.key=value" in line


def test_derived_values_computed_once():
    r = load_recipe(DEFAULT, ["lora.rank=16", "lora.alpha=32", "lora.rslora=true", "train.grad_accumulation=4"])
    assert r.lora.scaling == pytest.approx(32 / 4) and r.train.effective_batch_size == 4 * r.train.micro_batch_size


def test_missing_data_file_names_the_field(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: {path: smollm2-135m-instruct}\ndata: {train: [nope.jsonl]}\n")
    (line,) = errors_of(bad)
    assert line.startswith("data.train[0].path: no such file or folder 'nope.jsonl'")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "r.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\ndata: {train: [x]}\n")
    (line,) = errors_of(evil)
    assert "not valid YAML" in line


def test_paged_optimizer_on_cpu_is_refused():
    (line,) = errors_of(DEFAULT, "train.optimizer=paged_adamw_8bit", "train.device=cpu")
    assert line.startswith("train.optimizer:") and "CUDA" in line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "qtune.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_cli_bad_recipe_exits_2_with_one_line_and_no_traceback():
    for command in ("validate", "train"):
        out = run_cli(command, str(DEFAULT), "lora.rnak=8")
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [
            "error: lora.rnak: 'rnak' is not a field of lora (allowed: rank, alpha, dropout, target_modules, "
            "dora, rslora; did you mean 'rank'?)"
        ]
        assert "Traceback" not in out.stderr


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, qtune.cli; qtune.cli.build_parser(); "
            "print(sorted(m for m in ('torch','transformers','bitsandbytes','wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
