"""``qtune data inspect``: show what training will see, before it starts.

Each shown row is decoded token by token; trained tokens (label kept) are green and wrapped in
``[[ ]]`` so the split also reads in plain text (a log file, a terminal without colours); masked
tokens are dim. Below: per-split counts, token-length statistics, the cache outcome, and every
problem that would make ``qtune train`` refuse.
"""

from __future__ import annotations

from qtune.data.masking import IGNORE_INDEX

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"


def spans(row: dict) -> list[tuple[list[int], bool]]:
    """The row cut into maximal runs of tokens that are all trained or all masked."""
    out: list[tuple[list[int], bool]] = []
    for tok, lab in zip(row["input_ids"], row["labels"]):
        trained = lab != IGNORE_INDEX
        if out and out[-1][1] == trained:
            out[-1][0].append(tok)
        else:
            out.append(([tok], trained))
    return out


def render_row(row: dict, tokenizer):
    """A rich ``Text`` of the row: trained runs green inside ``[[ ]]``, masked runs dim."""
    from rich.text import Text

    text = Text()
    for toks, trained in spans(row):
        piece = tokenizer.decode(toks, skip_special_tokens=False)
        if trained:
            text.append(f"{TRAINED_OPEN}{piece}{TRAINED_CLOSE}", style="bold green")
        else:
            text.append(piece, style="dim")
    return text


def stats_table(stats: dict):
    from rich.table import Table

    table = Table(title="data", show_edge=False)
    table.add_column("")
    for name in ("train", "eval"):
        table.add_column(name, justify="right")
    rows = [
        ("examples", "examples"), ("rows", "rows"), ("truncated (left)", "truncated"),
        ("dropped: too long", "dropped_too_long"), ("dropped: no trained token", "untrained"),
        ("tokens", "tokens"), ("trained tokens", "trained_tokens"),
    ]
    for label, key in rows:
        table.add_row(label, *(f"{stats[s][key]:,}" for s in ("train", "eval")))
    for key in ("min", "mean", "median", "p95", "max"):
        table.add_row(f"length {key}", *(f"{stats[s]['length'][key]:,.0f}" for s in ("train", "eval")))
    return table


def inspect(recipe, n: int, console) -> int:
    """Print ``n`` train rows and the statistics; return the number of problems found."""
    from qtune.data.dataset import problems, recipe_datasets
    from qtune.models.load import load_tokenizer

    tokenizer = load_tokenizer(recipe.model)
    data = recipe_datasets(recipe, tokenizer)
    s = data.stats
    rows = data.train[:n]
    for i, row in enumerate(rows):
        trained = sum(l != IGNORE_INDEX for l in row["labels"])
        console.rule(f"train row {i}: {len(row['input_ids'])} tokens, {trained} trained")
        console.print(render_row(row, tokenizer), highlight=False, markup=False)
    console.rule()
    console.print(stats_table(s))
    console.print(f"formats: {', '.join(s['formats'])}; template: {s['template']}; "
                  f"train_on: {recipe.data.train_on}; max_length: {recipe.data.max_length}; truncation: {recipe.data.truncation}",
                  markup=False, highlight=False)
    if s.get("template_note"):
        console.print(s["template_note"], style="yellow", markup=False, highlight=False)
    if "packing" in s:
        console.print(f"packing: {s['train']['rows']:,} rows → {s['packing']['rows']:,} packed rows, "
                      f"{s['packing']['efficiency']:.1%} of slots hold tokens", markup=False, highlight=False)
    console.print(f"cache: {s['cache']} ({s['load_s']:.2f}s){' ' + s['cache_path'] if s['cache_path'] else ''}",
                  markup=False, highlight=False)
    found = problems(data, recipe.data, tokenizer)
    for line in found:
        console.print(f"refuses to train: {line}", style="bold red", markup=False, highlight=False)
    if not found:
        console.print("ok: qtune train would accept this data", style="green", markup=False)
    return len(found)
