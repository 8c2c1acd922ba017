"""Calibration tokens for GPTQ/AWQ: by default the recipe's own training conversations.

Quantizers fit the inputs they see, so the default is the deployment distribution — the recipe's
training data rendered with its chat template, exactly as training encoded it. ``source`` may also
be ``eval`` or the path of another JSONL file in the recipe's data format. Rows are shuffled with
``seed``, concatenated and cut into ``samples`` blocks of ``seq_len`` tokens (no padding, so every
token counts).
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
