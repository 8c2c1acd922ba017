"""Every model family of the registry end to end, on a tiny random model built from its config.

Per family: ``qtune train`` (2 steps, NF4 base, CPU) with the default template — the family's own,
whose turns end with its end-of-turn token — then ``export_run`` merges and writes GPTQ, AWQ and
GGUF Q8_0 (through llama.cpp's converter); each export is read back and its logits are compared
with the merged checkpoint's on the same tokens, and the GGUF is run in llama.cpp when
llama-cpp-python is installed. Each export's stop ids are read back from its files, and greedy
generation stops at the end-of-turn token (see :func:`eot_after`). The GPTQ/AWQ consumers (transformers + gptqmodel) live in another
environment (tests/export/test_consumers.py).
"""

from __future__ import annotations

import pytest
import torch

from qtune.errors import QtuneError
from qtune.registry.families import FAMILIES, family, family_of_dir

from tests.conftest import MAX_NEW, N_BEFORE_EOT, TINY_FAMILIES, generate_new, llama_cpp_new, tiny_family_dir, write_recipe

# Bounds on (max, mean) |Δlogit| against the merged float16 checkpoint, on 24 random tokens; logits
# have mean magnitude ~0.13 in every family (the table printed with -s). Measured maxima over the 7
# families: GPTQ 4-bit g32 0.28 / 0.048 (Gemma 2), AWQ 0.22 / 0.038, GGUF Q8_0 read back by qtune
# 0.022 / 0.0033, llama.cpp on that file 0.026 / 0.0039 (it rounds activations to 8 bits in its dot
# products). A lost Gemma norm offset, an un-permuted q/k or an AWQ scale folded into the wrong op
# gives mean errors of the logits' own size. The tiny Gemma 3's two layers are both sliding-window,
# as the first two of a real Gemma 3: llama.cpp assumes Gemma 3's 5:1 sliding:global pattern (the
# converter writes none), so a model with another pattern differs there (measured 0.19 / 0.016 with
# layer 1 global).
BOUNDS = {"gptq": (0.5, 0.08), "awq": (0.5, 0.08), "gguf": (0.04, 6e-3), "llama.cpp": (0.05, 8e-3)}


def test_every_registered_family_has_a_tiny_model():
    assert set(TINY_FAMILIES) == set(FAMILIES)


def test_unknown_family_is_refused_naming_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt_bigcode"}')
    with pytest.raises(QtuneError) as e:
        family_of_dir(tmp_path)
    msg = str(e.value)
    assert "'gpt_bigcode'" in msg and all(name in msg for name in FAMILIES) and "\n" not in msg


def test_validate_refuses_an_unsupported_local_model_from_config_json_alone(tmp_path):
    from qtune.errors import RecipeError
    from qtune.recipe import load_recipe

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "falcon"}')  # no weights: validate must not need them
    path = write_recipe(tmp_path / "recipe.yaml", model={"path": str(model)})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert any("'falcon'" in line and "qwen2" in line for line in e.value.lines), e.value.lines


def test_export_refuses_a_format_the_family_lacks_before_merging(tmp_path, monkeypatch):
    from dataclasses import replace

    from qtune.export.pipeline import export_run
    from qtune.registry import families
    from qtune.recipe.schema import ExportSection

    base = tiny_family_dir("llama", tmp_path / "base")
    path = write_recipe(tmp_path / "recipe.yaml", model={"path": str(base)})
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)  # an empty adapter: merging would fail, the check comes first
    (run / "recipe.yaml").write_text(path.read_text())
    monkeypatch.setitem(families.FAMILIES, "llama", replace(family("llama"), formats=frozenset({"merged", "gptq"})))
    with pytest.raises(QtuneError, match="gguf export is not supported for Llama"):
        export_run(run, ExportSection(formats=["gptq", "gguf"]))


def test_export_refuses_a_tokenizer_the_gguf_converter_does_not_know_before_merging(tmp_path, smollm2_dir):
    """A Qwen2 model with SmolLM2's tokenizer: llama.cpp's converter does not recognise its BPE
    pre-tokenizer for that architecture; a vocabulary-only conversion says so before any merging."""
    import json
    import shutil

    from qtune.export.pipeline import export_run
    from qtune.recipe.schema import ExportSection

    base = tiny_family_dir("qwen2", tmp_path / "base")
    for f in base.glob("tokenizer*"):
        f.unlink()
    for f in smollm2_dir.glob("tokenizer*"):
        shutil.copy(f, base / f.name)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "vocab_size": 49152}))  # the tokenizer's size
    path = write_recipe(tmp_path / "recipe.yaml", model={"path": str(base)})
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)  # an empty adapter: merging would fail, the check comes first
    (run / "recipe.yaml").write_text(path.read_text())
    with pytest.raises(QtuneError, match="converter could not write.*pre-tokenizer was not recognized"):
        export_run(run, ExportSection(formats=["gguf"]))


def _gap(theirs: torch.Tensor, ours: torch.Tensor) -> tuple[float, float]:
    d = (theirs.float() - ours.float()).abs()
    return d.max().item(), d.mean().item()


@pytest.mark.slow  # 15-45 s per family on a loaded 2-core machine, ~3 min for all seven
@pytest.mark.parametrize("model_type", list(TINY_FAMILIES))
def test_family_trains_merges_and_exports(model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    from qtune.export.checkpoint import load_dequantized
    from qtune.export.gguf_export import load_gguf_dequantized
    from qtune.export.pipeline import export_run
    from qtune.recipe import load_recipe
    from qtune.recipe.schema import ExportSection
    from qtune.train.run import train

    base = tiny_family_dir(model_type, tmp_path / "base")
    recipe = load_recipe(write_recipe(
        tmp_path / "recipe.yaml", model={"path": str(base)}, quant={"method": "nf4", "compute_dtype": "float32"},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0}, train={"max_steps": 2, "lr": 1e-2},
        data={"max_examples": 16, "max_eval_examples": 8}))
    summary = train(recipe)
    assert summary["steps"] == 2 and summary["eval_loss_after"] < summary["eval_loss_before"] + 1e-3
    fam = family(model_type)
    assert summary["data"]["template"] == fam.chat_template and summary["data"]["turn_ends_with_stop"]

    settings = ExportSection(formats=["merged", "gptq", "awq", "gguf"], group_size=32, gguf_types=["Q8_0"],
                             calibration={"samples": 8, "seq_len": 32})
    done = export_run(recipe.train.output_dir, settings)
    merged = AutoModelForCausalLM.from_pretrained(done["merged"], dtype=torch.float32).eval()
    before = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    changed = max((a - b).abs().max().item() for a, b in zip(merged.parameters(), before.parameters()))
    assert changed > 1e-3, "the trained adapter did not change the merged weights"

    ids = torch.randint(0, merged.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    gguf_file = done["gguf"] / "run-Q8_0.gguf"
    with torch.no_grad():
        ref = merged(input_ids=ids).logits[0]
        gaps = {
            "gptq": _gap(load_dequantized(done["gptq"])(input_ids=ids).logits[0], ref),
            "awq": _gap(load_dequantized(done["awq"])(input_ids=ids).logits[0], ref),
            "gguf": _gap(load_gguf_dequantized(gguf_file, done["merged"])(input_ids=ids).logits[0], ref),
        }
    try:
        import llama_cpp
        import numpy as np
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        llm = llama_cpp.Llama(model_path=str(gguf_file), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        llm.eval(ids[0].tolist())
        gaps["llama.cpp"] = _gap(torch.from_numpy(np.array(llm.scores[: ids.shape[1]], dtype=np.float32)), ref)
    stops_stop_there(model_type, done, merged, llama_cpp)
    row = " | ".join(f"{k} {mx:.2e}/{mn:.2e}" for k, (mx, mn) in gaps.items())
    print(f"\n{model_type}: logit scale {ref.abs().mean():.3f} | {row}")
    for kind, (mx, mn) in gaps.items():
        bound_max, bound_mean = BOUNDS[kind]
        assert mx < bound_max and mn < bound_mean, f"{model_type} {kind}: max {mx:.3e} mean {mn:.3e} (logit scale {ref.abs().mean():.3f})"


def stops_stop_there(model_type: str, done: dict, merged, llama_cpp) -> None:
    """Each export names the family's end-of-turn token among its stop ids, and greedy generation from the
    merged model, the GPTQ export (qtune's dequantized view in transformers, with the export's generation
    config) and the GGUF in llama.cpp ends with it after N_BEFORE_EOT tokens."""
    import gguf
    from transformers import AutoTokenizer, GenerationConfig

    from qtune.models.generation_config import gguf_stops, read_stop_ids
    from qtune.export.checkpoint import load_dequantized

    tok = AutoTokenizer.from_pretrained(done["merged"])
    eot = tok.convert_tokens_to_ids(family(model_type).end_of_turn)
    for fmt in ("merged", "gptq", "awq"):
        assert eot in read_stop_ids(done[fmt]), (fmt, read_stop_ids(done[fmt]))
    meta = gguf_stops(gguf.GGUFReader(str(done["gguf"] / "run-Q8_0.gguf")))
    assert meta["eos"] == tok.eos_token_id and eot in meta.values(), meta
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    new = {"merged": generate_new(merged, prompt, eot),
           "gptq": generate_new(load_dequantized(done["gptq"]), prompt, eot, GenerationConfig.from_pretrained(done["gptq"]))}
    if llama_cpp is not None:  # llama.cpp ends on an end-of-generation token without returning it
        before, finish, is_eog = llama_cpp_new(llama_cpp, done["gguf"] / "run-Q8_0.gguf", prompt, eot)
        assert finish == "stop" and is_eog and len(before) <= N_BEFORE_EOT, (model_type, finish, is_eog, before)
    for who, tokens in new.items():  # two training steps can already teach it to end a turn early (Gemma 2 after 2 tokens)
        assert tokens[-1] == eot and eot not in tokens[:-1] and len(tokens) <= N_BEFORE_EOT + 1, \
            f"{model_type} {who}: {tok.convert_ids_to_tokens(tokens)}"
    print(f"\n{model_type}: stops {read_stop_ids(done['merged'])}, GGUF {meta}, new tokens "
          + ", ".join(f"{who} {tok.convert_ids_to_tokens(t)}" for who, t in new.items()))
    # the control: a stop set without the end-of-turn token runs on to max_new_tokens
    if eot != tok.eos_token_id:
        assert len(generate_new(merged, prompt, eot, GenerationConfig(eos_token_id=tok.eos_token_id))) == MAX_NEW
