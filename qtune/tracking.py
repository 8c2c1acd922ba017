"""Experiment tracking: which Trainer ``report_to`` to use, and the environment it needs.

wandb runs offline unless an API key is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry for
api.wandb.ai), writing under ``<run>/wandb`` so the run can be uploaded later with
``wandb sync <run>/wandb/offline-run-*``. tensorboard writes event files under ``<run>/tensorboard``.
"""

from __future__ import annotations

import netrc
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qtune import rundir


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def configure(tracking, run_dir: Path, run_id: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The Trainer's ``report_to`` for ``tracking.backend`` and the environment it reads.

    ``run_id`` (kept in the run directory) makes a resumed run continue the same wandb run;
    tensorboard continues by writing to the same folder.
    """
    if tracking.backend == "none":
        return [], {}
    if tracking.backend == "tensorboard":
        return ["tensorboard"], {"TENSORBOARD_LOGGING_DIR": str(run_dir / rundir.TENSORBOARD)}
    env = {"WANDB_DIR": str(run_dir), "WANDB_PROJECT": tracking.project, "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true")}
    if run_id:
        env.update(WANDB_RUN_ID=run_id, WANDB_RESUME="allow")
    if not wandb_key_configured():
        env["WANDB_MODE"] = os.environ.get("WANDB_MODE", "offline")
    return ["wandb"], env


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block and restore what was there before; a wandb run begun in it ends with it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        wandb = sys.modules.get("wandb")
        if "WANDB_PROJECT" in values and wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish()  # else the next train in this process would log into this run,
            wandb.teardown()  # and wandb's settings singleton would keep this run's WANDB_DIR
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
