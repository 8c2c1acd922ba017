"""Shared fixtures: the packaged SmolLM2 checkpoint and tiny models of every family built from a config.

The tiny Llama of ``tiny_llama_dir`` reuses SmolLM2's tokenizer (and chat template) so data code runs
unchanged. The tiny models of every family (``tiny_family_dir``) get a 512-piece SentencePiece
``tokenizer.model`` trained here on the demo data: what llama.cpp's Gemma 2 and Phi-3 conversions
require, with the family's chat tokens as special pieces (so it trains with its own template), and a vocabulary 100x
smaller than SmolLM2's, which took the Llama end-to-end test from
100 s to 20 s (the BPE conversion path is tested on SmolLM2's tokenizer in tests/export/). Weights are random, seeded, and saved as a
local checkpoint directory.
"""

from __future__ import annotations

import os

# Triton's CPU interpreter, unless TRITON_INTERPRET=0 is set (scripts/gpu_all.py does, on a CUDA
# machine). It must be set before qtune.kernels.dequant defines its kernels: here, ahead of every test.
os.environ.setdefault("TRITON_INTERPRET", "1")

import json
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "data" / "chatterbot"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from qtune.models.packaged import materialize

    return materialize("smollm2-135m-instruct")


def tiny_llama(vocab_size: int = 49152, seed: int = 0):
    """A fresh random 2-layer, 64-wide llama (float32, eval mode), seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(out, safe_serialization=True)
    for f in smollm2_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


TINY_RUN_ROWS = [
    [{"role": "user", "content": "What is a list?"}, {"role": "assistant", "content": "An ordered, mutable sequence."}],
    [{"role": "user", "content": "What is a tuple?"}, {"role": "assistant", "content": "An ordered, immutable sequence."}],
    [{"role": "user", "content": "What is a dict?"}, {"role": "assistant", "content": "A mapping from keys to values."}],
    [{"role": "user", "content": "What is a set?"}, {"role": "assistant", "content": "An unordered collection of unique items."}],
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_llama_dir) -> Path:
    """A 2-layer, 64-wide llama (random weights, float32) saved with SmolLM2's tokenizer."""
    return tiny_llama_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_checkpoint) -> Path:
    """A finished run on the tiny checkpoint: recipe.yaml (quant none) and a LoRA adapter with B != 0."""
    import torch
    from peft import get_peft_model

    from qtune.models.load import lora_config
    from qtune.recipe import dump_recipe
    from qtune.recipe.schema import Recipe
    from qtune.rundir import write_text

    run = tmp_path_factory.mktemp("tiny-run")
    data = run / "eval.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in TINY_RUN_ROWS))
    recipe = Recipe.model_validate({
        "model": {"path": str(tiny_checkpoint)},
        "quant": {"method": "none"},
        "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": [str(data)], "eval": str(data), "format": "chat", "max_length": 64},
        "train": {"output_dir": str(run), "device": "cpu"},
    })
    write_text(run / "recipe.yaml", dump_recipe(recipe))
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    model = get_peft_model(base, lora_config(recipe.lora))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # B != 0, so the adapter really changes the output
    model.save_pretrained(run / "adapter", safe_serialization=True)
    return run


# Per family: transformers' config class and the settings beyond the common tiny ones (2 layers,
# hidden 64, MLP 128, 4 heads of 16, 2 KV heads; embeddings tied as the family registry says).
TINY_FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32,
                                "hidden_activation": "gelu_pytorch_tanh"}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32,
                                         "layer_types": ["sliding_attention", "sliding_attention"]}),
    "phi3": ("Phi3Config", {}),
}


def family_tokens(model_type: str) -> tuple[tuple[str, ...], str]:
    """The special tokens a chat model of the family has (its template's markers and end of turn), and its EOS:
    ``</s>``, except the ChatML families, whose instruct models end text with ``<|im_end|>`` (Qwen2.5-Instruct)."""
    from qtune.registry.families import family
    from qtune.registry.templates import TEMPLATE_TOKENS

    fam = family(model_type)
    chatml = ("<|im_start|>", "<|im_end|>") if fam.chat_template == "chatml" else ()
    tokens = dict.fromkeys((*TEMPLATE_TOKENS[fam.chat_template], *chatml, fam.end_of_turn))
    tokens.pop("</s>", None)
    return tuple(tokens), "<|im_end|>" if chatml else "</s>"


def tiny_spm_tokenizer(out: Path, tokenizer_class: str, specials: tuple[str, ...] = (), eos: str = "</s>"):
    """A 512-piece SentencePiece BPE trained on the demo data, saved in ``out`` as ``tokenizer.model``; ``specials``
    are pieces of it (ids 4, 5, ...) that the tokenizer config marks special, as a chat model's turn markers are."""
    import json as _json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    texts = [m["content"] for line in (DEMO_DATA / "train.jsonl").read_text().splitlines()
             for m in _json.loads(line)["messages"]]
    out.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(out / "tokenizer"), vocab_size=512, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2,
        user_defined_symbols=list(specials))
    (out / "tokenizer.vocab").unlink()
    added = {str(4 + i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                          "single_word": False} for i, t in enumerate(specials)}
    (out / "tokenizer_config.json").write_text(_json.dumps({
        "tokenizer_class": tokenizer_class, "bos_token": "<s>", "eos_token": eos, "unk_token": "<unk>",
        "pad_token": "<pad>", "added_tokens_decoder": added}))
    return AutoTokenizer.from_pretrained(out)


def tiny_family_dir(model_type: str, out: Path, seed: int = 0) -> Path:
    """A checkpoint folder of a random 2-layer ``model_type`` model with its tokenizer.

    Norm weights are randomised too (their init is constant), so a lost norm offset or a scale folded
    into the wrong norm shows in the logits; q and k are scaled up 8x so attention is far from uniform
    (at the init scale a q/k row order lost in GGUF moved the logits by 3e-4 of their size, now by
    as much as they are).
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from qtune.registry.families import family

    config_class, extra = TINY_FAMILIES[model_type]
    specials, eos = family_tokens(model_type)
    tok = tiny_spm_tokenizer(out, "GemmaTokenizer" if model_type.startswith("gemma") else "LlamaTokenizer", specials, eos)
    config = getattr(transformers, config_class)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=family(model_type).tied_embeddings, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)
            elif name.endswith("qkv_proj.weight"):  # Phi-3: the q and k rows
                p[: p.shape[0] - config.num_key_value_heads * p.shape[0] // (
                    config.num_attention_heads + 2 * config.num_key_value_heads)].mul_(8)
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_recipe(path: Path, **sections) -> Path:
    """A recipe YAML from section dicts; data defaults to a slice of the bundled demo data."""
    recipe = {
        "data": {
            "train": [str(DEMO_DATA / "train.jsonl")], "eval": str(DEMO_DATA / "eval.jsonl"),
            "format": "chat", "max_length": 64, "max_examples": 32, "max_eval_examples": 16,
        },
        "train": {"max_steps": 2, "micro_batch_size": 4, "logging_steps": 1, "device": "cpu",
                  "gradient_checkpointing": False, "output_dir": str(path.parent / "run")},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(recipe))
    return path


# Stopping at the end of a turn (tests/models/test_families.py, tests/export/test_consumers.py)
N_BEFORE_EOT, MAX_NEW = 3, 24


def eot_after(eot: int, start: int):
    """A logits processor that adds +100 to ``eot``'s score once the sequence holds ``start`` tokens (prompt and
    N_BEFORE_EOT new ones), so greedy decoding emits N_BEFORE_EOT tokens of the model's own and then the
    end-of-turn token. A tiny random model never emits it by itself; what is tested is the consumer: it stops
    there only when its stop set, read from the export's files, holds the token (without it, decoding runs
    on to ``max_new_tokens``)."""

    def bias(length: int, scores):  # scores (B, V) or (V,): of the next token after `length` tokens
        if length >= start:
            scores[..., eot] += 100.0
        return scores

    return bias


def generate_new(model, prompt: list[int], eot: int, gen_config=None) -> list[int]:
    """transformers' greedy ``generate`` on ``model`` with its (or ``gen_config``'s) stop ids, EOT forced after N_BEFORE_EOT."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    bias = eot_after(eot, len(prompt) + N_BEFORE_EOT)

    class Bias(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return bias(input_ids.shape[1], scores)

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             generation_config=gen_config, do_sample=False, max_new_tokens=MAX_NEW,
                             logits_processor=LogitsProcessorList([Bias()]))
    return out[0, len(prompt):].tolist()


def llama_cpp_new(llama_cpp, path, prompt: list[int], eot: int) -> tuple[list[int], str, bool]:
    """llama.cpp's greedy completion of ``prompt`` with the EOT forced after N_BEFORE_EOT tokens: the tokens it
    returned (an end-of-generation token ends the completion and is not returned), its finish reason ("stop" at
    an end-of-generation token, "length" at MAX_NEW) and whether its vocabulary, read from the GGUF, counts
    ``eot`` as end of generation."""
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, n_threads=1)
    bias = eot_after(eot, len(prompt) + N_BEFORE_EOT)
    seen = []

    def processor(ids, scores):
        seen[:] = list(ids[len(prompt):])
        return bias(len(ids), np.array(scores))

    out = llm.create_completion(prompt, max_tokens=MAX_NEW, temperature=0.0,
                                logits_processor=llama_cpp.LogitsProcessorList([processor]))
    return seen, out["choices"][0]["finish_reason"], bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, eot))
