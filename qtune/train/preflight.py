"""The checks ``qtune validate`` and ``qtune train`` both make before any weight loads, in one function.

``validate`` calls it with ``convert=False`` and the device the recipe names (None for ``auto``: known only
when training); ``train`` with the device it resolved and ``convert=True`` (a packaged model or a ``.gguf``
file is converted once into the cache here). So whatever ``validate`` passes, ``train`` does not refuse for
a reason ``validate`` could have seen; what needs the tokenizer, the weights or the run directory's state is
refused by the later steps (:mod:`qtune.train.steps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtune.errors import QtuneError


@dataclass(frozen=True)
class Checked:
    family: object | None  # the model's qtune.registry.families entry (None: validate, nothing converted)
    switches: dict[str, str]  # the memory switches as qtune.kernels.dispatch.check_switches resolved them
    holds_a_run: bool  # train.output_dir already holds files


def preflight(recipe, device: str | None, convert: bool = True) -> Checked:
    """Refuse (one QtuneError) what cannot train on ``device``; no weight, tokenizer or data row is loaded."""
    from qtune.kernels.dispatch import check_switches
    from qtune.models.load import model_family, resolve_model_path
    from qtune.models.packaged import check_gguf_lora_targets
    from qtune.train.resume import holds_a_run

    if convert:
        family = model_family(recipe.model)  # an unsupported family is refused before anything runs
    else:
        model = resolve_model_path(recipe.model.path, convert=False)  # the same checks, nothing converted
        check_gguf_lora_targets(recipe, model)  # train checks them on the loaded base (qtune.train.steps.load_base)
        family = None
    switches = check_switches(recipe.train, device)  # a liger choice without liger-kernel, or on a device it cannot run on
    if recipe.optimizer_is_paged and device is not None and device != "cuda":
        raise QtuneError(f"train.optimizer: '{recipe.train.optimizer}' needs a CUDA GPU (running on {device}); use adamw_torch")
    return Checked(family, switches, holds_a_run(Path(recipe.train.output_dir)))
