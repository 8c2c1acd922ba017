"""Fixtures for the eval tests: a tiny llama checkpoint with SmolLM2's tokenizer and chat template,
and a tiny finished run directory (recipe.yaml + adapter/) built on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_llama

CHAT_ROWS = [
    [{"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "An ordered, mutable sequence."}],
    [{"role": "user", "content": "What is a tuple?"}, {"role": "assistant", "content": "An ordered, immutable sequence."}],
    [{"role": "user", "content": "What is a dict?"}, {"role": "assistant", "content": "A mapping from keys to values."}],
    [{"role": "user", "content": "What is a set?"}, {"role": "assistant", "content": "An unordered collection of unique items."}],
]


@pytest.fixture(name="tiny_llama")
def tiny_llama_fixture():
    """``tiny_llama(vocab_size, seed=0)``: a fresh random 2-layer llama in eval mode."""
    return tiny_llama


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_llama_dir) -> Path:
    """A 2-layer, 64-wide llama (random weights, float32) saved with SmolLM2's tokenizer."""
    return tiny_llama_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_checkpoint) -> Path:
    """A finished run on the tiny checkpoint: recipe.yaml (quant none) and a LoRA adapter with B != 0."""
    import torch
    from peft import get_peft_model

    from qtune.models.load import lora_config
    from qtune.recipe import dump_recipe
    from qtune.recipe.schema import Recipe
    from qtune.rundir import write_text

    run = tmp_path_factory.mktemp("tiny-run")
    data = run / "eval.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHAT_ROWS))
    recipe = Recipe.model_validate({
        "model": {"path": str(tiny_checkpoint)},
        "quant": {"method": "none"},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": [str(data)], "eval": str(data), "format": "chat", "max_length": 64},
        "train": {"output_dir": str(run), "device": "cpu"},
    })
    write_text(run / "recipe.yaml", dump_recipe(recipe))
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    model = get_peft_model(base, lora_config(recipe.lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # B != 0, so the adapter really changes the output
    model.save_pretrained(run / "adapter", safe_serialization=True)
    return run
