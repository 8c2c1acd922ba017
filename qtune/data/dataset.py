"""From recipe ``data`` to tokenized train/eval rows, their statistics, and the checks before training.

Order of work: read every source and turn rows into examples (format per source: its own
``format``, else ``data.format``, ``auto`` detected from the first row); hold out the eval split
(``data.eval`` file, else ``data.eval_fraction`` of the train examples, drawn with the seed
*before* weighting, so no example is in both); weight each source (a weight w keeps each example
``floor(w)`` times plus a seeded ``w - floor(w)`` share once more); shuffle; apply the example
limits; tokenize and mask (:mod:`qtune.data.template`). The result is cached
(:mod:`qtune.data.cache`) and packed afterwards when ``data.packing`` is on.

Rows with no trained token and rows too long to keep are dropped and counted;
:func:`refuse_training` turns the counts into errors when the recipe's limits are passed.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass, field

from qtune.data import cache
from qtune.data.collate import PackedCollator, PadCollator
from qtune.data.formats import Example, detect_format, to_example
from qtune.data.packing import efficiency, pack_rows
from qtune.data.sources import fingerprint, read_rows
from qtune.data.masking import IGNORE_INDEX, encode_examples, templates_that_fit, turn_end, turn_ends_with_stop
from qtune.data.stops import stop_tokens
from qtune.data.template import resolve_template
from qtune.errors import QtuneError
from qtune.registry.templates import TEMPLATE_TOKENS

__all__ = ["Encoded", "PadCollator", "PackedCollator", "build_datasets", "collator_for", "refuse_training"]


@dataclass
class Encoded:
    train: list[dict]
    eval: list[dict]
    stats: dict = field(default_factory=dict)
    chat_template: str | None = None  # the Jinja source rows were rendered with (None: no chat rows); saved with the adapter


def split_eval(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic held-out split (shuffled with ``seed``)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(items) * fraction))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def weighted(items: list, weight: float, rng: random.Random) -> list:
    """``floor(weight)`` copies of ``items`` plus a random ``weight - floor(weight)`` share of them."""
    whole = int(math.floor(weight))
    extra = round((weight - whole) * len(items))
    return items * whole + rng.sample(items, extra)


def read_examples(source, field_name: str, default_format: str) -> tuple[list[Example], str]:
    """Every example of one source and the format it was read as."""
    rows = read_rows(source.path, field_name, source.split)
    fmt = source.format or default_format
    if fmt == "auto":
        fmt = detect_format(*rows[0])
    return [to_example(row, where, fmt) for row, where in rows], fmt


def _cache_parts(data, tokenizer, template: str | None, seed: int, stops: tuple[str, ...]) -> dict:
    options = data.model_dump(mode="json", exclude={"train", "eval", "packing", "cache", "max_untrained_fraction"})
    sources = [
        {"content": fingerprint(s.path, f"data.train[{i}].path", s.split), **s.model_dump(exclude={"path"})}
        for i, s in enumerate(data.train)
    ]
    held = data.eval and {
        "content": fingerprint(data.eval.path, "data.eval.path", data.eval.split),
        **data.eval.model_dump(exclude={"path"}),
    }
    return {
        "sources": sources,
        "eval": held,
        "options": options,
        "seed": seed,
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "template": template,
        "stops": list(stops),
    }


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0, "max": 0}
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def encode_split(
    examples: list[Example], data, tokenizer, template: str | None, stops: tuple[str, ...] | None = None
) -> tuple[list[dict], dict]:
    """Rows of one split and its counts: examples in, rows out, truncated, dropped, untrained."""
    rows, truncated, too_long, untrained = [], 0, 0, 0
    encoded = encode_examples(
        tokenizer,
        template,
        examples,
        data.max_length,
        train_on=data.train_on,
        truncation=data.truncation,
        system_prompt=data.system_prompt,
        stops=stops,
    )
    for out in encoded:
        truncated += out.truncated
        too_long += out.dropped_too_long
        untrained += out.untrained
        if not out.untrained:
            rows.extend(out.rows)
    lengths = [len(r["input_ids"]) for r in rows]
    return rows, {
        "examples": len(examples),
        "rows": len(rows),
        "truncated": truncated,
        "dropped_too_long": too_long,
        "untrained": untrained,
        "tokens": sum(lengths),
        "trained_tokens": sum(sum(l != IGNORE_INDEX for l in r["labels"]) for r in rows),
        "length": _length_stats(lengths),
    }


def mix_sources(data, per_source: list[list], read_eval, seed: int, rng: random.Random) -> tuple[list, list]:
    """The train rows of every source weighted (``data.train[i].weight``), shuffled and capped, and the eval rows:
    ``read_eval()`` where ``data.eval`` is set, else ``data.eval_fraction`` held out of the sources. SFT's examples
    and the preference rows are split and mixed by this one rule."""
    if data.eval:
        eval_rows = read_eval()
    else:
        tagged = [(i, row) for i, rows in enumerate(per_source) for row in rows]
        kept, held = split_eval(tagged, data.eval_fraction, seed)
        per_source = [[row for j, row in kept if j == i] for i in range(len(per_source))]
        eval_rows = [row for _, row in held]
    train = [row for s, rows in zip(data.train, per_source) for row in weighted(rows, s.weight, rng)]
    rng.shuffle(train)
    return train[: data.max_examples], eval_rows[: data.max_eval_examples]


def _tokenize(data, tokenizer, template_name: str, template: str, seed: int, stops: tuple[str, ...]) -> tuple[dict[str, list[dict]], dict]:
    rng = random.Random(seed)
    per_source = []
    formats = []
    for i, s in enumerate(data.train):
        examples, fmt = read_examples(s, f"data.train[{i}].path", data.format)
        per_source.append(examples)
        formats.append(fmt)

    def read_eval():
        examples, fmt = read_examples(data.eval, "data.eval.path", data.format)
        formats.append(fmt)
        return examples

    train_examples, eval_examples = mix_sources(data, per_source, read_eval, seed, rng)
    uses_chat = any(ex.is_chat for ex in train_examples + eval_examples)
    if not uses_chat:
        template_name, template = "none", None
    splits, stats = {}, {}
    for name, examples in (("train", train_examples), ("eval", eval_examples)):
        splits[name], stats[name] = encode_split(examples, data, tokenizer, template, stops)
    stats["formats"] = formats
    stats["template"] = template_name
    stats["stops"] = list(stops)
    stats["turn_ends_with_stop"] = turn_ends_with_stop(tokenizer, template, stops) if uses_chat else None
    stats["turn_end"] = turn_end(tokenizer, template) if uses_chat else None
    return splits, stats


def check_sources(data) -> int:
    """Read every local source's rows as :func:`build_datasets` would, without a tokenizer (``qtune
    validate``): malformed files and rows fail here with the errors ``train`` gives. Returns the examples read."""
    sources = [(f"data.train[{i}].path", s) for i, s in enumerate(data.train)] + ([("data.eval.path", data.eval)] if data.eval else [])
    return sum(len(read_examples(s, name, data.format)[0]) for name, s in sources if not s.is_hub)


def build_datasets(data, tokenizer, seed: int, family_template: str | None = None, end_of_turn: str | None = None) -> Encoded:
    """Read, split, weight, render, mask (and pack) the recipe's data; reuse the cache when nothing changed.

    ``stats["cache"]`` is ``"hit"``, ``"miss"`` or ``"off"``; ``stats["load_s"]`` the seconds it took;
    ``stats["template_note"]`` the line to show when the template is not the model's own.
    ``family_template`` is the model family's known template, used when the model has none;
    ``end_of_turn`` its end-of-turn token, which ends a trained turn as the tokenizer's EOS does.
    """
    t0 = time.perf_counter()
    chosen = resolve_template(tokenizer, data.chat_template, family_template)
    template_name, template = chosen.name, chosen.source
    stops = stop_tokens(tokenizer, end_of_turn)
    path = cache.cache_path(cache.cache_key(_cache_parts(data, tokenizer, template, seed, stops))) if data.cache else None
    found = cache.load(path) if path is not None else None
    if found is not None:
        splits, stats = found
        stats["cache"] = "hit"
    else:
        splits, stats = _tokenize(data, tokenizer, template_name, template, seed, stops)
        if path is not None:
            cache.save(path, splits, stats)
        stats["cache"] = "miss" if path is not None else "off"
    stats["cache_path"] = str(path) if path is not None else None
    train = splits["train"]
    if data.packing:
        packed = pack_rows(train, data.max_length)
        stats["packing"] = {"rows": len(packed), "efficiency": efficiency(train, packed, data.max_length)}
        train = packed
    stats["load_s"] = time.perf_counter() - t0
    chat = stats["template"] != "none"
    stats["template_note"] = chosen.note if chat else None
    stats["end_of_turn"] = end_of_turn
    return Encoded(train=train, eval=splits["eval"], stats=stats, chat_template=template if chat else None)


def recipe_datasets(recipe, tokenizer, data=None, family=None) -> Encoded:
    """:func:`build_datasets` of ``recipe`` (or its ``data`` section replaced), with its model family's template
    for a model that has none of its own: every command renders the rows ``train`` trained on.
    ``family``: the model's registry entry when the caller already looked it up."""
    from qtune.models.load import model_family

    family = family or model_family(recipe.model)
    return build_datasets(data or recipe.data, tokenizer, recipe.train.seed, family.chat_template, family.end_of_turn)


def collator_for(data, pad_token_id: int):
    """The training collator: packed rows carry position ids and no attention mask."""
    return PackedCollator(pad_token_id) if data.packing else PadCollator(pad_token_id)


def problems(encoded: Encoded, data, tokenizer) -> list[str]:
    """Why training on ``encoded`` would be wrong, one line each (empty when it is fine)."""
    out = []
    s = encoded.stats
    if s.get("turn_ends_with_stop") is False:
        out.append(_no_stop(s, tokenizer))
    for name in ("train", "eval"):
        split = s[name]
        if split["examples"] and split["untrained"] / split["examples"] > data.max_untrained_fraction:
            out.append(
                f"data.{name}: {split['untrained']} of {split['examples']} examples have no trained token "
                f"({split['untrained'] / split['examples']:.1%} > data.max_untrained_fraction {data.max_untrained_fraction:.1%}); "
                f"check data.format, data.train_on and that conversations end with an assistant turn"
            )
    if not encoded.train:
        out.append("data.train: no example is left to train on (see the counts from qtune data inspect)")
    return out


def _no_stop(s: dict, tokenizer) -> str:
    """Why the template would not teach the model to stop: what it ends turns with, what the model stops on,
    and which templates end turns with that and spell their tokens in its vocabulary."""
    stops = tuple(s["stops"])
    has = f"its EOS {tokenizer.eos_token!r}"
    eot = s.get("end_of_turn")
    if eot and eot != tokenizer.eos_token:
        has += f" and its family's end-of-turn token {eot!r}" if eot in stops else f" (it has no {eot!r}, its family's end-of-turn token)"
    fit = templates_that_fit(tokenizer, stops)
    generic = [name for name in fit if not TEMPLATE_TOKENS[name]]
    how = (
        f"set data.chat_template to one that does: {', '.join(fit)}"
        + (f" ({' and '.join(generic)} spell their turn markers as plain text)" if generic else "")
        if fit
        else "no named template does; give the tokenizer a chat template of its own that ends turns with one of them"
    )
    return (
        f"data.chat_template: template '{s['template']}' ends an assistant turn with {s['turn_end']!r}, which is not a "
        f"token the model stops on (it stops on {has}), so it would not learn to stop; {how}"
    )


def refuse_training(encoded: Encoded, data, tokenizer) -> None:
    """Raise one QtuneError listing every problem :func:`problems` finds."""
    found = problems(encoded, data, tokenizer)
    if found:
        raise QtuneError(found[0], lines=found)
