"""What a user sees from a command whose stderr is a log file: qtune's lines, not library noise.

Run through the real CLI in a subprocess (stderr is a pipe, not a terminal), on a 4-bit tiny model so
bitsandbytes is imported and, on a CPU with AVX512-BF16, would print its optional-kernel warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qtune.models.bnb_layout import PATH_CANONICAL, PATH_CPU_BF16, cpu_has_bf16_kernel

ROOT = Path(__file__).resolve().parents[1]


def _qtune(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("DISABLE_PROGRESS_BARS")}
    return subprocess.run([sys.executable, "-m", "qtune.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)


def test_eval_json_names_the_kernel_path_and_logs_no_library_noise(tiny_llama_dir):
    proc = _qtune("eval", str(tiny_llama_dir), "--quant", "nf4", "--max-tokens", "96", "--window", "32", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["kernel"] == {"path": PATH_CANONICAL, "compute_dtype": "float32"}  # eval never takes the bf16 path
    for noise in ("Loading weights", "gemm_4bit_forward", "kernels-community", "Traceback"):
        assert noise not in proc.stderr, f"{noise!r} in stderr:\n{proc.stderr[-2000:]}"


def test_generate_says_once_which_path_runs(tiny_llama_dir, tmp_path):
    """``generate`` on a 4-bit run takes bitsandbytes' bf16 CPU kernel only where the CPU has it, and says so."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = tmp_path / "nf4"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32), device_map={"": "cpu"})
    model.save_pretrained(out)
    for f in tiny_llama_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (out / f.name).write_bytes(f.read_bytes())
    expected = PATH_CPU_BF16 if cpu_has_bf16_kernel() else PATH_CANONICAL
    for flag, path in (("--fast-cpu", expected), ("--no-fast-cpu", PATH_CANONICAL)):
        proc = _qtune("generate", str(out), "--prompt", "Hi", "--max-new-tokens", "3", "--device", "cpu", flag)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines == [f"{out}: {path} in {'bfloat16' if path == PATH_CPU_BF16 else 'float32'}"], proc.stderr[-2000:]


def test_train_logs_no_library_noise(tiny_llama_dir, tmp_path):
    """``train`` into a log: no FutureWarning from peft's probe of transformers, no tqdm redraws, no traceback."""
    from tests.conftest import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)},
                          quant={"method": "nf4", "compute_dtype": "float32"}, train={"max_steps": 1})
    env = {k: v for k, v in os.environ.items() if not k.endswith("DISABLE_PROGRESS_BARS") and k != "TQDM_DISABLE"}
    proc = subprocess.run([sys.executable, "-m", "qtune.cli", "train", str(recipe)], capture_output=True, text=True,
                          cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("FutureWarning", "Warning:", "it/s]", "Loading weights", "gemm_4bit_forward", "Traceback"):
        assert noise not in proc.stderr, f"{noise!r} in stderr:\n{proc.stderr[-3000:]}"
    assert "eval loss after training" in proc.stderr


def _log_bitsandbytes_warnings() -> None:
    import logging

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
                   "Please make sure you already `pip install kernels` and the kernels >= 0.11.1")
    logger.warning("another bitsandbytes warning, which qtune keeps")


def test_a_report_row_measured_in_its_own_process_logs_no_library_noise(capfd):
    """``qtune report`` measures each row in a spawned process, which starts without the CLI's filters: bitsandbytes'
    words, as its CPU backend logs them on an AVX512-BF16 machine, from a child that ``run_isolated`` starts."""
    from qtune.report.build import run_isolated

    run_isolated(_log_bitsandbytes_warnings)
    err = capfd.readouterr().err
    assert "gemm_4bit_forward" not in err, err
    assert "another bitsandbytes warning, which qtune keeps" in err, err
