"""The run directory contract, and atomic writes into it.

Other commands and users rely on this layout (each name below is a constant of this module)::

    <output_dir>/
      recipe.yaml      RECIPE: the resolved recipe (written when training starts; a failed start leaves nothing)
      run_state.json   RUN_STATE: what --resume needs: layout version, tracking run id, eval loss before training
      adapter/         ADAPTER: peft adapter + tokenizer (loads with PeftModel.from_pretrained)
      metrics.jsonl    METRICS: one JSON object per logged step: step, loss, lr, grad_norm, tokens_per_s[, eval_loss]
      summary.json     SUMMARY: eval_loss_before/after, steps, train_tokens, tokens_per_s, peak_memory_bytes and
                       peak_memory_kind (qtune.memory), wall_s, world_size, global_batch_size, distributed,
                       resumed_from_step, sessions, device, data, trainable_parameters, this_session
      loss.png         LOSS_PLOT: train and eval loss curves
      checkpoints/     CHECKPOINTS: Trainer checkpoints (checkpoint-N), each renamed into place when complete; the
                       newest train.keep_checkpoints are kept (see qtune.train.resume)
      exports/<name>/  EXPORTS: merged / GPTQ / AWQ / GGUF exports, each with EXPORT_MANIFEST (qtune_export.json),
                       EXPORT_FIDELITY (fidelity.json) and README.md
      report.{md,json,png}  REPORT_MD, REPORT_JSON, REPORT_PNG: the fidelity table written by ``qtune report``
      report-rows/     REPORT_ROWS: qtune report's rows as measured, reused by the next report
      fidelity-reference/   FIDELITY_REFERENCE: the merged (and trained) model's fidelity scores, one JSON per key,
                            reused by every later export (qtune.export.reference)
      tensorboard/     TENSORBOARD: event files (tracking.backend: tensorboard)
      wandb/           wandb's offline runs (tracking.backend: wandb; WANDB_DIR is the run directory)

Every file and folder here is written to a temporary name first and renamed into place, so an
interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

RECIPE = "recipe.yaml"
ADAPTER = "adapter"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOSS_PLOT = "loss.png"
CHECKPOINTS = "checkpoints"
RUN_STATE = "run_state.json"
EXPORTS = "exports"
EXPORT_MANIFEST = "qtune_export.json"
EXPORT_FIDELITY = "fidelity.json"
REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"
REPORT_ROWS = "report-rows"  # one JSON file per measured row: {"key": ..., "row": ...}
TENSORBOARD = "tensorboard"
FIDELITY_REFERENCE = "fidelity-reference"  # the merged and trained models' fidelity scores (qtune.export.reference)


def is_finished_run(path: Path) -> bool:
    """A run directory that later steps (merge, export, eval, report) can use: recipe + adapter."""
    return (path / RECIPE).is_file() and (path / ADAPTER).is_dir()


@contextmanager
def atomic_path(final: str | Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it onto ``final`` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if directory else tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path):
    """A JSON file qtune wrote; one error naming it when it no longer reads (truncated, edited, not UTF-8)."""
    from qtune.errors import QtuneError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise QtuneError(f"{path}: cannot be read ({type(e).__name__}: {str(e)[:200]}); it was damaged after "
                         f"qtune wrote it: restore it or write it again") from None


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def check_adapter(run: Path) -> None:
    """The run's ``adapter/`` has peft's two files, a JSON object and a safetensors file whose header reads:
    checked before any command loads a base model for it."""
    import struct

    from qtune.errors import QtuneError

    adapter = run / ADAPTER
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (adapter / name).is_file():
            raise QtuneError(f"{adapter / name}: missing; this run's adapter is incomplete (train the run again)")
        if name == ADAPTER_CONFIG and not isinstance(read_json(adapter / name), dict):
            raise QtuneError(f"{adapter / name}: not a peft adapter config (a JSON object); train the run again")
    weights = adapter / ADAPTER_WEIGHTS
    with weights.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        try:
            ok = 0 < n <= weights.stat().st_size - 8 and isinstance(json.loads(f.read(n)), dict)
        except ValueError:
            ok = False
    if not ok:
        raise QtuneError(f"{weights}: not a readable safetensors file (truncated or damaged); train the run again")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
