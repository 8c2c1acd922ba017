"""``qtune generate`` is greedy and deterministic; ``qtune chat`` streams replies read from stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from qtune.cli import main
from qtune.eval.generate import encode_prompt

ROOT = Path(__file__).resolve().parents[2]


def _greedy_by_hand(model, ids: list[int], n: int, eos: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax())
        out.append(nxt)
        if nxt == eos:
            break
    return out[len(ids) :]


def test_generate_json_is_greedy_and_deterministic(tiny_checkpoint, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    argv = ["generate", str(tiny_checkpoint), "--prompt", "Name a fruit.", "--max-new-tokens", "8", "--json", "--device", "cpu"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["text"] == second["text"] and first["greedy"] is True

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    ids = encode_prompt(tok, [{"role": "user", "content": "Name a fruit."}])
    new = _greedy_by_hand(model, ids, 8, tok.eos_token_id)
    assert first["new_tokens"] == len(new) and first["prompt_tokens"] == len(ids)
    assert first["text"] == tok.decode(new, skip_special_tokens=True)


def test_chat_reads_stdin_until_exit_and_streams(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.eval.generate import generate

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "qtune.cli", "chat", str(tiny_checkpoint), "--max-new-tokens", "5", "--device", "cpu"],
        input="Hello there\n\nWhat next?\n/exit\nnever read\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Expected: two turns (the blank line is skipped, nothing after /exit is read), the second
    # with the first exchange in its history, each reply followed by a newline.
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    messages = [{"role": "user", "content": "Hello there"}]
    first = generate(model, tok, encode_prompt(tok, messages), max_new_tokens=5).text
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "What next?"}]
    second = generate(model, tok, encode_prompt(tok, messages), max_new_tokens=5).text
    assert proc.stdout == f"{first}\n{second}\n"


def test_packaged_smollm2_answers_greedily(capfd):
    """capfd: stdout, descriptor 1 included, is the JSON object alone (tests/test_json_stdout.py)."""
    assert (
        main(
            [
                "generate",
                "smollm2-135m-instruct",
                "--prompt",
                "What is the capital of France?",
                "--max-new-tokens",
                "8",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = json.loads(capfd.readouterr().out)
    assert out["text"].startswith("The capital of France is Paris"), out["text"]


def test_generate_stops_on_every_stop_id_of_the_generation_config(tiny_checkpoint):
    """qtune's ``generate`` (generate, chat) stops on a stop id of the generation config that is not the tokenizer's
    EOS; ``min_new_tokens`` (report's speed runs) suppresses it too. The model is made to put that id first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.eval.generate import generate, stop_ids_of

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()
    eot = tok.convert_tokens_to_ids("<|im_start|>")  # a token other than the EOS (<|im_end|>)
    model.lm_head.register_forward_hook(lambda m, args, out: out.index_fill(-1, torch.tensor([eot]), 100.0))
    prompt = tok("Hello there")["input_ids"]
    model.generation_config.eos_token_id = tok.eos_token_id
    assert generate(model, tok, prompt, max_new_tokens=6).new_tokens == 6  # not a stop id: runs on
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    assert stop_ids_of(model, tok) == [tok.eos_token_id, eot]
    assert generate(model, tok, prompt, max_new_tokens=6).new_tokens == 1
    assert generate(model, tok, prompt, max_new_tokens=6, min_new_tokens=6).new_tokens == 6
