"""Experiment tracking: which Trainer ``report_to`` to use, and the environment it needs.

wandb runs offline unless an API key is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai), writing under ``<run>/wandb`` so the run can be uploaded later with
``wandb sync <run>/wandb/offline-run-*``. tensorboard writes event files under ``<run>/tensorboard``.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def configure(tracking, run_dir: Path) -> list[str]:
    """Set the environment for ``tracking.backend`` and return the Trainer's ``report_to``."""
    if tracking.backend == "none":
        return []
    if tracking.backend == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
        return ["tensorboard"]
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ["WANDB_PROJECT"] = tracking.project
    if not wandb_key_configured():
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return ["wandb"]
