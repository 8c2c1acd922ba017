"""scripts/gpu_all.py --tiny: the one GPU command rehearsed on CPU through the same code, so it cannot rot between
GPU runs. What comes back from the device machine is checked as the device tool returns it: at most 8 files, the
summary as JSON and as a markdown table, the logs in one archive."""

import json
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import REPO

STEPS = ["env", "train_step_7b", "plan_7b", "export_7b", "distributed", "train_e2e", "generate_eval", "kernels",
         "train_step_compiled", "profile"]


def _run(tmp_path, model, *args, timeout=900):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "scripts/gpu_all.py", "--tiny", "--out", str(out), "--model", str(model),
                           "--work", str(tmp_path / "work"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    return proc, out


def _returned(out) -> dict:
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["logs.tar.gz", "summary.json", "summary.md"], files  # the device tool returns at most 8
    summary = json.loads((out / "summary.json").read_text())
    table = (out / "summary.md").read_text()
    assert [s["step"] for s in summary["steps"]] == STEPS
    for s in summary["steps"]:
        assert f"| {s['step']} | {s['status']} |" in table
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {m.name for m in tar.getmembers()}
    assert "logs/env.log" in logs
    return summary


def test_a_deadline_too_short_for_any_step_still_returns_the_summary(tmp_path, tiny_llama_dir):
    """Only the environment check fits in 40 s (every other step needs 4 x its GPU minimum on the CPU, 40 s or more):
    every other step is skipped, saying what it needed."""
    proc, out = _run(tmp_path, tiny_llama_dir, "--deadline", "40")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = _returned(out)
    env, *rest = summary["steps"]
    assert env["status"] == "ok" and env["results"][0]["round_trip_max_diff"] == 0
    assert summary["device"].startswith("CPU") and summary["versions"]["torch"]
    assert all(s["status"] == "skipped" and s["notes"] for s in rest)
    assert summary["state"] == "done"


def test_a_wrong_environment_stops_with_one_line(tmp_path):
    proc, out = _run(tmp_path, tmp_path / "no-model")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'no-model'}: no tiny model")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"].startswith("stopped") and len(summary["steps"]) == 1


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path, tiny_llama_dir):
    """Every step through its GPU code path on CPU; each reports its figures in the summary."""
    proc, out = _run(tmp_path, tiny_llama_dir, "--deadline", "800")
    summary = _returned(out)
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {**dict.fromkeys(STEPS, "ok"), "train_step_compiled": "skipped"}, (status, proc.stdout[-3000:])
    results = {s["step"]: s["results"] for s in summary["steps"]}
    ratios = [r for r in results["train_step_7b"] if "ratio" in r]
    assert {r["ratio"] for r in ratios} == {"triton/bitsandbytes", "blocks/bitsandbytes", "fast/bitsandbytes"}
    assert all(r["losses"].startswith("equal") for r in ratios)
    plan = results["plan_7b"][-1]
    assert (plan["batch"], plan["seq"]) == (4, 64) and plan["plan/measured"] > 0  # the recipe's micro batch, max_length
    assert {r["format"] for r in results["export_7b"]} == {"gptq", "awq"}
    assert [r.get("distributed") for r in results["distributed"]] == ["ddp"]  # FSDP on CPU: refused, as expected
    modes = {r["mode"]: r for r in results["train_e2e"]}
    assert all(modes[m]["rc"] == 0 for m in ("bitsandbytes", "triton", "blocks", "fast", "offload_packed"))
    assert [r["rc"] for r in results["generate_eval"]] == [0, 0]
