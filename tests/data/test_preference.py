"""Preference rows: TRL's standard form from text or message fields, refusals, and the bundled pairs' recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qtune.data.preference import detect_kind, to_row
from qtune.errors import QtuneError

REPO = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "2 + 2?"}]


def test_text_rows_stay_text_and_any_message_list_makes_the_row_conversational():
    assert to_row({"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}, "r", "pairs") == \
        {"prompt": "2 + 2?", "chosen": "4", "rejected": "5"}
    row = to_row({"prompt": USER, "chosen": "4", "rejected": [{"role": "assistant", "content": "5"}]}, "r", "pairs")
    assert row == {"prompt": USER, "chosen": [{"role": "assistant", "content": "4"}],
                   "rejected": [{"role": "assistant", "content": "5"}]}
    assert to_row({"prompt": "2 + 2?", "completion": "4", "label": True}, "r", "unpaired")["label"] is True


@pytest.mark.parametrize("row,kind,says", [
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "pairs", "'chosen' equals 'rejected'"),
    ({"prompt": "p", "chosen": "a"}, "pairs", "missing rejected"),
    ({"prompt": "p", "completion": "a", "label": 1}, "unpaired", "'label' must be true"),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, "pairs", "prompt[0]"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "pairs", "'prompt' must be text or a list"),
])
def test_bad_rows_are_refused_with_where_and_what(row, kind, says):
    with pytest.raises(QtuneError) as info:
        to_row(row, "f.jsonl:7", kind)
    assert str(info.value).startswith("f.jsonl:7: ") and says in str(info.value)


def test_kind_is_detected_from_the_columns():
    assert detect_kind({"prompt": 1, "chosen": 1, "rejected": 1}) == "pairs"
    assert detect_kind({"prompt": 1, "completion": 1, "label": 1}) == "unpaired"
    assert detect_kind({"messages": []}) is None


def test_bundled_pairs_are_what_the_script_makes_from_python_repl():
    spec = importlib.util.spec_from_file_location("make_preference_data", REPO / "scripts" / "make_preference_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for split in ("train", "eval"):
        source = [json.loads(line) for line in (REPO / "data" / "python-repl" / f"{split}.jsonl").read_text().splitlines()]
        pairs = script.pairs_of(source)
        bundled = [json.loads(line) for line in (REPO / "data" / "python-repl-prefs" / f"pairs-{split}.jsonl").read_text().splitlines()]
        assert pairs == bundled
        assert all(p["chosen"] != p["rejected"] and p["chosen"][0]["content"] in {s["messages"][-1]["content"] for s in source}
                   for p in pairs[:50])
