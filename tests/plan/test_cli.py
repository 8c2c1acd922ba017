"""``qtune plan`` prints a breakdown and JSON; ``qtune train`` prints the verdict and refuses what cannot fit."""

import json

import pytest

from qtune.cli import main

from tests.conftest import write_recipe


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, llama_dir):
    tmp = tmp_path_factory.mktemp("plan-cli")  # no tokenizer needed: nothing here gets past planning
    return write_recipe(tmp / "r.yaml", model={"path": str(llama_dir[0])}, quant={"method": "nf4", "compute_dtype": "float32"},
                        lora={"rank": 4, "dropout": 0.0})


def test_plan_prints_breakdown_and_verdict(recipe_path, capsys):
    assert main(["plan", str(recipe_path), "--no-time", "--memory", "8GiB"]) == 0
    out = capsys.readouterr().out
    for part in ("4-bit nf4 weights", "absmax", "LoRA weights", "optimizer state (adamw_torch)", "activations", "logits",
                 "merge", "calibration"):
        assert part in out, part
    assert out.strip().splitlines()[-1].startswith("plan: ~") and "— fits; micro batch up to" in out


def test_plan_json_parses_and_adds_up(recipe_path, capsys):
    assert main(["plan", str(recipe_path), "train.micro_batch_size=2", "--json", "--memory", "64GiB"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["micro_batch_size"] == 2 and plan["fits"] is True and plan["max_micro_batch"] >= 2
    assert plan["train_peak_bytes"] == sum(i["bytes"] for i in plan["breakdown"] if i["counted"])
    assert plan["time"]["step_s"] > 0 and plan["time"]["matmul_tflops"] > 0


def test_plan_rejects_a_bad_size(recipe_path, capsys):
    with pytest.raises(SystemExit) as exit:  # read by the flag's type (qtune.flags), before anything runs
        main(["plan", str(recipe_path), "--memory", "lots"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "error: argument --memory/--gpu-memory: 'lots' is not a size (e.g. 24GiB, 24GB, 512MiB)")


def test_train_refuses_what_cannot_fit_before_loading(recipe_path, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", str(recipe_path), f"train.output_dir={out_dir}", "--memory", "8MiB"]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and err.count("error:") == 1 and "--no-plan-check" in err
    assert not out_dir.exists(), "a refused recipe leaves nothing behind"


def test_train_goes_on_when_told(recipe_path, tmp_path, capsys):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "recipe.yaml").write_text("x")  # train then stops at its own first check, before loading anything
    assert main(["train", str(recipe_path), f"train.output_dir={out_dir}", "--memory", "8MiB", "--no-plan-check"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "plan" not in err
