"""Fixtures for the eval tests: a fresh tiny llama (the tiny checkpoint and run are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_llama


@pytest.fixture(name="tiny_llama")
def tiny_llama_fixture():
    """``tiny_llama(vocab_size, seed=0)``: a fresh random 2-layer llama in eval mode."""
    return tiny_llama
