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
        print(f"{m.name}\tfrom pip package {m.distribution}\t{m.license}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("data", help="look at a recipe's training data")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = data_sub.add_parser("inspect", help="render examples with trained tokens marked, length stats, cache hit/miss")
    q.add_argument("recipe")
    q.add_argument("overrides", nargs="*", help=_overrides_help())
    q.add_argument("-n", type=int, default=3, help="how many train rows to show (default 3)")
    q.set_defaults(func=cmd_data_inspect)

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
