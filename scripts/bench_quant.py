"""Side by side on SmolLM2-135M-Instruct: 16-bit vs RTN vs qtune GPTQ/AWQ vs gptqmodel GPTQ.

Every row is scored by the same code as an export's ``fidelity.json`` (:func:`qtune.export.fidelity.measure`):
perplexity of the bundled eval text (held-out prose that no method calibrates on; ``--text-tokens`` of it,
window 512, stride 256) and the eval loss on the recipe's eval conversations (assistant tokens). All methods
use the same calibration blocks: the recipe's training conversations with its chat template, qtune's default.
gptqmodel's checkpoint is read back with qtune's own GPTQ reader. "Gap closed" =
(RTN - method) / (RTN - 16-bit), on perplexity and on eval loss. Quantization wall time excludes scoring.

    GPTQMODEL_CPU_WORKERS=2 python scripts/bench_quant.py [--run RUN_DIR]   # in an env with qtune[verify]

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
    from qtune.export.fidelity import FidelitySettings, measure, prepare
    from qtune.export.gptq import gptq_layer_quantizer
    from qtune.export.sequential import sweep
    from qtune.models.load import resolve_model_path
    from qtune.recipe import load_recipe
    from qtune.recipe.schema import ExportSection

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/smollm2-135m-nf4.yaml")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, help="calibration blocks (default: the recipe's export.calibration)")
    ap.add_argument("--seq-len", type=int, help="tokens per calibration block (default: the recipe's)")
    ap.add_argument("--text-tokens", type=int, default=16384, help="eval-text tokens scored for perplexity")
    ap.add_argument("--eval-rows", type=int, default=0, help="eval conversations scored (all: 0)")
    ap.add_argument("--no-gptqmodel", action="store_true")
    ap.add_argument("--threads", type=int, help="torch threads")
    ap.add_argument("--run", help="a finished run: also measure fine-tune -> merge -> GPTQ retention")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"data.max_eval_examples={args.eval_rows}"] if args.eval_rows else []
    scoring = FidelitySettings(max_tokens=args.text_tokens, examples=0, batch_size=8).for_device("cpu")
    recipe = load_recipe(args.recipe, overrides)
    export = recipe.export or ExportSection()
    cal = export.calibration
    samples, seq_len = args.samples or cal.samples, args.seq_len or cal.seq_len
    path = resolve_model_path(recipe.model.path)
    tok = AutoTokenizer.from_pretrained(path)
    calib = calibration_tokens(recipe, tok, samples, seq_len, cal.source, cal.seed)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gptq = gptq_layer_quantizer(args.bits, args.group_size, export.sym, export.act_order, export.damp, export.grid_search)

    def score(name, model, wall):
        results[name] = (measure(model, prepare(tok, recipe, scoring)), wall)
        r = results[name][0]
        print(f"  {name}: perplexity {r['perplexity']:.3f}, eval loss {r['eval_loss']:.4f}, {wall:.0f}s", flush=True)

    results: dict[str, tuple[dict, float]] = {}
    score("16-bit (float32 weights)", base, 0.0)
    info = results["16-bit (float32 weights)"][0]
    print(f"model {recipe.model.path}, w{args.bits} g{args.group_size}, calibration {tuple(calib.shape)} from "
          f"'{cal.source}'; perplexity on {info['text']['scored_tokens']} tokens of {info['text']['text']['files']}, "
          f"eval loss on {info['eval_examples']} conversations; torch threads {torch.get_num_threads()}", flush=True)
    t = time.perf_counter()
    m = rtn_all(copy.deepcopy(base), args.bits, args.group_size)
    score("RTN", m, time.perf_counter() - t)
    for name, q in (("qtune GPTQ", gptq), ("qtune AWQ", awq_layer_quantizer(args.bits, args.group_size))):
        m = copy.deepcopy(base)
        t = time.perf_counter()
        sweep(m, calib, 8, q)
        score(name, m, time.perf_counter() - t)
    if not args.no_gptqmodel:
        try:
            m, wall = gptqmodel_gptq(path, calib, args.bits, args.group_size, export.act_order)
            score("gptqmodel GPTQ", m, wall)
        except ImportError as e:
            print(f"  gptqmodel not importable ({e}); row skipped")

    def closed(key, value):
        full, rtn = results["16-bit (float32 weights)"][0][key], results["RTN"][0][key]
        return (rtn - value) / (rtn - full) if rtn != full else math.nan

    print(f"\n{'method':<26}{'perplexity':>11}{'gap closed':>11}{'eval loss':>11}{'gap closed':>11}{'quant s':>9}")
    for name, (r, wall) in results.items():
        c = name not in ("RTN", "16-bit (float32 weights)")
        ppl_c = f"{closed('perplexity', r['perplexity']):.1%}" if c else ""
        loss_c = f"{closed('eval_loss', r['eval_loss']):.1%}" if c else ""
        print(f"{name:<26}{r['perplexity']:>11.3f}{ppl_c:>11}{r['eval_loss']:>11.4f}{loss_c:>11}{wall:>9.1f}")
    if "gptqmodel GPTQ" in results:
        (q, qt), (g, gt) = results["qtune GPTQ"], results["gptqmodel GPTQ"]
        print(f"qtune GPTQ vs gptqmodel GPTQ: perplexity {q['perplexity']:.3f} vs {g['perplexity']:.3f}, "
              f"eval loss {q['eval_loss']:.4f} vs {g['eval_loss']:.4f}, time {qt / gt:.2f}x")

    if args.run:
        from qtune.export.merge import merged_model

        run_recipe = load_recipe(Path(args.run) / "recipe.yaml", overrides)
        before = measure(base, prepare(tok, run_recipe, scoring))["eval_loss"]
        merged = merged_model(args.run, export.base)[0]
        after = measure(merged, prepare(tok, run_recipe, scoring))["eval_loss"]
        run_calib = calibration_tokens(run_recipe, tok, samples, seq_len, cal.source, cal.seed)
        sweep(merged, run_calib, 8, gptq)
        gq = measure(merged, prepare(tok, run_recipe, scoring))["eval_loss"]
        kept = (before - gq) / (before - after) if before != after else math.nan
        print(f"\nfine-tune {args.run}: eval loss base {before:.4f} -> merged ({export.base}) {after:.4f} -> "
              f"merged+GPTQ {gq:.4f}; GPTQ keeps {kept:.1%} of the improvement")


if __name__ == "__main__":
    main()
