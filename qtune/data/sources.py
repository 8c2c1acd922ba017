"""Reading raw rows from a data source: local jsonl/json/parquet/csv files, folders of them, Hub datasets.

Every row comes back with ``where`` (``file:line`` or ``file[row]``) so a later error can point at
it. :func:`fingerprint` names a source's exact content for the preprocessing cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

from qtune.compat.datasets import fingerprint as dataset_fingerprint
from qtune.errors import QtuneError, missing_dependency
from qtune.registry.choices import HUB_PREFIX

Row = tuple[dict, str]  # (row, where)


def _utf8(raw: bytes, where: str) -> str:
    """``raw`` as text; bytes that are not UTF-8 (a binary file, latin-1, UTF-16) are one error naming the first."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QtuneError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                         f"save the file as UTF-8 (a binary file is not a data file)") from None


def _parse(text: str, where: str, whole_file: bool = False):
    """One JSON document (a line, or ``whole_file``: the error names its line); malformed or nested too deep is one error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = f":{e.lineno}" if whole_file else ""
        raise QtuneError(f"{where}{line}: malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise QtuneError(f"{where}: JSON nested too deeply to read (rows are objects of text and lists of messages)") from None


def _jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = _utf8(raw, where).removeprefix("\ufeff")  # a BOM (Windows editors write one) is not data
            if not line.strip():
                continue
            row = _parse(line, where)
            if not isinstance(row, dict):
                raise QtuneError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            yield row, where


def _json(path: Path) -> Iterator[Row]:
    data = _parse(_utf8(path.read_bytes(), str(path)).removeprefix("\ufeff"), str(path), whole_file=True)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise QtuneError(f"{path}: a .json data file holds a list of row objects (or {{\"data\": [...]}}), got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise QtuneError(f"{path}[{i}]: each row must be a JSON object, got {type(row).__name__}")
        yield row, f"{path}[{i}]"


def _table(reader: str) -> Callable[[Path], Iterator[Row]]:
    def read(path: Path) -> Iterator[Row]:
        import pandas as pd

        try:
            frame = getattr(pd, reader)(path)
        except Exception as e:  # pandas/pyarrow raise many types for a corrupt file
            raise QtuneError(f"{path}: cannot read as {path.suffix[1:]} ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        for i, row in enumerate(frame.to_dict(orient="records")):
            yield {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()}, f"{path}[{i}]"

    return read


# file suffix -> reader
READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    ".jsonl": _jsonl,
    ".json": _json,
    ".parquet": _table("read_parquet"),
    ".csv": _table("read_csv"),
}


def files_of(path: str | Path, field: str) -> list[Path]:
    """The data files a source names: the file itself, or every readable file in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in READERS)
        if not files:
            raise QtuneError(f"{field}: folder '{path}' holds no {', '.join(READERS)} files")
        return files
    if not path.is_file():
        raise QtuneError(f"{field}: no such file or folder '{path}'")
    if path.suffix not in READERS:
        raise QtuneError(f"{field}: cannot read '{path.name}' (allowed suffixes: {', '.join(READERS)})")
    return [path]


def _hub_dataset(name: str, split: str, field: str):
    try:
        import datasets
    except ImportError:
        raise missing_dependency(f"{field}: Hub dataset '{name}'", "datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all end the same way for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QtuneError(
            f"{field}: cannot load Hub dataset '{name}' split '{split}' ({first[:200]}); "
            f"offline? save it as a local jsonl/parquet file and point the recipe at it"
        ) from None
    return ds


def read_rows(path: str, field: str, split: str = "train") -> list[Row]:
    """Every row of one source, each with its ``where``; an empty source is an error."""
    if path.startswith(HUB_PREFIX):
        name = path[len(HUB_PREFIX):]
        rows = [(row, f"{path}[{split}][{i}]") for i, row in enumerate(_hub_dataset(name, split, field))]
    else:
        rows = [r for f in files_of(path, field) for r in READERS[f.suffix](f)]
    if not rows:
        raise QtuneError(f"{field}: '{path}' holds no examples")
    return rows


def fingerprint(path: str, field: str, split: str = "train") -> str:
    """sha256 over the content of every file of a source (a Hub source: its ``datasets`` fingerprint)."""
    h = hashlib.sha256()
    if path.startswith(HUB_PREFIX):
        h.update(dataset_fingerprint(_hub_dataset(path[len(HUB_PREFIX):], split, field)).encode())
        return h.hexdigest()
    for f in files_of(path, field):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
