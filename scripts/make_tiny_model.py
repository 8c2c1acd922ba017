"""A tiny random Llama with a real model's tokenizer and chat template, for smoke runs of ``qtune train``.

The GPU run (scripts/gpu_all.sh) trains it end to end on the device machine, where the packaged
SmolLM2 checkpoint (540 MB as float32) is too large to carry. Sizes are multiples of 64 so every linear
splits into whole NF4 blocks.

    python scripts/make_tiny_model.py [--tokenizer-from smollm2-135m-instruct] OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qtune.models.load import resolve_model_path

TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "generation_config")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--tokenizer-from", default="smollm2-135m-instruct")
    args = ap.parse_args()
    src, out = Path(resolve_model_path(args.tokenizer_from)), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith(TOKENIZER_FILES):
            shutil.copy(f, out / f.name)
    c = json.loads((src / "config.json").read_text())
    config = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=2048, bos_token_id=c.get("bos_token_id"),
                         eos_token_id=c.get("eos_token_id"), pad_token_id=c.get("pad_token_id"))
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    print(f"{out}: {sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
