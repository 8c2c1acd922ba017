"""transformers internals qtune relies on.

- ``Trainer._save_checkpoint(model, trial)``: qtune writes each checkpoint under a staging folder and renames it into
  place (a crash never leaves half a checkpoint under its final name); Trainer has no public hook around its save.
- ``Trainer._track_num_input_tokens(inputs)``: a packed batch has no attention mask, so Trainer would count its padding.
- ``PretrainedConfig._attn_implementation``: the attention the model runs (packing needs one that honours packed rows).
- ``apply_rotary_pos_emb`` of a model's ``modeling_*`` module: attention forwards look it up there on every call and
  transformers has no per-instance hook, so liger's rotary kernel goes in by swapping that global for one call.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from qtune.compat.versions import require

SUPPORTED = ">=5.0,<5.26"
VERSION = require("transformers", SUPPORTED, __name__)
# (object path, the parameters qtune calls it with); tests/compat/test_compat.py checks each
TOUCHES = [
    ("transformers.Trainer._save_checkpoint", ["self", "model", "trial"]),
    ("transformers.Trainer._track_num_input_tokens", ["self", "inputs"]),
    ("transformers.PretrainedConfig._attn_implementation", None),
    # called by its module-global name from the attention's forward (what the swap relies on; transformers 5.25 with
    # the `kernels` package wraps the function itself, so its own signature reads (*args, **kwargs))
    ("transformers.models.llama.modeling_llama.apply_rotary_pos_emb", None),
]
ROTARY_CALLERS = ["transformers.models.llama.modeling_llama.LlamaAttention.forward"]


class TrainerHooks:
    """Mix in ahead of ``transformers.Trainer``: its two private steps qtune changes, under public names.

    A subclass overrides :meth:`save_checkpoint` and :meth:`count_input_tokens`, and reaches Trainer's own
    behaviour through :meth:`trainer_save_checkpoint` and :meth:`trainer_count_input_tokens`.
    """

    def _save_checkpoint(self, model, trial) -> None:
        self.save_checkpoint(model, trial)

    def _track_num_input_tokens(self, inputs) -> None:
        self.count_input_tokens(inputs)

    def save_checkpoint(self, model, trial) -> None:
        self.trainer_save_checkpoint(model, trial)

    def count_input_tokens(self, inputs) -> None:
        self.trainer_count_input_tokens(inputs)

    def trainer_save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)

    def trainer_count_input_tokens(self, inputs) -> None:
        super()._track_num_input_tokens(inputs)


def attn_implementation(config) -> str | None:
    """The attention implementation a model's config says it runs (``sdpa``, ``eager``, ``flash_attention_2``...)."""
    return getattr(config, "_attn_implementation", None)


def has_module_rotary(module) -> bool:
    """Whether ``module``'s modeling file defines the ``apply_rotary_pos_emb`` its forward looks up."""
    return hasattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb")


@contextmanager
def module_rotary(module, fn):
    """``fn`` as the ``apply_rotary_pos_emb`` of ``module``'s modeling file while the block runs, then the original.

    Process-wide while it lasts: any other attention of the same family that runs meanwhile (another thread) gets it too.
    """
    modeling = sys.modules[type(module).__module__]
    own = modeling.apply_rotary_pos_emb
    modeling.apply_rotary_pos_emb = fn
    try:
        yield
    finally:
        modeling.apply_rotary_pos_emb = own
