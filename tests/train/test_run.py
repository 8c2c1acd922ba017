"""``qtune train`` end to end: the run directory contract, reloading, tracking, refusing to clobber."""

import json
import struct
from pathlib import Path

import pytest

from qtune import rundir
from qtune.models.generation_config import read_stop_ids
from qtune.errors import QtuneError
from qtune.recipe import load_recipe
from qtune.train.run import train

from tests.conftest import write_recipe


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    """A real QLoRA run on the packaged SmolLM2 (NF4, CPU): 3 steps, checkpoint at step 2."""
    tmp = tmp_path_factory.mktemp("smollm2-run")
    path = write_recipe(
        tmp / "recipe.yaml",
        model={"path": "smollm2-135m-instruct"},
        quant={"method": "nf4", "compute_dtype": "float32"},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0},
        train={"max_steps": 3, "lr": 1e-3, "save_steps": 2, "eval_steps": 2},
    )
    recipe = load_recipe(path)
    return recipe, train(recipe)


def test_run_directory_contract(smollm2_run):
    recipe, summary = smollm2_run
    run = Path(recipe.train.output_dir)
    for name in (rundir.RECIPE, rundir.METRICS, rundir.SUMMARY, rundir.LOSS_PLOT):
        assert (run / name).is_file(), name
    assert (run / rundir.ADAPTER / "adapter_model.safetensors").is_file()
    assert read_stop_ids(run / rundir.ADAPTER) == [2]  # SmolLM2's EOS <|im_end|>: generate and every export stop on it
    assert not list(run.rglob("*.bin")) and not list(run.rglob(".*.tmp*"))
    assert (run / rundir.CHECKPOINTS / "checkpoint-2").is_dir() and not (run / rundir.CHECKPOINTS / ".staging").exists()
    saved = json.loads((run / rundir.SUMMARY).read_text())
    for key in ("eval_loss_before", "eval_loss_after", "steps", "train_tokens", "tokens_per_s", "peak_memory_bytes", "wall_s"):
        assert saved[key] is not None, key
    assert saved["steps"] == 3 and saved["train_tokens"] > 0 and saved["peak_memory_bytes"] > 2**20
    metrics = rundir.read_metrics(run)
    train_rows = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_rows] == [1, 2, 3]
    assert all(m["tokens_per_s"] > 0 and m["lr"] is not None for m in train_rows)
    assert [m["step"] for m in metrics if "eval_loss" in m] == [0, 2, 3]
    assert saved["eval_loss_after"] < saved["eval_loss_before"], "lr=1e-3 for 3 steps should already help"
    png = (run / rundir.LOSS_PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] >= 600
    assert load_recipe(run / rundir.RECIPE) == recipe  # the resolved recipe round-trips


def test_saved_adapter_on_nf4_base_reproduces_eval_loss(smollm2_run):
    from qtune.data.dataset import PadCollator, build_datasets
    from qtune.eval.loss import mean_token_nll
    from qtune.models.load import load_tokenizer, load_trained

    recipe, summary = smollm2_run
    run = Path(recipe.train.output_dir)
    model = load_trained(str(run / rundir.ADAPTER), recipe.model, recipe.quant, "cpu")
    tokenizer = load_tokenizer(recipe.model)
    data = build_datasets(recipe.data, tokenizer, recipe.train.seed)
    loss = mean_token_nll(model, data.eval, PadCollator(tokenizer.pad_token_id), recipe.train.micro_batch_size)
    assert abs(loss - summary["eval_loss_after"]) < 1e-3, (loss, summary["eval_loss_after"])


def test_existing_run_is_not_overwritten_without_asking(smollm2_run):
    recipe, _ = smollm2_run
    with pytest.raises(QtuneError, match="already holds a run; pass --resume"):
        train(recipe)


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_tracking_backends_write_offline(tmp_path, tiny_llama_dir, backend, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: wandb must fall back to offline mode
    path = write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, quant={"method": "none"},
                        tracking={"backend": backend, "project": "qtune-test"})
    recipe = load_recipe(path)
    train(recipe)
    run = Path(recipe.train.output_dir)
    if backend == "tensorboard":
        assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    else:
        offline = list((run / "wandb").glob("offline-run-*"))
        assert offline and list(offline[0].glob("*.wandb")), "wandb should leave a syncable offline run"


def test_training_arguments_keep_every_setting_and_refuse_an_unknown_one(tmp_path, tiny_llama_dir, monkeypatch):
    """Every qtune setting reaches TrainingArguments; a key this transformers lacks is an error, never dropped."""
    from qtune.train import distributed
    from qtune.train.steps import training_arguments

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)},
                                      train={"lr": 3e-4, "max_steps": 7, "warmup_steps": 2, "seed": 5}))
    args = training_arguments(recipe, tmp_path / "run", "cpu", [])
    assert (args.learning_rate, args.max_steps, args.warmup_steps, args.seed, args.data_seed) == (3e-4, 7, 2, 5, 5)
    assert args.include_num_input_tokens_seen == "non_padding" and args.use_cpu
    real = distributed.trainer_arguments
    monkeypatch.setattr(distributed, "trainer_arguments", lambda *a: {**real(*a), "ddp_bucket_size_mb": 25})
    with pytest.raises(QtuneError, match="TrainingArguments has no ddp_bucket_size_mb; install the tested versions"):
        training_arguments(recipe, tmp_path / "run", "cpu", [])
