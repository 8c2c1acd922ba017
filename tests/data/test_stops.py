"""Stop tokens: every family trains its own template through its end-of-turn token; a template that does
not end turns with a stop token is refused with the ones that do; stop ids merge into generation configs."""

from __future__ import annotations

import json

import pytest

from qtune.data.formats import to_example
from qtune.data.masking import IGNORE_INDEX, encode_example, turn_ends_with_stop
from qtune.data.stops import stop_ids, stop_tokens
from qtune.models.generation_config import generation_config, read_stop_ids
from qtune.data.template import resolve_template
from qtune.registry.families import FAMILIES, family

from tests.conftest import family_tokens, tiny_spm_tokenizer

CHAT = [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"}, {"role": "assistant", "content": "Six."}]


@pytest.fixture(scope="module")
def family_tokenizer(tmp_path_factory):
    """``family_tokenizer(model_type)``: the tiny test tokenizer of that family (its chat tokens special), no chat template."""
    made = {}

    def make(model_type: str):
        if model_type not in made:
            specials, eos = family_tokens(model_type)
            cls = "GemmaTokenizer" if model_type.startswith("gemma") else "LlamaTokenizer"
            made[model_type] = tiny_spm_tokenizer(tmp_path_factory.mktemp(model_type), cls, specials, eos)
        return made[model_type]

    return make


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_every_family_trains_its_own_template_through_its_end_of_turn(model_type, family_tokenizer):
    """The issue's case: a model without a template of its own (a Gemma GGUF) gets its family's template, and
    each assistant turn is trained through the family's end-of-turn token (Gemma's <end_of_turn>, not <eos>)."""
    tok, fam = family_tokenizer(model_type), family(model_type)
    chosen = resolve_template(tok, "auto", fam.chat_template)
    stops = stop_tokens(tok, fam.end_of_turn)
    assert chosen.name == fam.chat_template and fam.end_of_turn in stops
    (row,) = encode_example(tok, chosen.source, to_example({"messages": CHAT}, "w", "chat"), 512, stops=stops).rows
    eot = tok.convert_tokens_to_ids(fam.end_of_turn)
    runs, run = [], []
    for t, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            run.append(t)
        elif run:
            runs.append(run)
            run = []
    runs += [run] if run else []
    assert [r[-1] for r in runs] == [eot, eot], tok.convert_ids_to_tokens(row["input_ids"])
    assert [tok.decode(r, skip_special_tokens=True).strip() for r in runs] == ["Four.", "Six."]
    assert turn_ends_with_stop(tok, chosen.source, stops)
    assert not turn_ends_with_stop(tok, chosen.source, (tok.eos_token,)) or fam.end_of_turn == tok.eos_token


def test_a_template_that_does_not_fit_is_refused_with_what_would(family_tokenizer, tmp_path):
    """Llama 3's template on a Gemma vocabulary: the message names what the model stops on and the templates
    that end turns with it, the family's own first — not a template that leads nowhere."""
    from qtune.data.dataset import build_datasets, problems
    from qtune.recipe.schema import DataSection

    tok = family_tokenizer("gemma2")
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": CHAT}) + "\n" for _ in range(4)))
    data = DataSection(train=[str(chat)], format="chat", chat_template="llama3", eval_fraction=0.25, cache=False)
    out = build_datasets(data, tok, seed=0, family_template="gemma", end_of_turn="<end_of_turn>")
    (line,) = problems(out, data, tok)
    assert line == ("data.chat_template: template 'llama3' ends an assistant turn with '<|eot_id|>', which is not a token "
                    "the model stops on (it stops on its EOS '</s>' and its family's end-of-turn token '<end_of_turn>'), "
                    "so it would not learn to stop; set data.chat_template to one that does: gemma, chatml, mistral "
                    "(chatml and mistral spell their turn markers as plain text)")


def test_a_checkpoint_without_its_familys_end_of_turn_stops_on_eos(smol_tokenizer):
    """SmolLM2 is a llama, but has no <|eot_id|>: its EOS <|im_end|> alone ends a turn."""
    tok = smol_tokenizer
    assert stop_tokens(tok, family("llama").end_of_turn) == ("<|im_end|>",)
    assert stop_ids(tok, "<|eot_id|>") == [tok.eos_token_id]


def test_generation_config_puts_the_stop_ids_first_and_keeps_the_bases(tmp_path):
    from transformers import GenerationConfig, LlamaConfig

    GenerationConfig(eos_token_id=[2, 7], temperature=0.6, do_sample=True).save_pretrained(tmp_path / "base")
    gen = generation_config(tmp_path / "base", LlamaConfig(), [5, 2])
    assert gen.eos_token_id == [5, 2, 7] and gen.temperature == 0.6
    gen.save_pretrained(tmp_path / "out")
    assert read_stop_ids(tmp_path / "out") == [5, 2, 7] and read_stop_ids(tmp_path) == []
    made = generation_config(tmp_path / "none", LlamaConfig(eos_token_id=2), [5])  # no generation config: from the model's
    assert made.eos_token_id == [5, 2]
