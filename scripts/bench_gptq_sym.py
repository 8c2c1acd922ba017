"""GPTQ symmetric vs asymmetric grid on a finished run, and the same export with 1 and 2 CPU threads.

For each config ``GRID:ACT:THREADS`` (``sym``/``asym``, ``act``/``noact`` for act-order on/off, the torch
thread count) it runs ``qtune export --format gptq`` (qtune's defaults otherwise: 4 bits, group 64, range
search) into ``--out`` (an export already there is reused, so a rerun only rescores), then scores the
export and its 16-bit reference (the merged model) on:

- ``ppl task``: perplexity over every token of the recipe's eval conversations (chat template applied,
  one conversation per row: the task's own text);
- ``ppl prose``: strided perplexity (window 512, stride 256) of the first ``--text-tokens`` tokens of the
  bundled Python-tutorial excerpt (``data/python-docs/tutorial``: general English prose with code that
  neither training nor calibration saw);
- ``eval loss``: mean NLL of the assistant tokens of the eval conversations (what ``fidelity.json`` reports);

and says which vLLM kernel the export's ``quantization_config`` selects (:mod:`qtune.export.vllm_kernels`)
and whether the 1- and 2-thread exports are bit-identical.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/bench_gptq_sym.py RUN_DIR [--out DIR] [--calib-samples 32]
        [--calib-seq-len 256] [--text-tokens 4096] [--configs asym:act:1 asym:act:2 sym:act:1 sym:act:2 sym:noact:1]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def scores(weights, config, tokenizer, recipe, text_tokens: int) -> dict:
    from qtune.data.collate import PadCollator
    from qtune.data.dataset import recipe_datasets
    from qtune.eval.loss import token_nll_sums
    from qtune.eval.measure import EvalSettings, recipe_eval_loss, text_perplexity
    from qtune.export.layerwise import lazy_model

    cache: dict = {}
    model = lazy_model(config, lambda n: cache[n] if n in cache else cache.setdefault(n, weights(n)), "cpu")
    settings = EvalSettings(max_tokens=text_tokens, window=512, stride=256).for_device("cpu")
    with torch.no_grad():
        prose = text_perplexity(model, tokenizer, settings)
        task = recipe_eval_loss(model, tokenizer, recipe, settings)
        rows = [{"input_ids": r["input_ids"], "labels": list(r["input_ids"])} for r in recipe_datasets(recipe, tokenizer).eval]
        nll, n = token_nll_sums(model, rows, PadCollator(tokenizer.pad_token_id), 8)
    return {"ppl_task": math.exp(nll / n), "task_tokens": n, "ppl_prose": prose["perplexity"],
            "prose_tokens": prose["scored_tokens"], "prose_sha256": prose["text"]["sha256"][:12],
            "eval_loss": task["eval_loss"], "eval_rows": task["eval_examples"]}


def export(run: Path, out: Path, grid: str, act: str, threads: int, samples: int, seq_len: int) -> tuple[Path, float]:
    from qtune.export.pipeline import export_run
    from qtune.recipe.schema import ExportSection

    folder = out / f"{grid}-{act}-t{threads}"
    if not (folder / "gptq-w4g64" / "qtune_export.json").is_file():
        s = ExportSection(formats=["gptq"], sym=grid == "sym", act_order=act == "act", threads=threads, device="cpu",
                          fidelity=False, calibration={"samples": samples, "seq_len": seq_len})
        export_run(run, s, out_root=folder)
    done = folder / "gptq-w4g64"
    return done, json.loads((done / "qtune_export.json").read_text())["quantize_seconds"]


def identical(a: Path, b: Path) -> str:
    from safetensors.torch import load_file

    ta = {k: v for f in sorted(a.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    tb = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    return "bit-identical" if not differ else f"{len(differ)} of {len(ta)} tensors differ"


def main() -> None:
    from transformers import AutoTokenizer

    from qtune import rundir
    from qtune.export.checkpoint import DequantizedWeights
    from qtune.export.layerwise import MergedWeights
    from qtune.export.vllm_kernels import vllm_kernel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_gptq_sym"))
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--text-tokens", type=int, default=4096)
    ap.add_argument("--configs", nargs="+", default=["asym:act:1", "asym:act:2", "sym:act:1", "sym:act:2", "sym:noact:1"])
    args = ap.parse_args()

    reference = MergedWeights(args.run, "original", "cpu")
    recipe, config = reference.recipe, reference.config
    tok = AutoTokenizer.from_pretrained(str(args.run / rundir.ADAPTER))
    rows = []
    for c in args.configs:
        grid, act, t = c.split(":")
        t0 = time.perf_counter()
        folder, qsec = export(args.run, args.out, grid, act, int(t), args.calib_samples, args.calib_seq_len)
        print(f"exported {c} in {time.perf_counter() - t0:.0f}s → {folder}", flush=True)
        rows.append((f"{grid} {act}-order" if act == "act" else f"{grid} no act-order", t, folder, qsec,
                     scores(DequantizedWeights(folder, "cpu"), config, tok, recipe, args.text_tokens)))
        print(rows[-1][0], t, rows[-1][4], flush=True)
    ref = scores(reference, config, tok, recipe, args.text_tokens)

    r = rows[0][4]
    print(f"\n{recipe.model.path}, run {args.run}; GPTQ w4 g64 range-search, calibration {args.calib_samples} x "
          f"{args.calib_seq_len} tokens of the recipe's train data; CPU float32")
    print(f"ppl task: every token of {recipe.data.eval.path if recipe.data.eval else 'the eval split'} "
          f"({r['eval_rows']} conversations, {r['task_tokens']} tokens); ppl prose: data/python-docs/tutorial, "
          f"{r['prose_tokens']} tokens scored (sha256 {r['prose_sha256']}…), window 512 stride 256; "
          f"eval loss: assistant tokens of the same conversations")
    print("\n| grid | threads | ppl task | ppl prose | eval loss | quantize s | vLLM kernel (no quantization= given) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| 16-bit reference (merged) | | {ref['ppl_task']:.4f} | {ref['ppl_prose']:.4f} | {ref['eval_loss']:.4f} | | |")
    for name, t, folder, qsec, s in rows:
        qcfg = json.loads((folder / "config.json").read_text())["quantization_config"]
        k = vllm_kernel(qcfg, config.to_dict())
        print(f"| {name} | {t} | {s['ppl_task']:.4f} | {s['ppl_prose']:.4f} | {s['eval_loss']:.4f} | "
              f"{qsec:.0f} | {k.summary()} |")
    for name in dict.fromkeys(r[0] for r in rows):
        same = [r for r in rows if r[0] == name]
        for other in same[1:]:
            print(f"{name}: threads {same[0][1]} vs {other[1]}: {identical(same[0][2], other[2])}")


if __name__ == "__main__":
    main()
