"""Shared fixtures: the packaged SmolLM2 checkpoint and a tiny Llama built from a config.

The tiny model reuses SmolLM2's tokenizer (and chat template) so data code runs unchanged; its
weights are random, seeded, and saved as a local checkpoint directory.
"""

from __future__ import annotations

import os

# Triton's CPU interpreter, unless TRITON_INTERPRET=0 is set (scripts/gpu_check.sh does, on a CUDA
# machine). It must be set before qtune.kernels.dequant defines its kernels: here, ahead of every test.
os.environ.setdefault("TRITON_INTERPRET", "1")

import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "data" / "chatterbot"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from qtune.models.packaged import materialize

    return materialize("smollm2-135m-instruct")


def tiny_llama(vocab_size: int = 49152, seed: int = 0):
    """A fresh random 2-layer, 64-wide llama (float32, eval mode), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(out, safe_serialization=True)
    for f in smollm2_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def write_recipe(path: Path, **sections) -> Path:
    """A recipe YAML from section dicts; data defaults to a slice of the bundled demo data."""
    recipe = {
        "data": {
            "train": [str(DEMO_DATA / "train.jsonl")], "eval": str(DEMO_DATA / "eval.jsonl"),
            "format": "chat", "max_length": 64, "max_examples": 32, "max_eval_examples": 16,
        },
        "train": {"max_steps": 2, "micro_batch_size": 4, "logging_steps": 1, "device": "cpu",
                  "gradient_checkpointing": False, "output_dir": str(path.parent / "run")},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(recipe))
    return path
