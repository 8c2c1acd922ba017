"""``qtune plan --measure`` runs train's own steps and reports the peak-memory kind ``train`` writes to summary.json."""

from __future__ import annotations

import json

from qtune import memory, rundir
from qtune.cli import main

from tests.conftest import write_recipe


def test_measure_and_train_report_the_same_peak_kind(tmp_path, tiny_llama_dir, capsys):
    recipe = str(write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, train={"max_steps": 1}))
    assert main(["plan", recipe, "--measure", "--json", "--no-time"]) == 0
    measured = json.loads(capsys.readouterr().out)["measured"]
    assert main(["train", recipe]) == 0, capsys.readouterr().err[-2000:]
    summary = rundir.read_json(tmp_path / "run" / rundir.SUMMARY)
    assert measured["peak_kind"] == summary["peak_memory_kind"] == memory.CPU_KIND
    assert measured["peak_bytes"] > 0 and summary["peak_memory_bytes"] > 0
    assert measured["batch"] == 4 and measured["seq"] > 0 and measured["kernels"] == "bitsandbytes"
