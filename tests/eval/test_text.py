"""The eval text: the bundled excerpt's bytes are pinned, caps are exact, bad paths are errors."""

from __future__ import annotations

import hashlib

import pytest

from qtune.errors import QtuneError
from qtune.eval.text import DEFAULT_TEXT, read_text_sources, tokenize_documents


def test_bundled_excerpt_matches_its_checksums():
    sums = dict(line.split("  ")[::-1] for line in (DEFAULT_TEXT.parent / "SHA256SUMS").read_text().splitlines())
    text = read_text_sources(None)
    assert [f.name for f in text.files] == sorted(
        f"{n}.rst.txt" for n in ["classes", "controlflow", "datastructures", "errors", "introduction", "modules"]
    )
    for f in text.files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sums[f"tutorial/{f.name}"]
    assert text.sha256 == read_text_sources([str(DEFAULT_TEXT)]).sha256
    assert (DEFAULT_TEXT.parent / "LICENSE.rst.txt").is_file()


def test_token_cap_cuts_in_order(tiny_checkpoint, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    (tmp_path / "a.txt").write_text("one two three four five six seven eight nine ten " * 3)
    (tmp_path / "b.md").write_text("eleven twelve")
    (tmp_path / "skip.json").write_text("{}")
    text = read_text_sources([str(tmp_path)])
    assert [f.name for f in text.files] == ["a.txt", "b.md"]
    full = tokenize_documents(tok, text, None)
    assert not full.truncated and full.tokens == sum(len(d) for d in full.documents) and len(full.documents) == 2
    capped = tokenize_documents(tok, text, 12)
    assert capped.truncated and capped.tokens == 12 and capped.documents == [full.documents[0][:12]]


def test_bad_text_paths_are_errors(tmp_path):
    with pytest.raises(QtuneError, match="no such file or directory"):
        read_text_sources([str(tmp_path / "nope.txt")])
    with pytest.raises(QtuneError, match="has no text files"):
        read_text_sources([str(tmp_path)])
