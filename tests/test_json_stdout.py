"""``--json``: stdout is one JSON object, for every command that has the flag and every kind of model.

The per-command tests run the CLI in this process with pytest's ``capfd``, which captures descriptor 1 and
``sys.stdout`` both, so anything a library writes to stdout during the command would land in front of the
object and ``json.loads`` would fail. The GPTQ and AWQ cases need gptqmodel (the consumers' venv) and are in
tests/export/test_consumers.py. The last test is the one a library's real output takes: a fresh process,
whose model load writes to descriptor 1 from Python, from C and from child processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtune.cli import build_parser, main
from tests.conftest import tiny_family_dir, write_recipe

ROOT = Path(__file__).resolve().parents[1]
EVAL = ["--max-tokens", "48", "--window", "32", "--device", "cpu", "--json"]
GENERATE = ["--prompt", "Name a fruit.", "--raw", "--max-new-tokens", "2", "--device", "cpu", "--json"]
JSON_COMMANDS = {"eval", "generate", "plan"}  # each has its tests below


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """MODEL of each kind: a tiny llama checkpoint (512-piece tokenizer: a GGUF of it loads in seconds, one with
    SmolLM2's 49k vocabulary took 30), a finished run on it (LoRA B != 0), its merged and GGUF F16 exports,
    and the packaged model."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune import rundir
    from qtune.export.pipeline import export_run
    from qtune.models.load import lora_config
    from qtune.recipe import dump_recipe, load_recipe
    from qtune.recipe.schema import ExportSection

    root = tmp_path_factory.mktemp("json")
    checkpoint = tiny_family_dir("llama", root / "checkpoint")
    run = root / "run"
    recipe = load_recipe(write_recipe(root / "recipe.yaml", model={"path": str(checkpoint)},
                                      quant={"method": "none"}, train={"output_dir": str(run), "device": "cpu"}))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32), lora_config(recipe.lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    run.mkdir()
    rundir.write_text(run / rundir.RECIPE, dump_recipe(recipe))
    model.save_pretrained(run / rundir.ADAPTER)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(run / rundir.ADAPTER)
    done = export_run(run, ExportSection(formats=["merged", "gguf"], gguf_types=["F16"], fidelity=False), out_root=root / "exports")
    return {"checkpoint": str(checkpoint), "run": str(run), "merged": str(done["merged"]), "gguf": str(done["gguf"]),
            "packaged": "smollm2-135m-instruct"}


def _stdout_object(capfd, argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capfd.readouterr().out
    try:
        return json.loads(out)
    except json.JSONDecodeError as e:
        raise AssertionError(f"qtune {' '.join(argv)}: stdout is not one JSON object ({e}):\n{out[:2000]}") from None


@pytest.mark.parametrize("kind", ["checkpoint", "run", "merged", "gguf", "packaged"])
def test_eval_json_is_the_only_stdout(kind, models, capfd):
    model = models[kind]
    out = _stdout_object(capfd, ["eval", model, *EVAL])
    assert out["model"] == model and out["perplexity"]["scored_tokens"] > 0


@pytest.mark.parametrize("kind", ["checkpoint", "run", "merged", "gguf"])  # packaged: tests/eval/test_generate.py
def test_generate_json_is_the_only_stdout(kind, models, capfd):
    model = models[kind]
    out = _stdout_object(capfd, ["generate", model, *GENERATE])
    assert out["model"] == model and 0 < out["new_tokens"] <= 2


@pytest.mark.parametrize("kind", ["checkpoint", "packaged"])
def test_plan_json_is_the_only_stdout(kind, models, tmp_path, capfd):
    recipe = write_recipe(tmp_path / "r.yaml", model={"path": models[kind]})
    out = _stdout_object(capfd, ["plan", str(recipe), "--memory", "8GiB", "--no-time", "--json"])
    assert out["fits"] is True


def test_every_json_command_is_tested_here():
    """A command that gains ``--json`` gets tests above (and goes through :func:`qtune.json_stdout.run_json`)."""
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {name for name, p in commands.items() if "--json" in p._option_string_actions} == JSON_COMMANDS


# What libraries do, done from inside transformers' model loading in a fresh process: a logging handler and a
# tqdm bar that bound sys.stdout at import (as gptqmodel's logger does), print(), a write to descriptor 1,
# C's printf (buffered in libc, flushed at exit), a subprocess and a spawned process (what `run_isolated` starts).
NOISY_LOAD = """
import ctypes, logging, os, subprocess, sys
import transformers
from tqdm import tqdm
from qtune.cli import main

handler = logging.StreamHandler(sys.stdout)
logger = logging.getLogger("noisy-library")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
bar_stream = sys.stdout
load = transformers.AutoModelForCausalLM.from_pretrained.__func__

def noisy_load(cls, *args, **kwargs):
    from qtune.report.build import run_isolated

    print("NOISE python print")
    logger.info("NOISE logging handler bound at import")
    for _ in tqdm(range(1), file=bar_stream, disable=False, desc="NOISE tqdm"):
        pass
    os.write(1, b"NOISE os.write to fd 1\\n")
    ctypes.CDLL(None).printf(b"NOISE printf from C\\n")
    subprocess.run(["echo", "NOISE child process"], check=True)
    run_isolated(print, "NOISE spawned process")
    return load(cls, *args, **kwargs)

transformers.AutoModelForCausalLM.from_pretrained = classmethod(noisy_load)
sys.exit(main(sys.argv[1:]))
"""
NOISES = ("python print", "logging handler bound at import", "tqdm", "os.write to fd 1", "printf from C",
          "child process", "spawned process")


def test_library_output_during_load_goes_to_stderr_not_stdout(models):
    # PYTHONUNBUFFERED would make C's stdout unbuffered too, hiding a printf left in libc's buffer until exit
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", NOISY_LOAD, "eval", models["checkpoint"], *EVAL], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NOISE" not in proc.stdout, proc.stdout[:2000]
    assert json.loads(proc.stdout)["model"] == models["checkpoint"]
    missing = [n for n in NOISES if f"NOISE {n}" not in proc.stderr]
    assert not missing, f"library output lost instead of sent to stderr: {missing}\n{proc.stderr[-2000:]}"
