"""Never lose a run: exact resume after kill -9, half-written checkpoints, SIGINT/SIGTERM, NaN/inf steps.

Every run here is the real ``qtune train`` (in-process through ``qtune.cli.main`` or as a
subprocess) on a tiny Llama built from config, on CPU, where training is deterministic: the
resumed losses are compared with ``==``, not a tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qtune import rundir
from qtune.cli import main
from qtune.train.resume import complete_checkpoints

from tests.conftest import REPO, write_recipe

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _start(recipe: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qtune.cli", "train", str(recipe), *overrides],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 600) -> None:  # a guard against hangs, not a speed test
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"train exited {proc.returncode} early:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def _train_losses(run: Path) -> dict[int, float]:
    rows = [m for m in rundir.read_metrics(run) if "loss" in m]
    steps = [m["step"] for m in rows]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {m["step"]: m["loss"] for m in rows}


@pytest.fixture
def recipe_20(tmp_path, tiny_llama_dir) -> Path:
    """20 steps, checkpoint every 4, dropout on (so the RNG state matters), an eval (of 4 rows) every 5 steps."""
    return write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, quant={"method": "none"},
                        lora={"rank": 4, "dropout": 0.1}, data={"max_eval_examples": 4},
                        train={"max_steps": 20, "save_steps": 4, "eval_steps": 5, "micro_batch_size": 2, "lr": 1e-3,
                               "output_dir": str(tmp_path / "run")})


def test_kill_9_after_step_12_then_resume_equals_the_uninterrupted_run(tmp_path, recipe_20):
    full = tmp_path / "full"
    assert main(["train", str(recipe_20), f"train.output_dir={full}"]) == 0
    expected = _train_losses(full)
    assert sorted(expected) == list(range(1, 21))
    assert [p.name for p in complete_checkpoints(full)] == ["checkpoint-12", "checkpoint-16", "checkpoint-20"], \
        "train.keep_checkpoints (3) keeps the newest three"

    run = tmp_path / "run"
    proc = _start(recipe_20)
    _wait_for(lambda: (run / rundir.CHECKPOINTS / "checkpoint-12").is_dir(), proc)  # renamed into place = complete
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    assert complete_checkpoints(run)[-1].name == "checkpoint-12"
    # A checkpoint interrupted mid-write, two ways: a folder under the final name without its trainer
    # state, and a full copy left in the staging folder. Neither may be picked.
    ckpts = run / rundir.CHECKPOINTS
    shutil.copytree(ckpts / "checkpoint-12", ckpts / ".staging" / "checkpoint-16")
    state = json.loads((ckpts / "checkpoint-12" / "trainer_state.json").read_text())
    (ckpts / ".staging" / "checkpoint-16" / "trainer_state.json").write_text(json.dumps({**state, "global_step": 16}))
    shutil.copytree(ckpts / "checkpoint-12", ckpts / "checkpoint-16")
    (ckpts / "checkpoint-16" / "trainer_state.json").unlink()

    assert main(["train", str(recipe_20), "--resume"]) == 0
    resumed = _train_losses(run)
    assert sorted(resumed) == list(range(1, 21)), "metrics.jsonl holds each step once"
    for step in range(13, 21):
        assert resumed[step] == expected[step], (step, resumed[step], expected[step])
    summary, full_summary = (json.loads((d / rundir.SUMMARY).read_text()) for d in (run, full))
    assert summary["resumed_from_step"] == 12 and summary["sessions"] == 2
    assert summary["eval_loss_before"] == full_summary["eval_loss_before"], "the stored eval, not redone"
    assert summary["train_tokens"] == full_summary["train_tokens"], "tokens of the whole run"
    assert summary["eval_loss_after"] == full_summary["eval_loss_after"]
    ledger = json.loads((run / rundir.RUN_STATE).read_text())["ledger"]
    first = [e for e in ledger if e["session"] == 1]
    assert len(first) == 1 and first[0]["step"] in (8, 12), ledger  # killed just after checkpoint 12 was renamed in
    assert summary["wall_s"] == pytest.approx(summary["this_session"]["wall_s"] + first[0]["wall_s"]), "wall time of both sessions"
    assert summary["tokens_per_s"] == pytest.approx(summary["train_tokens"] / (summary["this_session"]["train_s"] + first[0]["train_s"])), \
        "whole-run tokens over both sessions' training time"
    assert [m["step"] for m in rundir.read_metrics(run) if "eval_loss" in m] == [0, 5, 10, 15, 20]
    assert not (ckpts / ".staging").exists()


def test_sigint_checkpoints_the_step_and_prints_the_resume_command(tmp_path, recipe_20):
    run = tmp_path / "run"
    proc = _start(recipe_20, "train.max_steps=500", "train.save_steps=null")
    _wait_for(lambda: len(_train_losses(run)) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    step = max(_train_losses(run))
    assert last == (f"interrupted at step {step}; wrote {run / rundir.CHECKPOINTS / f'checkpoint-{step}'}; resume with: "
                    f"qtune train {recipe_20} train.max_steps=500 train.save_steps=null --resume"), last
    assert [p.name for p in complete_checkpoints(run)] == [f"checkpoint-{step}"]
    assert not (run / rundir.SUMMARY).exists()


def _signal_self_after(run: Path, steps: int, *signums: int) -> threading.Thread:
    """From a thread: right after ``run`` logs step ``steps`` (so a step has just begun), send this process
    each signal, each once train's handler has seen the one before (two signals sent at once reach
    Python's handler as one)."""

    def fire():
        while len(_train_losses(run)) < steps:
            time.sleep(0.002)
        for s in signums:
            handler = signal.getsignal(s)
            os.kill(os.getpid(), s)
            stop = getattr(handler, "__self__", None)  # train's SignalStop, whose handler is installed now
            while stop is not None and stop.received is None:
                time.sleep(0.001)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def test_sigterm_stops_the_same_way(tmp_path, recipe_20, capsys):
    run = tmp_path / "run"
    _signal_self_after(run, 2, signal.SIGTERM)
    assert main(["train", str(recipe_20), "train.max_steps=500"]) == 143
    last = capsys.readouterr().err.strip().splitlines()[-1]
    step = max(_train_losses(run))
    assert last.startswith(f"interrupted at step {step}; wrote ") and last.endswith("train.max_steps=500 --resume"), last
    assert complete_checkpoints(run)[-1].name == f"checkpoint-{step}"


def test_a_second_sigint_aborts_at_once(tmp_path, recipe_20, capsys):
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in a background job, else default_int_handler
    _signal_self_after(run, 2, signal.SIGINT, signal.SIGINT)  # the second while the step the first lets finish runs
    assert main(["train", str(recipe_20), "train.max_steps=500", "train.save_steps=null", "train.micro_batch_size=8"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("interrupted: checkpoints already written are kept") and "Traceback" not in err
    assert not complete_checkpoints(run), "an abort writes no checkpoint"
    assert signal.getsignal(signal.SIGINT) is before, "train restores the handler it replaced"


# ----------------------------------------------------------------------------- NaN / inf

POISON = "Zyzzyva"  # a word only some train rows hold; its embedding row is NaN in the model below


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, tiny_llama_dir):
    """A tiny untied Llama whose embedding of one token is NaN, and data where 3 of 24 train rows hold it.

    A batch with that token has a NaN loss and NaN gradients (a real forward/backward, nothing
    mocked); every other batch trains normally.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("poisoned")
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer number {i}."}]
            for i in range(24)]
    for i in (3, 11, 19):
        rows[i][1]["content"] = f"{POISON} {POISON}."
    clean = {t for r in rows for m in r if POISON not in m["content"] for t in tok(m["content"])["input_ids"]}
    bad = sorted(set(tok(f"{POISON} {POISON}.")["input_ids"]) - clean)
    assert bad, "the poison word needs a token no clean row has"
    (out / "train.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    clean = [r for r in rows if POISON not in r[1]["content"]]
    (out / "eval.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in clean))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[bad[0]] = float("nan")
    model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    return out


def _nan_recipe(tmp_path, poisoned, on_nan):
    return write_recipe(
        tmp_path / "r.yaml",
        model={"path": str(poisoned / "model")},
        quant={"method": "none"},
        lora={"rank": 4, "dropout": 0.0},
        data={
            "train": [str(poisoned / "train.jsonl")],
            "eval": str(poisoned / "eval.jsonl"),
            "max_examples": None,
            "max_eval_examples": None,
        },
        train={"max_steps": 12, "save_steps": 1, "keep_checkpoints": 20, "lr": 1e-3, "on_nan": on_nan},
    )


def _adapter_finite(path: Path) -> bool:
    from safetensors.torch import load_file

    return all(t.isfinite().all() for t in load_file(path / "adapter_model.safetensors").values())


def test_nan_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, poisoned, capsys):
    recipe = _nan_recipe(tmp_path, poisoned, "stop")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("error: step ") and "NaN/inf" in line and "Traceback" not in "\n".join(err), line
    bad = int(line.split()[2].rstrip(":"))
    run = tmp_path / "run"
    ckpts = complete_checkpoints(run)
    assert [int(p.name.split("-")[1]) for p in ckpts] == list(range(1, bad)), "every good step, never the bad one"
    assert f"newest good checkpoint: {ckpts[-1]}" in line if ckpts else "none" in line
    assert all(_adapter_finite(p) for p in ckpts)
    assert not (run / rundir.SUMMARY).exists() and not (run / rundir.ADAPTER).exists()


def test_nan_skip_drops_the_bad_steps_and_finishes(tmp_path, poisoned, capsys):
    recipe = _nan_recipe(tmp_path, poisoned, "skip")
    assert main(["train", str(recipe), "train.save_steps=null"]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / rundir.SUMMARY).read_text())
    skipped = summary["nonfinite_steps_skipped"]
    # 24 rows in micro batches of 4: 6 steps an epoch, the 3 poisoned rows land in 1 to 3 of them.
    assert 2 <= len(skipped) <= 6 and summary["steps"] == 12, skipped
    err = capsys.readouterr().err
    for step in skipped:
        assert f"step {step}: loss or gradients are NaN/inf; skipped its update" in err
    assert _adapter_finite(run / rundir.ADAPTER)
    assert summary["eval_loss_after"] == summary["eval_loss_after"] and summary["eval_loss_after"] < summary["eval_loss_before"]


def test_resumed_run_continues_the_same_wandb_run(tmp_path, recipe_20, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: offline
    run = tmp_path / "run"
    _signal_self_after(run, 2, signal.SIGTERM)
    args = ["train", str(recipe_20), "train.max_steps=4", "train.eval_steps=null", "tracking.backend=wandb", "tracking.project=qtune-test"]
    assert main(args) == 143
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err[-2000:]
    run_id = json.loads((run / rundir.RUN_STATE).read_text())["run_id"]
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline
    assert sorted(_train_losses(run)) == list(range(1, 5))


def test_only_fields_that_leave_training_alone_may_change_on_resume():
    from qtune.train.resume import changed_fields

    stored = {
        "train": {"lr": 2e-4, "eval_steps": 5, "save_steps": 4, "keep_checkpoints": 3, "on_nan": "stop"},
        "tracking": {"backend": "none"},
        "data": {"cache": True, "max_length": 64},
        "export": None,
    }
    neutral = {
        "train": {"lr": 2e-4, "eval_steps": 10, "save_steps": 8, "keep_checkpoints": 1, "on_nan": "skip"},
        "tracking": {"backend": "wandb", "project": "p"},
        "data": {"cache": False, "max_length": 64},
        "export": {"formats": ["gguf"]},
    }
    assert changed_fields(stored, neutral) == []
    changed = {**neutral, "train": {**neutral["train"], "lr": 1e-3}, "data": {"cache": True, "max_length": 128}}
    assert changed_fields(stored, changed) == ["data.max_length (64 → 128)", "train.lr (0.0002 → 0.001)"]
