"""Real consumers load the exports and compute what qtune's dequantized view computes.

GPTQ and AWQ through transformers + optimum + gptqmodel (torch kernels, CPU), GGUF through
llama-cpp-python. These need the optional extra ``qtune[verify]`` (and ``qtune[gguf]`` for
llama-cpp-python) and skip without it; ``scripts/setup_consumers.sh`` makes that environment and runs them.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from qtune.export.checkpoint import load_dequantized, quantization_config, write_checkpoint
from qtune.export.sequential import sweep

from tests.conftest import N_BEFORE_EOT, TINY_FAMILIES, generate_new, llama_cpp_new
from tests.export.conftest import REPO, make_family_run

pytestmark = pytest.mark.consumer


class NoTokenizer:
    def save_pretrained(self, path):
        (path / "tokenizer_config.json").write_text("{}")


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_transformers_gptqmodel_loads_export(fmt, make_tiny, calib, tmp_path, monkeypatch):
    pytest.importorskip("optimum")
    pytest.importorskip("gptqmodel")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "2")
    from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig

    from qtune.export.awq import awq_layer_quantizer
    from qtune.export.gptq import gptq_layer_quantizer

    model = make_tiny(kv_heads=2)
    act_order = fmt == "gptq"  # act-order on: the consumer must follow g_idx
    quantizer = gptq_layer_quantizer(4, 32, False, act_order, 0.01) if fmt == "gptq" else awq_layer_quantizer(4, 32)
    quantized = sweep(model, calib, 4, quantizer)
    write_checkpoint(model, NoTokenizer(), quantized, quantization_config(fmt, 4, 32, False, act_order, 0.01), tmp_path)

    # torch kernels: the default AWQ CPU kernel (ATen int4pack) rounds scales to bfloat16 (~1e-2 off)
    qcfg = GPTQConfig(bits=4, backend="torch") if fmt == "gptq" else AwqConfig(bits=4, group_size=32, backend="torch_awq")
    consumer = AutoModelForCausalLM.from_pretrained(str(tmp_path), device_map="cpu", dtype=torch.float32, quantization_config=qcfg)
    assert "qweight" in dict(consumer.named_buffers()) or any(n.endswith("qweight") for n, _ in consumer.named_buffers())
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = load_dequantized(tmp_path)(input_ids=ids).logits
        theirs = consumer(input_ids=ids).logits.float()
    d = (theirs - ours).abs()
    # measured: max 3e-3 (GPTQ) / 5e-3 (AWQ), mean ~5e-4, on logits of mean magnitude ~0.7;
    # a wrong bit order or g_idx gives errors of the logits' own size
    assert d.max() < 3e-2 and d.mean() < 3e-3, f"max {d.max():.3e} mean {d.mean():.3e}"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M"])
def test_llama_cpp_loads_gguf(qtype, tiny_run, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    from qtune.export.gguf_export import load_gguf_dequantized
    from qtune.export.pipeline import export_run
    from qtune.recipe.schema import ExportSection

    done = export_run(tiny_run, ExportSection(formats=["gguf"], gguf_types=[qtype]), out_root=tmp_path)
    path = done["gguf"] / f"run-{qtype}.gguf"
    ids = torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    with torch.no_grad():
        ours = load_gguf_dequantized(path, done["merged"])(input_ids=torch.tensor([ids])).logits[0]
    d = (theirs - ours).abs()
    # llama.cpp quantizes activations to 8 bits inside its quantized dot products: measured max 1.2e-2 / mean
    # 1.7e-3 (Q8_0) and 1.4e-2 / 1.9e-3 (Q4_K_M) on logits of mean magnitude 0.18; a layout bug is of that size
    assert d.max() < 5e-2 and d.mean() < 5e-3, f"max {d.max():.3e} mean {d.mean():.3e} (logit scale {ours.abs().mean():.3f})"


def _next_token_logprobs_llama_cpp(llama_cpp, path, ids):
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    scores = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    return torch.log_softmax(scores, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def _next_token_logprobs(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_llama_cpp_scores_smollm2_gguf_like_qtune(qtype, smollm2_dir, tmp_path):
    """The real model: llama.cpp's next-token log-probabilities on prose agree with qtune's dequantized view
    of the same GGUF (the view every fidelity number is measured on) as closely as they agree for the
    GGUF the packaged model ships as (a Q4_1 file llama.cpp's converter wrote); chat markers are
    control tokens (qtune's former hand-written writer typed them as plain text)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.eval.text import read_text_sources
    from qtune.export.gguf_export import load_gguf_dequantized, write_gguf
    from qtune.models.packaged import gguf_path

    text = read_text_sources(None).documents[0][:2000]
    ids = AutoTokenizer.from_pretrained(smollm2_dir)(text)["input_ids"][:96]
    # control: the shipped GGUF in llama.cpp vs the same weights in transformers
    shipped = gguf_path("smollm2-135m-instruct")
    control = _next_token_logprobs_llama_cpp(llama_cpp, shipped, ids) - _next_token_logprobs(
        AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32), ids)

    path = tmp_path / f"smollm2-{qtype}.gguf"
    write_gguf(smollm2_dir, path, qtype)
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert vocab.tokenize(text.encode(), add_bos=False, special=False)[:64] == ids[:64], "llama.cpp tokenizes the text differently"
    assert vocab.tokenize(b"<|im_start|>user", add_bos=False, special=True)[0] == 1, "<|im_start|> is not one control token"
    ours = _next_token_logprobs_llama_cpp(llama_cpp, path, ids) - _next_token_logprobs(
        load_gguf_dequantized(path, smollm2_dir), ids)
    # measured: control NLL gap 0.007, mean |Δ| 0.062 (max 0.27); ours Q8_0 0.020 / 0.060 (0.34), Q4_0 0.007 /
    # 0.076 (0.35) — llama.cpp rounds activations to 8 bits inside quantized dot products; a wrong layout,
    # RoPE or norm gives nats, not hundredths
    msg = (f"{qtype}: NLL gap {ours.mean():+.4f} (control {control.mean():+.4f}), mean |Δ| {ours.abs().mean():.3f} "
           f"(control {control.abs().mean():.3f}), max {ours.abs().max():.3f}")
    assert abs(ours.mean()) < 0.05 and ours.abs().mean() < 1.5 * control.abs().mean(), msg


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_eval_and_generate_json_on_export_is_the_only_stdout(fmt, tiny_run, tmp_path):
    """gptqmodel prints a banner and INFO lines to stdout when transformers imports it to load the export: with
    ``--json`` they go to stderr and stdout is the one object (tests/test_json_stdout.py has the other kinds).
    A fresh process each, so the import, and its banner, happens inside the command."""
    pytest.importorskip("optimum")
    pytest.importorskip("gptqmodel")
    from qtune.export.pipeline import export_run
    from qtune.recipe.schema import ExportSection

    done = export_run(tiny_run, ExportSection(formats=[fmt], group_size=64, fidelity=False,
                                              calibration={"samples": 8, "seq_len": 64}), out_root=tmp_path)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(REPO),
           "GPTQMODEL_CPU_WORKERS": "2"}
    for argv in (["eval", str(done[fmt]), "--max-tokens", "48", "--window", "32"],
                 ["generate", str(done[fmt]), "--prompt", "Hi", "--max-new-tokens", "2"]):
        proc = subprocess.run([sys.executable, "-m", "qtune.cli", *argv, "--device", "cpu", "--json"], capture_output=True,
                              text=True, cwd=REPO, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        try:
            out = json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"qtune {argv[0]} on the {fmt} export: stdout is not one JSON object ({e}):\n"
                                 f"{proc.stdout[:2000]}") from None
        assert out["model"] == str(done[fmt])


@pytest.mark.parametrize("model_type", list(TINY_FAMILIES))
def test_consumers_stop_at_the_end_of_turn(model_type, tmp_path, monkeypatch):
    """transformers (through gptqmodel) loads the GPTQ export with its generation_config.json and llama.cpp the
    GGUF: greedy generation, with the end-of-turn token forced after N_BEFORE_EOT tokens, stops there in both."""
    pytest.importorskip("optimum")
    pytest.importorskip("gptqmodel")
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "2")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    from qtune.export.pipeline import export_run
    from qtune.recipe.schema import ExportSection
    from qtune.registry.families import family

    run = make_family_run(model_type, tmp_path)
    done = export_run(
        run,
        ExportSection(
            formats=["gptq", "gguf"], group_size=32, gguf_types=["Q8_0"], fidelity=False, calibration={"samples": 8, "seq_len": 32}
        ),
    )
    tok = AutoTokenizer.from_pretrained(done["gptq"])
    eot = tok.convert_tokens_to_ids(family(model_type).end_of_turn)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    consumer = AutoModelForCausalLM.from_pretrained(
        str(done["gptq"]), device_map="cpu", dtype=torch.float32, quantization_config=GPTQConfig(bits=4, backend="torch")
    )
    new = generate_new(consumer, prompt, eot)  # the generation config transformers read from the export
    assert new[-1] == eot and eot not in new[:-1] and len(new) <= N_BEFORE_EOT + 1, tok.convert_ids_to_tokens(new)
    before, finish, is_eog = llama_cpp_new(llama_cpp, next(done["gguf"].glob("*.gguf")), prompt, eot)
    assert finish == "stop" and is_eog and len(before) <= N_BEFORE_EOT, (finish, is_eog, before)
