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


def _overrides_help() -> str:
    return "overrides as section.key=value, validated like the recipe (e.g. train.lr=1e-4 train.max_steps=200)"


def cmd_validate(args) -> int:
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    t = recipe.train
    print(
        f"{args.recipe}: ok — {recipe.model.path}, quant {recipe.quant.method}, LoRA r={recipe.lora.rank} "
        f"(scaling {recipe.lora.scaling:g}), effective batch {t.effective_batch_size}, "
        f"{'max_steps ' + str(t.max_steps) if t.max_steps else f'{t.epochs:g} epoch(s)'}"
    )
    return 0


def cmd_train(args) -> int:
    from qtune.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)  # validated before anything heavy is imported
    from rich.console import Console

    from qtune.train.run import train

    console = Console(stderr=True)
    summary = train(recipe, overwrite=args.overwrite, resume=args.resume, console=console)
    console.print(
        f"[bold green]done[/] in {summary['wall_s']:.0f}s: eval loss {summary['eval_loss_before']:.4f} → "
        f"{summary['eval_loss_after']:.4f}, {summary['tokens_per_s']:.0f} tok/s, "
        f"peak memory {summary['peak_memory_bytes'] / 2**30:.2f} GiB → {recipe.train.output_dir}"
    )
    return 0


def cmd_models(args) -> int:
    from qtune.models.packaged import PACKAGED_MODELS

    for m in PACKAGED_MODELS.values():
        print(f"{m.name}\tfrom pip package {m.distribution}\t{m.license}")
    return 0


def cmd_merge(args) -> int:
    from pathlib import Path

    from qtune.export.merge import merged_model, save_checkpoint

    from qtune.export.card import write_card, write_manifest
    from qtune.export.formats import DEFAULT_MERGE_BASE

    model, recipe, tokenizer = merged_model(args.run_dir, args.base)
    name = "merged" if args.base == DEFAULT_MERGE_BASE else f"merged-{args.base}"
    out = save_checkpoint(model, tokenizer, args.out or Path(args.run_dir) / "exports" / name, args.dtype)
    manifest = write_manifest(out, "merged", 16 if args.dtype != "float32" else 32, None, args.base, dtype=args.dtype)
    write_card(out, manifest, None, recipe.model.path)
    print(f"merged into the {args.base} base → {out} (fidelity: qtune export RUN_DIR --format merged)")
    return 0


def export_settings(args):
    """The run's recipe ``export`` section (or the defaults), with the flags given on the command line."""
    from pathlib import Path

    from pydantic import ValidationError

    from qtune.export.merge import load_run_recipe
    from qtune.recipe.schema import ExportSection

    recipe = load_run_recipe(args.run_dir)
    base = recipe.export.model_dump() if recipe.export else {}
    flags = {"base": args.base, "bits": args.bits, "group_size": args.group_size, "sym": args.sym,
             "act_order": args.act_order, "damp": args.damp, "gguf_types": args.gguf_type}
    calib = {"source": args.calib_source, "samples": args.calib_samples, "seq_len": args.calib_seq_len}
    base.update({k: v for k, v in flags.items() if v is not None})
    base["calibration"] = {**base.get("calibration", {}), **{k: v for k, v in calib.items() if v is not None}}
    base["formats"] = args.format
    if args.calib_source not in (None, "train", "eval"):
        base["calibration"]["source"] = str(Path(args.calib_source).resolve())
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


def build_parser() -> argparse.ArgumentParser:
    from qtune.export.formats import DEFAULT_MERGE_BASE, EXPORT_FORMATS, GGUF_TYPES, MERGE_BASES, QUANT_BITS

    parser = argparse.ArgumentParser(prog="qtune", description="Fine-tune, quantize and deploy LLMs on one GPU.")
    parser.add_argument("--version", action="version", version=f"qtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a recipe and report every error at once")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="fine-tune with LoRA as a recipe says")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help=_overrides_help())
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run in train.output_dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("merge", help="merge a run's LoRA adapter into a 16-bit checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--base", choices=MERGE_BASES, default=DEFAULT_MERGE_BASE,
                   help="original: the 16-bit weights (default, measured better, docs/export.md); "
                        "dequantized: the NF4 weights the adapter was trained against (reproduces the trained model)")
    p.add_argument("--out", help="output directory (default RUN_DIR/exports/merged-BASE)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                   help="storage dtype (float16 keeps 3 more mantissa bits of the LoRA delta than bfloat16)")
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
    p.add_argument("--gguf-type", nargs="+", choices=GGUF_TYPES, help="GGUF file types (default Q8_0)")
    p.add_argument("--calib-source", help="train (default), eval, or a JSONL file in the recipe's data format")
    p.add_argument("--calib-samples", type=int, help="calibration blocks (default 128)")
    p.add_argument("--calib-seq-len", type=int, help="tokens per calibration block (default 256)")
    p.add_argument("--out-root", help="where export folders go (default RUN_DIR/exports)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list the packaged models a recipe can name in model.path")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QtuneError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: checkpoints already written are kept; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
