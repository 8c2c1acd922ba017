"""Every tokenizer qtune loads, from a checkpoint directory, a Hub id or a ``.gguf`` file, gets a pad token:
the EOS token where the tokenizer defines none (batches are padded; padded positions are masked out)."""

from __future__ import annotations

from pathlib import Path

from qtune.errors import QtuneError


def with_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer_at(path, field: str, given: str, **kwargs):
    """The tokenizer at ``path`` (a directory or a Hub id); the error names the ``field`` and what was ``given``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as e:  # no tokenizer files, or ones transformers cannot build a tokenizer from
        text = str(e).strip()
        raise QtuneError(f"{field}: could not load a tokenizer from '{given}' "
                         f"({text.splitlines()[0] if text else type(e).__name__})") from None
    return with_pad(tok)


def gguf_tokenizer(file: Path):
    """The tokenizer a ``.gguf`` file carries (vocabulary, merges, special tokens, chat template), as stored: no pad
    token is added (a converted checkpoint saves it as the file has it; :func:`with_pad` at load time)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
