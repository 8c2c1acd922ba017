"""Build a finished qtune run on a random Llama of a chosen shape, for export memory/speed checks.

    python scripts/make_synthetic_run.py OUT [--hidden 1024 --layers 24 --intermediate 4096 --heads 16]
    python scripts/make_synthetic_run.py OUT --shape 7b     # Llama-2-7B's shape (6.7 B parameters)

OUT/base holds the random base as bfloat16 safetensors shards (SmolLM2's tokenizer, vocabulary
49152, untied output embeddings); OUT/run is a run directory (recipe + LoRA adapter with B non-zero,
so merging really changes every targeted weight). The weights are random: exports of it measure
memory and time, not quality. The base is built and saved one layer at a time (bfloat16), so even
the 7B shape needs only a few GB of memory here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "default": dict(hidden=1024, layers=24, intermediate=4096, heads=16),  # 0.50 B parameters
    "7b": dict(hidden=4096, layers=32, intermediate=11008, heads=32),  # 6.74 B parameters
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--shape", choices=SHAPES, default="default")
    for k in SHAPES["default"]:
        p.add_argument(f"--{k}", type=int)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the random numbers are drawn (cuda: much faster for 7b)")
    p.add_argument("--calib-rows", type=int, default=0,
                   help="also write OUT/calib.jsonl: this many chat rows of ~200 tokens cut from data/python-docs "
                        "(enough for 128 x 2048 calibration tokens at 1500)")
    args = p.parse_args()
    shape = {k: getattr(args, k) or v for k, v in SHAPES[args.shape].items()}

    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from qtune import rundir
    from qtune.models.packaged import materialize
    from qtune.recipe import dump_recipe, load_recipe

    out = Path(args.out)
    base, run = out / "base", out / "run"
    base.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))
    d, f, n = shape["hidden"], shape["intermediate"], shape["layers"]
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=d, intermediate_size=f, num_hidden_layers=n,
        num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"], max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, rms_norm_eps=1e-5,
        dtype="bfloat16",
    )
    cfg.save_pretrained(base)
    tok.save_pretrained(base)
    gen = torch.Generator(args.device).manual_seed(args.seed)

    def rand(*size, std=0.02):
        return (torch.randn(*size, generator=gen, device=args.device) * std).to(torch.bfloat16).cpu()

    linears = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (d, d), "self_attn.v_proj": (d, d),
               "self_attn.o_proj": (d, d), "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f)}
    index, files = {}, []

    def shard(tensors: dict) -> None:
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(tensors, str(base / name), metadata={"format": "pt"})
        files.append(name)
        index.update({k: name for k in tensors})

    shard({"model.embed_tokens.weight": rand(cfg.vocab_size, d), "model.norm.weight": torch.ones(d, dtype=torch.bfloat16),
           "lm_head.weight": rand(cfg.vocab_size, d)})
    lora, scale = {}, 0.05
    for i in range(n):
        pre = f"model.layers.{i}."
        t = {pre + k + ".weight": rand(*s) for k, s in linears.items()}
        t[pre + "input_layernorm.weight"] = (1 + rand(d, std=0.1).float()).to(torch.bfloat16)
        t[pre + "post_attention_layernorm.weight"] = (1 + rand(d, std=0.1).float()).to(torch.bfloat16)
        shard(t)
        for k, (o, i_) in linears.items():
            key = f"base_model.model.{pre}{k}"
            lora[key + ".lora_A.weight"] = (torch.randn(args.rank, i_, generator=gen, device=args.device) / i_**0.5).cpu()
            lora[key + ".lora_B.weight"] = (torch.randn(o, args.rank, generator=gen, device=args.device) * scale / args.rank**0.5).cpu()
    with open(base / "model.safetensors.index.json", "w") as fh:
        json.dump({"metadata": {}, "weight_map": index}, fh, indent=1)
    total = cfg.vocab_size * d * 2 + d + n * (sum(a * b for a, b in linears.values()) + 2 * d)

    run.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(f"""
model: {{path: {base.resolve()}}}
quant: {{method: nf4, compute_dtype: float32}}
lora: {{rank: {args.rank}, alpha: {2 * args.rank}, dropout: 0.0}}
data: {{train: [{REPO}/data/chatterbot/train.jsonl], eval: {REPO}/data/chatterbot/eval.jsonl, format: chat,
        max_length: 256, max_examples: 400, max_eval_examples: 16}}
train: {{output_dir: {run.resolve()}, device: cpu}}
""")
    recipe = load_recipe(out / "recipe.yaml")
    rundir.write_text(run / rundir.RECIPE, dump_recipe(recipe))
    adapter = run / rundir.ADAPTER
    adapter.mkdir(exist_ok=True)
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": args.rank, "lora_alpha": 2 * args.rank,
        "lora_dropout": 0.0, "target_modules": sorted({k.split(".")[-1] for k in linears}), "bias": "none",
        "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "base_model_name_or_path": str(base.resolve()),
    }, indent=1))
    tok.save_pretrained(adapter)
    if args.calib_rows:
        text = "".join(f.read_text() for f in sorted((REPO / "data/python-docs").rglob("*.txt")))
        rows = [text[(i * 797) % (len(text) - 800):][:800] for i in range(args.calib_rows)]
        with open(out / "calib.jsonl", "w") as fh:
            for r in rows:
                fh.write(json.dumps({"messages": [{"role": "user", "content": "Continue the text."},
                                                  {"role": "assistant", "content": r}]}) + "\n")
    print(f"{run}: random Llama {total / 1e9:.2f} B parameters (float32 {total * 4 / 2**30:.2f} GiB), "
          f"{len(files)} bf16 shards in {base}")


if __name__ == "__main__":
    main()
