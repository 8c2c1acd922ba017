"""Shared fixtures: the packaged SmolLM2 tokenizer and a private preprocessing cache per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smol_path() -> Path:
    """The packaged SmolLM2 checkpoint dir (converted once, in the real cache); recipes name it by path."""
    from qtune.models.packaged import materialize

    return materialize("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_path)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, smol_path):
    """Each test gets its own QTUNE_CACHE, so cache hits and misses are its own."""
    monkeypatch.setenv("QTUNE_CACHE", str(tmp_path / "cache"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
