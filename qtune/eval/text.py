"""The plain text that perplexity is measured on: which files, their hash, and a token cap.

``--text`` takes files and directories; a directory contributes its ``*.txt``, ``*.md`` and
``*.rst`` files (recursively, sorted by path). Each file is one document. The default is the
bundled Python-tutorial excerpt in ``data/python-docs/tutorial`` (see its README). The SHA-256 of
the bytes, in order, identifies the text in reports, so two numbers are comparable only when the
hashes, window, stride and token cap agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from qtune.errors import QtuneError
from qtune.registry.exports import CALIBRATION_TEXTS

BUNDLED_ROOT = Path(__file__).resolve().parents[2]  # the checkout: bundled texts' paths are relative to it
DEFAULT_TEXT = BUNDLED_ROOT / CALIBRATION_TEXTS["python-docs"]
SUFFIXES = (".txt", ".md", ".rst")


@dataclass
class EvalText:
    files: list[Path]
    documents: list[str]
    sha256: str  # over every file's bytes, in order

    def describe(self) -> dict:
        return {"files": [str(f) for f in self.files], "sha256": self.sha256, "bytes": sum(len(d.encode()) for d in self.documents)}


def read_text_sources(paths: list[str] | None) -> EvalText:
    """Expand files and directories into documents (``paths`` empty or None: the bundled excerpt)."""
    if not paths:
        if not DEFAULT_TEXT.is_dir():
            raise QtuneError(f"--text: the bundled eval text is missing ({DEFAULT_TEXT}); give --text FILE|DIR")
        paths = [str(DEFAULT_TEXT)]
    files: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
            if not found:
                raise QtuneError(f"--text: directory '{p}' has no text files (looked for {', '.join('*' + s for s in SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise QtuneError(f"--text: no such file or directory '{p}'")
    digest = hashlib.sha256()
    documents = []
    for f in files:
        raw = f.read_bytes()
        digest.update(raw)
        documents.append(raw.decode("utf-8", errors="replace"))
    return EvalText(files, documents, digest.hexdigest())


@dataclass
class TokenizedText:
    documents: list[list[int]]
    tokens: int
    truncated: bool
    cap: int | None
    notes: dict = field(default_factory=dict)


def tokenize_documents(tokenizer, text: EvalText, max_tokens: int | None) -> TokenizedText:
    """Tokenize each document (with the tokenizer's own special tokens) and keep at most ``max_tokens`` in all.

    Documents are taken in order; the one that crosses the cap is cut and the rest dropped.
    """
    docs: list[list[int]] = []
    total = 0
    truncated = False
    for d in text.documents:
        ids = list(tokenizer(d)["input_ids"])
        if max_tokens is not None and total + len(ids) > max_tokens:
            ids = ids[: max_tokens - total]
            truncated = True
        if len(ids) >= 2:
            docs.append(ids)
            total += len(ids)
        if truncated:
            break
    if total < 2:
        raise QtuneError("--text: the eval text has fewer than 2 tokens; give a longer text")
    return TokenizedText(docs, total, truncated, max_tokens)
