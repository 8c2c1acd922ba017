"""Merge a run's LoRA adapter into a 16-bit checkpoint: ``W' = W_base + scaling · B A``.

Two choices of ``W_base`` (``--base``):

- ``dequantized``: the base the adapter was trained against — every linear the recipe quantized
  (NF4/FP4 with its blocksize and double quantization, or INT8 rows) is quantized and dequantized
  exactly as bitsandbytes did during training. The merged model then computes what the trained
  model computed, up to the storage dtype.
- ``original``: the 16/32-bit weights before quantization. The adapter may have learned to
  correct some quantization error, which then is corrected twice; but the base itself is better.

:data:`~qtune.registry.exports.DEFAULT_MERGE_BASE` is the one that measured better (docs/export.md has the figures).
"""

from __future__ import annotations

from pathlib import Path

from qtune import rundir
from qtune.errors import QtuneError

from qtune.registry.exports import DEFAULT_MERGE_BASE as DEFAULT_BASE
from qtune.registry.exports import MERGE_BASES


def merged_model(run_dir: str | Path, base: str = DEFAULT_BASE, device="cpu"):
    """The run's adapter merged into ``base`` as one float32 model in memory, plus recipe and tokenizer.

    For small models (tests, benchmark scripts): exports stream layer by layer instead
    (:mod:`qtune.export.stream`); both take their tensors from :class:`~qtune.export.layerwise.MergedWeights`.
    """
    from transformers import AutoTokenizer

    from qtune.export.layerwise import MergedWeights, restore_buffers, skeleton

    if base not in MERGE_BASES:
        raise QtuneError(f"--base: '{base}' is not one of {', '.join(MERGE_BASES)}")
    weights = MergedWeights(run_dir, base, device)
    model = skeleton(weights.config)
    head = f"{weights.head}.weight" if weights.tied else None
    state = {k: weights(k) for k in model.state_dict() if k != head}
    model.to_empty(device=device)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {head}, result
    if weights.tied:
        model.tie_weights()
    restore_buffers(model, device)  # rotary inv_freq, Gemma's embed_scale: in no checkpoint
    tokenizer = AutoTokenizer.from_pretrained(str(Path(run_dir) / rundir.ADAPTER))
    return model.eval(), weights.recipe, tokenizer
