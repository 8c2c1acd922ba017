"""``train.cross_entropy / rms_norm / rope: liger``: liger-kernel's fused kernels, put on one model instance.

Nothing is patched at import and nothing outside the instance is changed for good:

- cross-entropy: liger's own ``apply_liger_kernel_to_<family>(model=..., fused_linear_cross_entropy=True)`` with
  every other flag off, which binds liger's ``lce_forward`` to that instance only (``model.forward``). In training
  (labels given) it runs lm_head and the cross-entropy chunk by chunk of tokens and computes the hidden states'
  gradient in the forward, so the ``(N, vocab)`` float32 logits and their gradient are never kept: what is saved
  for backward is that ``(N, hidden)`` gradient. The ``auto`` logits of generation and evaluation are unchanged
  (``lce_forward`` materialises them when not training or without labels);
- RMSNorm: each ``*RMSNorm`` module of the instance gets liger's ``LigerRMSNorm.forward`` through liger's
  per-instance helper, with the family's norm offset (Gemma: ``x̂ · (1 + w)``, computed in float32 as Gemma does);
- RoPE (refused on CPU for 16-bit activations: liger's kernel returns NaN for them in Triton's interpreter, liger-kernel
  0.8.5 with triton 3.9; unmeasured on a GPU): transformers has no per-instance hook for ``apply_rotary_pos_emb``
  (each attention's forward looks it up in
  its modeling module), so each attention module's forward is wrapped to see liger's function only while it runs
  (also in gradient checkpointing's recompute); the module's own function is back after every call.

The family's liger name comes from :mod:`qtune.registry.families` (``liger``); a family without one is refused.
"""

from __future__ import annotations

import inspect

from qtune.compat.liger import RMS_NORM_PATCHED, patch_rms_norm
from qtune.compat.transformers import has_module_rotary, module_rotary
from qtune.errors import QtuneError
from qtune.registry.families import Family

_ROPE = "_qtune_liger_rope"


def _liger_name(family: Family, switch: str) -> str:
    if family.liger is None:
        raise QtuneError(f"train.{switch}: liger-kernel has no kernels for {family.title} ({family.model_type}) "
                         f"models; use train.{switch}=torch or auto")
    return family.liger


def fused_cross_entropy(base, family: Family) -> None:
    """Bind liger's fused linear + cross-entropy forward to ``base`` (the transformers model, not peft's wrapper)."""
    from liger_kernel.transformers import monkey_patch

    name = _liger_name(family, "cross_entropy")
    on_cuda = next(base.parameters()).device.type == "cuda"
    if getattr(base.config, "final_logit_softcapping", None) and not on_cuda:
        raise QtuneError(f"train.cross_entropy: 'liger' with {family.title}'s final_logit_softcapping needs a CUDA GPU "
                         "(liger's softcapping kernel does not run under Triton's CPU interpreter); use "
                         "train.cross_entropy=torch or auto")
    apply = getattr(monkey_patch, f"apply_liger_kernel_to_{name}")
    flags = {name: False for name, p in inspect.signature(apply).parameters.items() if isinstance(p.default, bool)}
    apply(model=base, **{**flags, "fused_linear_cross_entropy": True})


def rms_norms(base, family: Family) -> int:
    """Route every RMSNorm module of ``base`` through liger's kernel; returns how many."""
    _liger_name(family, "rms_norm")
    gemma = family.norm_offset != 0.0
    norms = [m for m in base.modules() if type(m).__name__.endswith("RMSNorm")]
    for m in norms:  # Gemma computes in float32 and scales by (1 + w) before casting back: liger's "gemma" mode
        patch_rms_norm(m, offset=family.norm_offset, casting_mode="gemma" if gemma else "llama", in_place=not gemma)
    return len(norms)


def _rope_forward(attn, *args, **kwargs):
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    with module_rotary(attn, liger_rotary_pos_emb):
        return type(attn).forward(attn, *args, **kwargs)


def rope(base, family: Family) -> int:
    """Make each attention module of ``base`` apply liger's rotary embedding; returns how many."""
    from functools import partial

    import torch

    _liger_name(family, "rope")
    embeddings = base.get_input_embeddings().weight  # its dtype is the residual stream's, so q's and k's
    if embeddings.device.type != "cuda" and embeddings.dtype != torch.float32:
        raise QtuneError(f"train.rope: 'liger' with {str(embeddings.dtype).removeprefix('torch.')} activations needs a "
                         "CUDA GPU (liger's rotary kernel returns NaN for 16-bit inputs in Triton's CPU interpreter); "
                         "use train.rope=torch, or train.frozen_dtype=float32 on CPU")
    count = 0
    for m in base.modules():
        if type(m).__name__.endswith("Attention") and has_module_rotary(m):
            m.forward = partial(_rope_forward, m)
            setattr(m, _ROPE, True)
            count += 1
    return count


def remove(model) -> None:
    """Give ``model`` back transformers' own forward, norms and attention (undoes :func:`apply`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vars(base).pop("forward", None)
    for m in base.modules():
        if type(m).__name__.endswith("RMSNorm"):
            for name in RMS_NORM_PATCHED:
                vars(m).pop(name, None)
        if vars(m).pop(_ROPE, False):
            vars(m).pop("forward", None)


def apply(model, family: Family, cross_entropy: str, rms_norm: str, rope_mode: str) -> dict[str, int]:
    """Put the resolved ``liger`` choices on ``model`` (a peft model or a transformers one); what each took."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    taken = {}
    if cross_entropy == "liger":
        fused_cross_entropy(base, family)
        taken["cross_entropy"] = 1
    if rms_norm == "liger":
        taken["rms_norm"] = rms_norms(base, family)
    if rope_mode == "liger":
        taken["rope"] = rope(base, family)
    return taken
