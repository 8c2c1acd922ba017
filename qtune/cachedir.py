"""Where qtune keeps what it builds once and reuses: ``$QTUNE_CACHE``, or ``~/.cache/qtune``.

Under it: ``models/`` (GGUF files converted into float checkpoints), ``gguf/`` (packaged GGUF parts joined),
``data/`` (tokenized datasets). A leaf: models and data both read it, and it imports nothing of qtune.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("QTUNE_CACHE", Path.home() / ".cache" / "qtune"))
