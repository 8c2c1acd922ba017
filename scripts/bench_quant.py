"""Side by side on SmolLM2-135M-Instruct: 16-bit vs RTN vs qtune GPTQ/AWQ vs gptqmodel GPTQ.

Perplexity is token-weighted over every token of the recipe's eval conversations; all methods use
the same calibration blocks (the recipe's training data, chat template applied). gptqmodel's
checkpoint is read back with qtune's own GPTQ reader, so every row is scored by the same code.
"Gap closed" = (ppl_RTN - ppl_method) / (ppl_RTN - ppl_16bit).

    GPTQMODEL_CPU_WORKERS=2 nice python scripts/bench_quant.py [--run RUN_DIR]

With ``--run`` it also measures fine-tune -> merge -> GPTQ: the share of the fine-tune's eval-loss
improvement (base -> merged) that the GPTQ export keeps.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch


def ppl_and_loss(model, recipe, tok, rows):
    from qtune.export.fidelity import measure

    with torch.no_grad():
        return measure(model, recipe, tok, rows)


def rtn_all(model, bits, group_size):
    from qtune.export.grid import rtn
    from qtune.export.sequential import decoder_layers

    with torch.no_grad():
        for m in decoder_layers(model)[1].modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(rtn(m.weight, bits, group_size).dequantize())
    return model


def gptqmodel_gptq(model_dir, calib, bits, group_size, act_order):
    from gptqmodel import GPTQModel, QuantizeConfig

    from qtune.export.checkpoint import load_dequantized

    cfg = QuantizeConfig(bits=bits, group_size=group_size, desc_act=act_order, sym=False)
    m = GPTQModel.load(str(model_dir), cfg, device="cpu")
    data = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in calib]
    t = time.perf_counter()
    m.quantize(data, batch_size=8)
    wall = time.perf_counter() - t
    out = Path(tempfile.mkdtemp(prefix="gptqmodel-"))
    m.save(str(out))
    return load_dequantized(out), wall


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.export.awq import awq_layer_quantizer
    from qtune.export.calibration import calibration_tokens
    from qtune.export.fidelity import eval_rows
    from qtune.export.gptq import gptq_layer_quantizer
    from qtune.export.sequential import sweep
    from qtune.models.load import resolve_model_path
    from qtune.recipe import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/smollm2-135m-nf4.yaml")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-rows", type=int, default=64, help="eval conversations scored (all: 0)")
    ap.add_argument("--no-gptqmodel", action="store_true")
    ap.add_argument("--threads", type=int, help="torch threads (on a shared machine 1 avoids OpenMP spin stalls)")
    ap.add_argument("--run", help="a finished run: also measure fine-tune -> merge -> GPTQ retention")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(args.recipe, [f"data.max_eval_examples={args.eval_rows}"] if args.eval_rows else [])
    path = resolve_model_path(recipe.model.path)
    tok = AutoTokenizer.from_pretrained(path)
    rows = eval_rows(recipe, tok)
    calib = calibration_tokens(recipe, tok, args.samples, args.seq_len)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    print(f"model {recipe.model.path}, w{args.bits} g{args.group_size}, calibration {tuple(calib.shape)}, "
          f"{len(rows[0])} eval conversations, torch threads {torch.get_num_threads()}", flush=True)

    results = {"16-bit (float32 weights)": (ppl_and_loss(base, recipe, tok, rows), 0.0)}
    t = time.perf_counter()
    m = rtn_all(copy.deepcopy(base), args.bits, args.group_size)
    results["RTN"] = (ppl_and_loss(m, recipe, tok, rows), time.perf_counter() - t)
    for name, (r, _) in results.items():
        print(f"  {name}: perplexity {r['perplexity']:.3f}", flush=True)
    for name, q in (("qtune GPTQ", gptq_layer_quantizer(args.bits, args.group_size, False, True, 0.01)),
                    ("qtune AWQ", awq_layer_quantizer(args.bits, args.group_size))):
        m = copy.deepcopy(base)
        t = time.perf_counter()
        sweep(m, calib, 8, q)
        wall = time.perf_counter() - t
        results[name] = (ppl_and_loss(m, recipe, tok, rows), wall)
        print(f"  {name}: perplexity {results[name][0]['perplexity']:.3f}, {wall:.0f}s", flush=True)
    if not args.no_gptqmodel:
        try:
            m, wall = gptqmodel_gptq(path, calib, args.bits, args.group_size, True)
            results["gptqmodel GPTQ"] = (ppl_and_loss(m, recipe, tok, rows), wall)
            print(f"  gptqmodel GPTQ: perplexity {results['gptqmodel GPTQ'][0]['perplexity']:.3f}, {wall:.0f}s", flush=True)
        except ImportError as e:
            print(f"  gptqmodel not importable ({e}); row skipped")

    full, rtn_ppl = results["16-bit (float32 weights)"][0]["perplexity"], results["RTN"][0]["perplexity"]
    print(f"\n{'method':<26}{'perplexity':>11}{'eval loss':>11}{'gap closed':>12}{'quant s':>9}")
    for name, (r, wall) in results.items():
        closed = (rtn_ppl - r["perplexity"]) / (rtn_ppl - full) if name not in ("RTN",) and rtn_ppl != full else float("nan")
        print(f"{name:<26}{r['perplexity']:>11.3f}{r['eval_loss']:>11.4f}{closed:>12.1%}{wall:>9.1f}")
    if "gptqmodel GPTQ" in results:
        print(f"qtune GPTQ time / gptqmodel time: {results['qtune GPTQ'][1] / results['gptqmodel GPTQ'][1]:.2f}")

    if args.run:
        from qtune.export.merge import merged_model

        run_recipe = load_recipe(Path(args.run) / "recipe.yaml", [f"data.max_eval_examples={args.eval_rows}"] if args.eval_rows else [])
        run_rows = eval_rows(run_recipe, tok)
        before = ppl_and_loss(base, run_recipe, tok, run_rows)["eval_loss"]
        merged = merged_model(args.run, "dequantized")[0]
        after = ppl_and_loss(merged, run_recipe, tok, run_rows)["eval_loss"]
        run_calib = calibration_tokens(run_recipe, tok, args.samples, args.seq_len)
        sweep(merged, run_calib, 8, gptq_layer_quantizer(args.bits, args.group_size, False, True, 0.01))
        gq = ppl_and_loss(merged, run_recipe, tok, run_rows)["eval_loss"]
        kept = (before - gq) / (before - after) if before != after else math.nan
        print(f"\nfine-tune {args.run}: eval loss base {before:.4f} -> merged {after:.4f} -> merged+GPTQ {gq:.4f}; "
              f"GPTQ keeps {kept:.1%} of the improvement")


if __name__ == "__main__":
    main()
