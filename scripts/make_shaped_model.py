"""A Llama checkpoint directory of a real model's shape: its config alone, or with random weights.

``qtune plan`` needs only the config (it builds the model on the meta device); ``qtune plan --measure``
needs weights, which on a machine without the real checkpoint can be random (memory and speed do not
depend on their values). Random weights are drawn on CUDA when there is one.

    python scripts/make_shaped_model.py OUT_DIR                               # Llama-2-7B config only
    python scripts/make_shaped_model.py OUT_DIR --weights --tokenizer-from .gpu/tiny --vocab 49152
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

PRESETS = {  # Llama-2-7B's config.json, the fields that set its shape
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=49152, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                 bos_token_id=1, eos_token_id=2),  # scripts/gpu_all.py --tiny
}
TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "generation_config")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama2-7b")
    ap.add_argument("--vocab", type=int, help="override vocab_size (to match the tokenizer copied in)")
    ap.add_argument("--weights", action="store_true", help="also write random bfloat16 weights (13.5 GB for 7B)")
    ap.add_argument("--tokenizer-from", help="a checkpoint directory whose tokenizer files are copied in")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(PRESETS[args.preset], **({"vocab_size": args.vocab} if args.vocab else {}))
    config = LlamaConfig(**fields, dtype="bfloat16")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.weights:
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
    else:
        config.save_pretrained(out)
    if args.tokenizer_from:
        for f in Path(args.tokenizer_from).iterdir():
            if f.name.startswith(TOKENIZER_FILES):
                shutil.copy(f, out / f.name)
    print(f"{args.preset} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}) → {out}")


if __name__ == "__main__":
    main()
