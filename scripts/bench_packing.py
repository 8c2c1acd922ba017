"""Non-padding tokens/s of the SmolLM2 demo recipe, packed vs unpacked, in one process.

Each run builds the recipe's model (NF4 base + LoRA) fresh and trains ``--steps`` steps after
``--warmup`` untimed ones; tokens are the Trainer's non-padding count (``num_input_tokens_seen``,
real tokens for both collators). Runs go in the order unpacked, packed, packed, unpacked (ABBA)
so a drift in CPU load from other processes hits both sides alike; each side's tokens/s is its
total tokens over its total timed seconds.

    PYTHONPATH=. nice -n 10 python scripts/bench_packing.py [recipes/smollm2-135m-nf4.yaml] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time


def run_once(recipe, tokenizer, data, packing: bool, steps: int, warmup: int) -> tuple[int, float]:
    from transformers import PrinterCallback, TrainerCallback

    from qtune.data.dataset import collator_for
    from qtune.data.packing import prepare_model
    from qtune.models.load import attach_lora, load_base_model, resolve_device
    from qtune.train.run import training_arguments
    from qtune.train.trainer import QtuneTrainer

    device = resolve_device(recipe.train.device)
    model = attach_lora(load_base_model(recipe.model, recipe.quant, device), recipe.lora,
                        quantized=recipe.quant.method != "none", gradient_checkpointing=recipe.train.gradient_checkpointing)
    if packing:
        prepare_model(model)
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    with tempfile.TemporaryDirectory() as out:
        from pathlib import Path

        args = training_arguments(recipe, Path(out), device, [])
        args.max_steps, args.eval_strategy, args.save_strategy = steps + warmup, "no", "no"
        trainer = QtuneTrainer(model=model, args=args, train_dataset=data.train, data_collator=collator_for(recipe.data, tokenizer.pad_token_id),
                               callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    (t0, n0), (t1, n1) = marks[warmup - 1], marks[-1]
    return n1 - n0, t1 - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", nargs="?", default="recipes/smollm2-135m-nf4.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    from qtune.data.dataset import build_datasets
    from qtune.models.load import load_tokenizer
    from qtune.recipe import load_recipe

    totals = {False: [0, 0.0], True: [0, 0.0]}
    for packing in (False, True, True, False):
        recipe = load_recipe(args.recipe, [f"data.packing={str(packing).lower()}"])
        tokenizer = load_tokenizer(recipe.model)
        data = build_datasets(recipe.data, tokenizer, recipe.train.seed)
        tokens, seconds = run_once(recipe, tokenizer, data, packing, args.steps, args.warmup)
        totals[packing][0] += tokens
        totals[packing][1] += seconds
        print(f"{'packed  ' if packing else 'unpacked'}: {tokens} non-padding tokens in {seconds:.1f}s = {tokens / seconds:.0f} tok/s "
              f"({len(data.train)} rows, micro batch {recipe.train.micro_batch_size}, max_length {recipe.data.max_length})", flush=True)
    rate = {k: n / s for k, (n, s) in totals.items()}
    print(f"unpacked {rate[False]:.0f} tok/s, packed {rate[True]:.0f} tok/s: packed/unpacked = {rate[True] / rate[False]:.2f}x")


if __name__ == "__main__":
    main()
