"""``qtune plan --measure`` runs train's own steps and reports the peak-memory kind ``train`` writes to summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from qtune import memory, rundir

from tests.conftest import write_recipe


def _qtune(*argv: str) -> subprocess.CompletedProcess:
    """A fresh process: the peak is a process's growth over its own baseline (in the suite's long-lived process,
    memory freed by earlier tests is reused without growing the resident set)."""
    return subprocess.run([sys.executable, "-m", "qtune.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_measure_and_train_report_the_same_peak_kind(tmp_path, tiny_llama_dir):
    recipe = str(write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, train={"max_steps": 1}))
    plan = _qtune("plan", recipe, "--measure", "--json", "--no-time")
    assert plan.returncode == 0, plan.stderr[-2000:]
    measured = json.loads(plan.stdout)["measured"]
    train = _qtune("train", recipe)
    assert train.returncode == 0, train.stderr[-2000:]
    summary = rundir.read_json(tmp_path / "run" / rundir.SUMMARY)
    assert measured["peak_kind"] == summary["peak_memory_kind"] == memory.CPU_KIND
    assert measured["peak_bytes"] > 0 and summary["peak_memory_bytes"] > 0, (measured, summary["peak_memory_bytes"])
    assert measured["batch"] == 4 and measured["seq"] > 0 and measured["kernels"] == "bitsandbytes"
