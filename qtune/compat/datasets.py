"""datasets internals qtune relies on.

- ``Dataset._fingerprint``: the hash datasets keeps of a dataset's content and history; qtune keys its tokenized
  cache of a Hub source by it (there is no public accessor).
"""

from __future__ import annotations

from qtune.compat.versions import require

SUPPORTED = ">=3.0,<6"
VERSION = require("datasets", SUPPORTED, __name__)
TOUCHES = [("datasets.Dataset._fingerprint", None)]


def fingerprint(dataset) -> str:
    return dataset._fingerprint
