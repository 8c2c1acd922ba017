"""The preprocessing cache: tokenized train/eval rows stored under ``$QTUNE_CACHE/data/<key>.npz``.

The key is a sha256 over everything that changes the tokens: each source's content hash (every
file's bytes), the tokenizer (its serialized vocabulary, merges and normalizer, special tokens),
the chat template's source, every ``data`` option that shapes rows (format, system prompt,
train_on, max_length, truncation, eval split, limits), the seed, and this module's format
version. Packing is applied after the cache (a cheap, deterministic pass over cached rows), so
the cached tokens do not depend on it.

The file is a plain ``.npz`` (no pickle; read with ``allow_pickle=False``), written under a
temporary name and renamed into place, so an interrupted write leaves no half file under the key.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

from qtune import __version__
from qtune.cachedir import cache_root
from qtune.rundir import atomic_path

CACHE_VERSION = 2  # 2: chat rows start with the tokenizer's BOS where it adds one
SPLITS = ("train", "eval")


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's ids: its serialized model (fast tokenizers) or vocab, and special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()


def cache_key(parts: dict) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, "qtune": __version__, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cache_root() / "data" / f"{key}.npz"


def save(path: Path, splits: dict[str, list[dict]], stats: dict) -> None:
    """Store each split's rows as flat int32 ``input_ids``/``labels`` plus row lengths, and the stats as JSON bytes."""
    import numpy as np

    arrays = {"stats": np.frombuffer(json.dumps(stats).encode(), dtype=np.uint8)}
    for name in SPLITS:
        rows = splits[name]
        arrays[f"{name}_lengths"] = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
        arrays[f"{name}_input_ids"] = np.array([t for r in rows for t in r["input_ids"]], dtype=np.int32)
        arrays[f"{name}_labels"] = np.array([t for r in rows for t in r["labels"]], dtype=np.int32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load(path: Path) -> tuple[dict[str, list[dict]], dict] | None:
    """The cached splits and stats, or None when there is no (readable) entry."""
    import numpy as np

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = json.loads(z["stats"].tobytes().decode())
            splits = {}
            for name in SPLITS:
                ends = np.cumsum(z[f"{name}_lengths"]).tolist()
                ids, labels = z[f"{name}_input_ids"].tolist(), z[f"{name}_labels"].tolist()
                starts = [0, *ends[:-1]]
                splits[name] = [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in zip(starts, ends)]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # a corrupt or foreign file is a miss, rewritten below
        return None
    return splits, stats
