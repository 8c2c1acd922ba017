"""The preference objectives: qtune's data step and trainer wiring give the loss TRL's own trainer gives on the
same rows, batch and weights, and a step moves the adapter and nothing of the 4-bit base.

The reference is TRL 1.16's trainer of the objective (DPOTrainer, KTOTrainer, trl.experimental's ORPOTrainer and
CPOTrainer with loss_type simpo) built on its own copy of the same tiny NF4 model, fed the raw rows of the bundled
file as TRL's documentation shows them, with the same config values. Two things are set equal by hand, and only
these: TRL casts a quantized model's adapter to bfloat16 where qtune keeps float32 (so the reference gets
qtune's float32 adapter back), and LoRA B is made non-zero in both after the trainers are built (so the loss
depends on the adapter; DPO's and KTO's frozen "ref" adapter stays the initial B = 0, i.e. the base).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qtune.recipe.schema import Recipe

PREFS = Path(__file__).resolve().parents[2] / "data" / "python-repl-prefs"
ROWS = 2  # one batch: 2 pairs (4 sequences) or 2 labelled completions


def _recipe(tmp: Path, model_dir: Path, objective: str, kind: str) -> Recipe:
    data = tmp / f"{kind}.jsonl"
    lines = (PREFS / f"{kind}-eval.jsonl").read_text(encoding="utf-8").splitlines()
    # the shortest pairs (the cost is per token); a KTO pair's true and false rows stay adjacent, so a batch has both labels
    if kind == "unpaired":
        lines = ["\n".join(lines[i:i + 2]) for i in range(0, len(lines), 2)]
    data.write_text("\n".join(sorted(lines, key=len)[:ROWS]) + "\n", encoding="utf-8")
    return Recipe.model_validate({
        "model": {"path": str(model_dir)},
        "quant": {"method": "nf4", "compute_dtype": "float32"},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": [str(data)], "eval": str(data), "max_length": 256},
        "train": {"objective": objective, "micro_batch_size": ROWS, "device": "cpu", "gradient_checkpointing": False,
                  "max_steps": 1, "lr": 1e-2},
    })


def _nonzero_b(model) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name and ".default." in name:
                p.normal_(std=0.05)


def _qtune_trainer(recipe: Recipe, out: Path):
    from qtune.models.load import model_family
    from qtune.train.objectives import objective
    from qtune.train.steps import make_trainer, setup_data, setup_model

    goal = objective(recipe.train.objective)
    torch.manual_seed(0)
    tokenizer, data = setup_data(recipe, model_family(recipe.model), goal, say=lambda *a, **k: None)
    model, _ = setup_model(recipe, "cpu")
    return make_trainer(recipe, model, data.train, data.eval, goal.collator(recipe, tokenizer), out, "cpu", [], [],
                        goal, say=lambda *a, **k: None, tokenizer=tokenizer)


def _trl_trainer(recipe: Recipe, out: Path, qtune_model):
    """TRL's own trainer of the objective on the raw rows of the data file, its config from the same values."""
    from datasets import Dataset

    from qtune.models.load import load_tokenizer
    from qtune.train.preference import TRAINERS, config_fields
    from qtune.train.steps import setup_model, training_arguments

    trainer_class, config_class, _ = TRAINERS[recipe.train.objective]
    trl_class = trainer_class.__bases__[-1]  # TRL's class, without qtune's behaviour
    args = training_arguments(recipe, out, "cpu", [])
    fields = {k: getattr(args, k) for k in ("output_dir", "per_device_train_batch_size", "per_device_eval_batch_size",
                                            "learning_rate", "seed", "use_cpu", "bf16", "fp16", "max_steps")}
    config = config_class(**fields, **config_fields(recipe), report_to=[])
    torch.manual_seed(0)
    model, _ = setup_model(recipe, "cpu")
    rows = [json.loads(line) for line in Path(recipe.data.eval.path).read_text(encoding="utf-8").splitlines()]
    trainer = trl_class(model=model, args=config, train_dataset=Dataset.from_list(rows),
                        eval_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(recipe.model))
    mine = dict(qtune_model.named_parameters())
    with torch.no_grad():  # TRL's bfloat16 adapter back to qtune's float32 values (see the module docstring)
        for name, p in trainer.model.named_parameters():
            if p.requires_grad or ".ref." in name:
                p.data = mine[name].detach().clone() if name in mine else p.data.float()
    return trainer


def _batch(trainer):
    return trainer.data_collator([trainer.eval_dataset[i] for i in range(ROWS)])


OBJECTIVES = [("dpo", "pairs"), ("orpo", "pairs"), ("simpo", "pairs"), ("kto", "unpaired")]


@pytest.mark.parametrize("objective,kind", OBJECTIVES)
def test_loss_equals_trl_and_a_step_leaves_the_4bit_base(tmp_path, tiny_llama_dir, objective, kind):
    recipe = _recipe(tmp_path, tiny_llama_dir, objective, kind)
    ours = _qtune_trainer(recipe, tmp_path / "ours")
    _nonzero_b(ours.model)
    theirs = _trl_trainer(recipe, tmp_path / "theirs", ours.model)

    ours_batch, theirs_batch = _batch(ours), _batch(theirs)
    assert ours_batch.keys() == theirs_batch.keys()
    for key, value in ours_batch.items():  # the same tokens, masks and labels from qtune's data path
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, theirs_batch[key]), f"{objective}: batch field {key} differs"
    frozen = {n: p.detach().clone() for n, p in ours.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in ours.model.named_parameters() if p.requires_grad}
    assert any(p.dtype == torch.uint8 for p in frozen.values()), "the base should be packed 4-bit"
    ours.model.train(), theirs.model.train()
    with torch.no_grad():
        theirs_loss = theirs.compute_loss(theirs.model, theirs_batch)
    ours.create_optimizer()
    ours_loss = ours.compute_loss(ours.model, ours_batch)  # the training step's loss, then its update
    # same modules, weights and inputs: equal up to float32 summation order
    torch.testing.assert_close(ours_loss.detach(), theirs_loss, rtol=0, atol=1e-6)
    ours.accelerator.backward(ours_loss)
    ours.optimizer.step()
    for n, p in ours.model.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), f"{objective}: frozen parameter {n} changed"
    moved = [n for n, p in ours.model.named_parameters() if n in lora and not torch.equal(p.detach(), lora[n])]
    assert moved, f"{objective}: no LoRA weight moved"
    assert all(p.dtype == torch.float32 for n, p in ours.model.named_parameters() if n in lora)
