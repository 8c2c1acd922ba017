"""Calibration tokens for GPTQ/AWQ: by default the recipe's own training conversations.

Quantizers fit the inputs they see, so the default is the deployment distribution — the recipe's
training data rendered with its chat template, exactly as training encoded it. ``source`` may also
be ``eval`` or the path of another JSONL file in the recipe's data format. Rows are shuffled with
``seed``, concatenated and cut into ``samples`` blocks of ``seq_len`` tokens (no padding, so every
token counts).

``export.calibration.mix`` replaces a ``fraction`` of those blocks (``round(samples · fraction)``,
at least one block of each kind) with blocks of general text, for a model that will also see
inputs unlike its fine-tuning data. Its ``source`` is a JSONL file in the recipe's data format
(rendered like the recipe's data), a plain-text file or folder (``.txt``/``.md``/``.rst``, each
file a document tokenized as it is, no chat template, as the eval text is), or a bundled text by
name (:data:`qtune.registry.exports.CALIBRATION_TEXTS`). Text documents are concatenated in path
order and cut into blocks; ``seed`` picks which. The blocks are the task's first, then the mixed
ones; a source too small for its share is an error rather than a silently different mix.
"""

from __future__ import annotations

import random
from pathlib import Path

from qtune.errors import QtuneError

def calibration_tokens(recipe, tokenizer, samples: int, seq_len: int, source: str = "train", seed: int = 0):
    """LongTensor (n, seq_len) with n = samples, or fewer if the source is too small."""
    import torch

    from qtune.data.dataset import recipe_datasets

    data = recipe.data
    if source not in ("train", "eval"):
        if not Path(source).is_file():
            raise QtuneError(f"export.calibration.source: no such file '{source}' (give train, eval or a JSONL path)")
        from qtune.recipe.schema import DataSource

        data = data.model_copy(update={"train": [DataSource(path=source)], "max_examples": None})
    encoded = recipe_datasets(recipe, tokenizer, data)
    rows = encoded.eval if source == "eval" else encoded.train
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    stream = [t for r in rows for t in r["input_ids"]]
    n = min(samples, len(stream) // seq_len)
    if n == 0:
        raise QtuneError(
            f"export.calibration: '{source}' has {len(stream)} tokens, fewer than one block of seq_len {seq_len}"
        )
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def check_calibration(recipe, cal) -> None:
    """Read the calibration files (``source``, and ``mix.source`` when it is JSONL) with the reader of the recipe's
    splits, before an export writes anything: a bad file is the one error it would be for ``data.train``."""
    from qtune.data.dataset import read_examples
    from qtune.recipe.schema import DataSource

    files = [] if cal.source in ("train", "eval") else [("export.calibration.source", cal.source)]
    if cal.mix is not None:
        mixed_blocks(cal.samples, cal.mix.fraction)
        kind, path = mix_source(cal.mix.source)
        files += [("export.calibration.mix.source", str(path))] if kind == "jsonl" else []
    for field, path in files:
        if not Path(path).is_file():
            raise QtuneError(f"{field}: no such file '{path}' (give train, eval or a JSONL path)")
        read_examples(DataSource(path=path), field, recipe.data.format)


def mixed_blocks(samples: int, fraction: float) -> int:
    """How many of ``samples`` blocks come from the mixed-in text."""
    n = round(samples * fraction)
    if not 1 <= n <= samples - 1:
        raise QtuneError(f"export.calibration.mix.fraction: {fraction:g} of {samples} samples is {n} block(s); "
                         f"it must leave at least one block of each kind (raise samples or change the fraction)")
    return n


def mix_source(source: str) -> tuple[str, Path]:
    """``("jsonl" | "text", path)`` of a mix source: a bundled text name, a JSONL file, or text files."""
    from qtune.eval.text import BUNDLED_ROOT
    from qtune.registry.exports import CALIBRATION_TEXTS

    if source in CALIBRATION_TEXTS:
        return "text", BUNDLED_ROOT / CALIBRATION_TEXTS[source]
    path = Path(source).expanduser()
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return "jsonl", path
    if path.exists():
        return "text", path
    raise QtuneError(f"export.calibration.mix.source: no such file or bundled text '{source}' (give a JSONL file in the "
                     f"recipe's data format, a text file or folder, or one of: {', '.join(CALIBRATION_TEXTS)})")


def text_blocks(tokenizer, path: Path, n: int, seq_len: int, seed: int):
    """``n`` blocks of ``seq_len`` tokens of plain text, picked with ``seed``; and the text's description."""
    import torch

    from qtune.eval.text import read_text_sources

    text = read_text_sources([str(path)])
    stream = [t for d in text.documents for t in tokenizer(d)["input_ids"]]
    have = len(stream) // seq_len
    if have < n:
        raise QtuneError(f"export.calibration.mix.source: '{path}' has {len(stream)} tokens, {have} block(s) of seq_len "
                         f"{seq_len}, fewer than the {n} its fraction asks for (lower the fraction or seq_len)")
    picked = random.Random(seed).sample(range(have), n)
    blocks = torch.tensor(stream[: have * seq_len]).view(have, seq_len)[picked]
    return blocks, text.describe()


def calibration_set(recipe, tokenizer, cal) -> tuple:
    """The blocks ``export.calibration`` (a :class:`~qtune.recipe.schema.CalibrationSection`) asks for,
    (n, seq_len), and the record of where they came from (``qtune_export.json``'s ``calibration``)."""
    import torch

    record = {"source": cal.source, "seq_len": cal.seq_len, "seed": cal.seed}
    if cal.mix is None:
        blocks = calibration_tokens(recipe, tokenizer, cal.samples, cal.seq_len, cal.source, cal.seed)
        return blocks, {**record, "samples": int(blocks.shape[0])}
    n_mix = mixed_blocks(cal.samples, cal.mix.fraction)
    task = calibration_tokens(recipe, tokenizer, cal.samples - n_mix, cal.seq_len, cal.source, cal.seed)
    kind, path = mix_source(cal.mix.source)
    if kind == "jsonl":
        general = calibration_tokens(recipe, tokenizer, n_mix, cal.seq_len, str(path), cal.seed)
        if general.shape[0] < n_mix:
            raise QtuneError(f"export.calibration.mix.source: '{path}' gives {general.shape[0]} block(s) of seq_len "
                             f"{cal.seq_len}, fewer than the {n_mix} its fraction asks for (lower the fraction or seq_len)")
        described = {"file": str(path), "format": "the recipe's data format, chat template applied"}
    else:
        general, described = text_blocks(tokenizer, path, n_mix, cal.seq_len, cal.seed)
    blocks = torch.cat([task, general])
    mix = {"source": cal.mix.source, "samples": n_mix, "fraction": n_mix / blocks.shape[0], "text": described}
    return blocks, {**record, "samples": int(blocks.shape[0]), "task_samples": int(task.shape[0]), "mix": mix}
