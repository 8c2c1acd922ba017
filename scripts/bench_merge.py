"""Which base should the LoRA adapter be merged into? Measured on a finished run.

Prints eval loss (assistant tokens of the recipe's eval split) and perplexity (the bundled eval text) for the
trained model (adapter on its NF4 base, what training evaluated), the merge into the dequantized
NF4 weights, and the merge into the original 16-bit weights.

    nice python scripts/bench_merge.py RUN_DIR [--eval-rows N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    from qtune import rundir
    from qtune.export.fidelity import FidelitySettings, measure, prepare
    from qtune.export.merge import MERGE_BASES, merged_model
    from qtune.models.load import load_tokenizer, load_trained
    from qtune.recipe import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--eval-rows", type=int, default=0, help="eval conversations scored (all: 0)")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    recipe = load_recipe(run / rundir.RECIPE, [f"data.max_eval_examples={args.eval_rows}"] if args.eval_rows else [])
    tok = load_tokenizer(recipe.model)
    inputs = prepare(tok, recipe, FidelitySettings(max_tokens=4096, examples=0, batch_size=8).for_device("cpu"))
    t = time.perf_counter()
    results = {f"trained ({recipe.quant.method} base + adapter)": measure(
        load_trained(str(run / rundir.ADAPTER), recipe.model, recipe.quant, "cpu"), inputs)}
    for base in MERGE_BASES:
        model = merged_model(run, base)[0]
        results[f"merged into {base}"] = measure(model, inputs)
    first = next(iter(results.values()))
    print(f"{run}: {first['eval_examples']} eval conversations, perplexity on {first['text']['scored_tokens']} tokens "
          f"of {', '.join(first['text']['text']['files'])} ({time.perf_counter() - t:.0f}s)")
    print(f"{'model':<36}{'eval loss':>11}{'perplexity':>12}")
    for name, r in results.items():
        print(f"{name:<36}{r['eval_loss']:>11.4f}{r['perplexity']:>12.3f}")


if __name__ == "__main__":
    main()
