"""Non-padding tokens/s of the SmolLM2 demo recipe's training step, packed vs unpacked, in one process.

One model (the recipe's NF4 base + LoRA) and one AdamW over its LoRA parameters; each round runs
one unpacked and one packed micro-batch (forward, backward, optimizer step), alternating which
goes first, so a change in CPU load from other processes hits both sides alike. Batches are
consecutive micro-batches of the recipe's rows in a seeded shuffled order: unpacked rows padded
to the batch's longest (PadCollator), packed rows (pack_rows + PackedCollator). Tokens are real
tokens (``qtune.data.collate.real_tokens``, the count the trainer reports). The first
``--warmup`` rounds are not timed.

    PYTHONPATH=. nice -n 10 python scripts/bench_packing.py [recipes/smollm2-135m-nf4.yaml] [--steps 10]
"""

from __future__ import annotations

import argparse
import random
import time


def batches(rows: list[dict], size: int, seed: int):
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    while True:
        for start in range(0, len(order) - size + 1, size):
            yield [rows[i] for i in order[start : start + size]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", nargs="?", default="recipes/smollm2-135m-nf4.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    import torch

    from qtune.data.collate import PackedCollator, PadCollator, real_tokens
    from qtune.data.dataset import build_datasets
    from qtune.data.packing import pack_rows, prepare_model
    from qtune.device import resolve_device
    from qtune.models.load import attach_lora, load_base_model, load_tokenizer
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, ["data.packing=false"])
    torch.manual_seed(recipe.train.seed)
    tokenizer = load_tokenizer(recipe.model)
    rows = build_datasets(recipe.data, tokenizer, recipe.train.seed).train
    packed = pack_rows(rows, recipe.data.max_length)
    size = recipe.train.micro_batch_size
    streams = {
        "unpacked": (batches(rows, size, recipe.train.seed), PadCollator(tokenizer.pad_token_id)),
        "packed": (batches(packed, size, recipe.train.seed), PackedCollator(tokenizer.pad_token_id)),
    }
    device = resolve_device(recipe.train.device, "train.device")
    model = attach_lora(load_base_model(recipe.model, recipe.quant, device), recipe.lora,
                        quantized=recipe.quant.method != "none", gradient_checkpointing=recipe.train.gradient_checkpointing)
    prepare_model(model)  # no KV cache; the unpacked batches carry an attention_mask, so this changes nothing for them
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.train.lr)
    totals = {name: [0, 0.0] for name in streams}
    print(f"{len(rows)} rows -> {len(packed)} packed rows; micro batch {size}, max_length {recipe.data.max_length}, "
          f"{device}, torch threads {torch.get_num_threads()}", flush=True)
    for step in range(args.warmup + args.steps):
        names = list(streams) if step % 2 == 0 else list(reversed(streams))
        for name in names:
            stream, collate = streams[name]
            batch = collate(next(stream))
            tokens = real_tokens(batch)
            batch = {k: v.to(device) for k, v in batch.items()}
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if step >= args.warmup:
                totals[name][0] += tokens
                totals[name][1] += seconds
            print(f"round {step}{' (warmup)' if step < args.warmup else ''} {name:8s}: {tokens} tokens, "
                  f"shape {tuple(batch['input_ids'].shape)}, {seconds:.2f}s", flush=True)
    rate = {name: n / s for name, (n, s) in totals.items()}
    for name, (n, s) in totals.items():
        print(f"{name:8s}: {n} non-padding tokens in {s:.1f}s = {rate[name]:.1f} tok/s")
    print(f"packed/unpacked non-padding tokens/s = {rate['packed'] / rate['unpacked']:.2f}x")


if __name__ == "__main__":
    main()
