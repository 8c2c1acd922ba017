"""torch internals qtune relies on.

- ``Module._buffers``: a module's buffers by name. Putting a tensor there keeps the buffer's registration (its
  ``persistent`` flag) as the model's constructor made it; ``register_buffer`` would reset it.
"""

from __future__ import annotations

from qtune.compat.versions import require

SUPPORTED = ">=2.4,<3"
VERSION = require("torch", SUPPORTED, __name__)
TOUCHES = [("torch.nn.Module._buffers", None)]


def set_buffer(module, name: str, value) -> None:
    """Give ``module``'s existing buffer ``name`` the tensor ``value``, its registration unchanged."""
    module._buffers[name] = value
