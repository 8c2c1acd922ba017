"""The free-disk check before a run: the estimate's parts, and a refusal in one line when it cannot fit."""

import shutil

import pytest

from qtune.errors import QtuneError
from qtune.recipe.schema import Recipe
from qtune.train.disk import check_free_disk, checkpoint_bytes, export_bytes, needed_bytes


def _recipe(**train):
    return Recipe.model_validate({"model": {"path": "m"}, "data": {"train": ["d.jsonl"]}, "train": train,
                                  "export": {"formats": ["merged", "gptq", "gguf"], "gguf_types": ["Q8_0"]}})


def test_estimate_counts_kept_checkpoints_and_each_export():
    r = _recipe(save_steps=10, keep_checkpoints=2)
    per_ckpt = checkpoint_bytes(1000, "adamw_torch")
    assert per_ckpt == 1000 * 12 + 2**20  # fp32 LoRA weights + AdamW's two fp32 moments + state files
    assert checkpoint_bytes(1000, "adamw_8bit") == 1000 * 6 + 2**20
    exports = export_bytes(r.export, 10**6)
    assert exports == int((2 + 0.75 + 1.07) * 10**6)  # merged fp16, 4-bit GPTQ, GGUF Q8_0
    assert needed_bytes(r, 1000, 10**6) == 3 * per_ckpt + 1000 * 4 + 2**20 + exports
    assert needed_bytes(_recipe(), 1000, 10**6) == 1000 * 4 + 2**20 + exports, "no save_steps: no checkpoints"


def test_refuses_when_clearly_insufficient(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    check_free_disk(tmp_path / "run", free // 2)  # fits: nothing raised
    with pytest.raises(QtuneError, match=r"train.output_dir: .* GiB free but this run's checkpoints and exports need"):
        check_free_disk(tmp_path / "not" / "yet" / "run", free * 2)
