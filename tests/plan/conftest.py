"""Small Llama checkpoints built from config (random weights, no download) for the planner's tests."""

from __future__ import annotations

import pytest

from qtune.recipe.schema import Recipe


def make_llama_dir(root, hidden=64, intermediate=128, layers=2, kv_heads=2, vocab=1024, tied=True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                         tie_word_embeddings=tied)
    LlamaForCausalLM(config).save_pretrained(root, safe_serialization=True)
    return root, config


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return make_llama_dir(tmp_path_factory.mktemp("plan-llama"))


@pytest.fixture(scope="session")
def untied_llama_dir(tmp_path_factory):
    return make_llama_dir(tmp_path_factory.mktemp("plan-llama-untied"), hidden=96, intermediate=160, kv_heads=4, tied=False)


def recipe_for(path, quant=None, lora=None, train=None, data=None) -> Recipe:
    return Recipe.model_validate({
        "model": {"path": str(path)},
        "quant": {"method": "nf4", "compute_dtype": "float32", **(quant or {})},
        "lora": {"rank": 8, "dropout": 0.0, **(lora or {})},
        "data": {"train": ["unused.jsonl"], **(data or {})},
        "train": {"device": "cpu", "gradient_checkpointing": False, **(train or {})},
    })
