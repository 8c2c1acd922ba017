"""Formats and sources: detection, conversion, and the one-line errors a user sees."""

from __future__ import annotations

import json
import typing

import pytest

from qtune.data.formats import FORMATS, detect_format, to_example
from qtune.data.sources import read_rows
from qtune.registry.templates import NAMED_TEMPLATES
from qtune.errors import QtuneError
from qtune.recipe.schema import ChatTemplate, DataFormat

from .conftest import write_jsonl

ROWS = {
    "chat": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    "sharegpt": {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
                                   {"from": "gpt", "value": "hello"}]},
    "instruction": {"instruction": "greet", "input": "politely", "output": "hello"},
    "prompt_completion": {"prompt": "Q: hi\nA:", "completion": " hello"},
    "text": {"text": "Once upon a time."},
}


def test_recipe_choices_follow_the_registries():
    assert list(typing.get_args(DataFormat)) == ["auto", *FORMATS]
    assert list(typing.get_args(ChatTemplate)) == ["auto", "tokenizer", *NAMED_TEMPLATES]


@pytest.mark.parametrize("fmt", list(ROWS))
def test_auto_detects_each_format(fmt):
    assert detect_format(ROWS[fmt], "x:1") == fmt


def test_alpaca_text_column_does_not_make_it_ambiguous():
    assert detect_format({**ROWS["instruction"], "text": "rendered"}, "x:1") == "instruction"


def test_ambiguous_and_unknown_columns_are_errors():
    with pytest.raises(QtuneError, match=r"x:1: columns .* fit several formats \(chat, sharegpt\); set data.format"):
        detect_format({**ROWS["chat"], **ROWS["sharegpt"]}, "x:1")
    with pytest.raises(QtuneError, match=r"x:2: cannot tell the data format from columns answer, question \(expected chat: messages;"):
        detect_format({"question": "?", "answer": "!"}, "x:2")


def test_conversions():
    assert to_example(ROWS["sharegpt"], "w", "sharegpt").messages == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert to_example(ROWS["instruction"], "w", "instruction").messages == [
        {"role": "user", "content": "greet\n\npolitely"}, {"role": "assistant", "content": "hello"}]
    assert to_example(ROWS["prompt_completion"], "w", "prompt_completion").segments == [("Q: hi\nA:", False), (" hello", True)]
    conv = to_example({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]},
                      "w", "prompt_completion")
    assert conv.messages == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert to_example(ROWS["text"], "w", "text").segments == [("Once upon a time.", True)]


def test_wrong_columns_list_found_and_expected():
    with pytest.raises(QtuneError) as e:
        to_example({"instruction": "x", "response": "y"}, "f.jsonl:3", "instruction")
    assert str(e.value) == "f.jsonl:3: format 'instruction' needs columns instruction, output; missing output (found instruction, response)"


def test_unknown_role_names_allowed_roles():
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}
    with pytest.raises(QtuneError, match=r"f:1: messages\[1\].role 'bot' is not a known role \(allowed: system, user, assistant\)"):
        to_example(row, "f:1", "chat")
    row = {"conversations": [{"from": "robot", "value": "b"}]}
    with pytest.raises(QtuneError, match=r"conversations\[0\].from 'robot' is not a known role \(allowed: "
                                         r"system, human, user, gpt, assistant\)"):
        to_example(row, "f:1", "sharegpt")


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS["chat"]) + "\n\n{\"messages\": [}\n")
    with pytest.raises(QtuneError, match=rf"^{path}:3: malformed JSON \(Expecting value at column 15\)$"):
        read_rows(str(path), "data.train[0]")


def test_missing_file_empty_file_and_bad_suffix(tmp_path):
    with pytest.raises(QtuneError, match=r"^data.train\[0\]: no such file or folder '.*nope.jsonl'$"):
        read_rows(str(tmp_path / "nope.jsonl"), "data.train[0]")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(QtuneError, match=r"^data.train\[1\]: '.*empty.jsonl' holds no examples$"):
        read_rows(str(tmp_path / "empty.jsonl"), "data.train[1]")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(QtuneError, match=r"cannot read 'rows.txt' \(allowed suffixes: .jsonl, .json, .parquet, .csv\)"):
        read_rows(str(tmp_path / "rows.txt"), "data.eval")


def test_every_file_kind_and_folders_read_alike(tmp_path):
    import pandas as pd

    rows = [ROWS["instruction"], {**ROWS["instruction"], "output": "bye"}]
    folder = tmp_path / "mix"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows)
    (folder / "b.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(folder / "c.parquet")
    pd.DataFrame(rows).to_csv(folder / "d.csv", index=False)
    for f in sorted(folder.iterdir()):
        got = [r for r, _ in read_rows(str(f), "data.train[0]")]
        assert got == rows, f.name
    everything = read_rows(str(folder), "data.train[0]")
    assert [r for r, _ in everything] == rows * 4
    assert everything[2][1] == f"{folder / 'b.json'}[0]"


def test_hub_dataset_unreachable_is_one_clear_line(monkeypatch):
    import datasets
    import huggingface_hub

    # offline mode: the same failure as no network, without datasets' ~30 s of connection retries
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(QtuneError, match=r"^data.train\[0\]: cannot load Hub dataset 'qtune-test/no-such-set' "
                                         r"split 'train' \(.*\); offline\?"):
        read_rows("hf:qtune-test/no-such-set", "data.train[0]")
