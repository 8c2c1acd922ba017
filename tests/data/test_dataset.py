"""build_datasets end to end: cache hit/miss and invalidation, mixing weights, eval split, refusal, CLI."""

from __future__ import annotations

import pytest

from qtune.data.dataset import build_datasets, problems, refuse_training
from qtune.errors import QtuneError
from qtune.recipe.schema import DataSection

from .conftest import write_jsonl


def chat(i: int, answer: str = "ok") -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"{answer} {i}"}]}


@pytest.fixture
def chat_file(tmp_path):
    return write_jsonl(tmp_path / "chat.jsonl", [chat(i) for i in range(40)])


def section(**kw) -> DataSection:
    return DataSection(**{"eval_fraction": 0.25, **kw})


def test_second_build_is_a_cache_hit_with_identical_rows(smol_tokenizer, chat_file):
    data = section(train=[str(chat_file)])
    first = build_datasets(data, smol_tokenizer, seed=0)
    second = build_datasets(data, smol_tokenizer, seed=0)
    assert (first.stats["cache"], second.stats["cache"]) == ("miss", "hit")
    assert second.train == first.train and second.eval == first.eval
    assert second.stats["train"] == first.stats["train"]


def test_changed_content_tokenizer_option_or_seed_misses(smol_tokenizer, chat_file):
    data = section(train=[str(chat_file)])
    build_datasets(data, smol_tokenizer, seed=0)
    assert build_datasets(section(train=[str(chat_file)], max_length=64), smol_tokenizer, seed=0).stats["cache"] == "miss"
    assert build_datasets(section(train=[str(chat_file)], train_on="all"), smol_tokenizer, seed=0).stats["cache"] == "miss"
    assert build_datasets(data, smol_tokenizer, seed=1).stats["cache"] == "miss"
    write_jsonl(chat_file, [chat(i, "changed") for i in range(40)])  # same path, new content
    changed = build_datasets(data, smol_tokenizer, seed=0)
    assert changed.stats["cache"] == "miss"
    assert any("changed" in smol_tokenizer.decode(r["input_ids"]) for r in changed.train)


def test_packing_reuses_the_cached_rows(smol_tokenizer, chat_file):
    build_datasets(section(train=[str(chat_file)], max_length=128), smol_tokenizer, seed=0)
    packed = build_datasets(section(train=[str(chat_file)], packing=True, max_length=128), smol_tokenizer, seed=0)
    assert packed.stats["cache"] == "hit"
    assert packed.stats["packing"]["rows"] == len(packed.train) < packed.stats["train"]["rows"]
    assert all("position_ids" in r and len(r["input_ids"]) <= 128 for r in packed.train)


def test_corrupt_cache_file_is_a_miss_and_is_rewritten(smol_tokenizer, chat_file):
    from pathlib import Path

    data = section(train=[str(chat_file)])
    path = Path(build_datasets(data, smol_tokenizer, seed=0).stats["cache_path"])
    path.write_bytes(b"not an npz")
    assert build_datasets(data, smol_tokenizer, seed=0).stats["cache"] == "miss"
    assert build_datasets(data, smol_tokenizer, seed=0).stats["cache"] == "hit"


def test_weights_mix_sources_and_eval_is_held_out_before_weighting(smol_tokenizer, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i, "alpha") for i in range(20)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"task {i}", "output": f"beta {i}"} for i in range(20)])
    data = section(train=[{"path": str(a), "weight": 2.0}, {"path": str(b), "weight": 0.5}], eval_fraction=0.2, cache=False)
    out = build_datasets(data, smol_tokenizer, seed=3)
    texts = [smol_tokenizer.decode(r["input_ids"]) for r in out.train]
    evals = {smol_tokenizer.decode(r["input_ids"]) for r in out.eval}
    n_alpha, n_beta = sum("alpha" in t for t in texts), sum("beta" in t for t in texts)
    held_alpha = sum("alpha" in t for t in evals)
    assert len(out.eval) == 8
    assert n_alpha == 2 * (20 - held_alpha)
    assert n_beta == round(0.5 * (20 - (8 - held_alpha)))
    assert not evals & set(texts)
    assert out.stats["formats"] == ["chat", "instruction"]


def test_eval_file_and_no_trained_token_refusal(smol_tokenizer, tmp_path, chat_file):
    user_only = [{"messages": [{"role": "user", "content": f"q {i}"}]} for i in range(10)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat(i) for i in range(30)] + user_only)
    held = write_jsonl(tmp_path / "eval.jsonl", [chat(i) for i in range(5)])
    data = section(train=[str(bad)], eval=str(held))
    out = build_datasets(data, smol_tokenizer, seed=0)
    assert out.stats["train"]["untrained"] == 10 and out.stats["train"]["rows"] == 30 and len(out.eval) == 5
    with pytest.raises(QtuneError) as e:
        refuse_training(out, data, smol_tokenizer)
    assert str(e.value) == ("data.train: 10 of 40 examples have no trained token (25.0% > data.max_untrained_fraction 5.0%); "
                            "check data.format, data.train_on and that conversations end with an assistant turn")
    assert problems(out, section(train=[str(bad)], eval=str(held), max_untrained_fraction=0.3), smol_tokenizer) == []


def test_eos_mismatch_is_a_problem(smol_tokenizer, chat_file):
    saved = smol_tokenizer.eos_token
    try:
        smol_tokenizer.eos_token = "<|endoftext|>"
        data = section(train=[str(chat_file)])
        out = build_datasets(data, smol_tokenizer, seed=0)
        (line,) = problems(out, data, smol_tokenizer)
    finally:
        smol_tokenizer.eos_token = saved
    assert line == ("data.chat_template: template 'tokenizer' ends an assistant turn with '<|im_end|>', which is not a token "
                    "the model stops on (it stops on its EOS '<|endoftext|>'), so it would not learn to stop; set "
                    "data.chat_template to one that does: chatml, mistral (chatml and mistral spell their turn markers as plain text)")


def recipe(tmp_path, model_path, train_file, **data) -> str:
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(model_path)},
        "quant": {"method": "none", "compute_dtype": "float32"},
        "data": {"train": [str(train_file)], "eval_fraction": 0.25, "max_length": 64, **data},
        "train": {"max_steps": 1, "device": "cpu", "output_dir": str(tmp_path / "run")},
    }))
    return str(path)


def test_cli_inspect_marks_trained_tokens_and_shows_the_cache(smol_path, tmp_path, chat_file, capsys):
    from qtune.cli import main

    path = recipe(tmp_path, smol_path, chat_file)
    assert main(["data", "inspect", "-n", "1", path]) == 0
    first = capsys.readouterr().out
    assert main(["data", "inspect", "-n", "1", path]) == 0
    second = capsys.readouterr().out
    assert "[[ok" in first and "<|im_end|>]]" in first
    assert "cache: miss" in first and "cache: hit" in second
    assert "dropped: no trained token" in first and "ok: qtune train would accept this data" in first


def test_cli_train_refuses_untrained_data_with_exit_2(smol_path, tmp_path, capsys):
    from qtune.cli import main

    rows = [chat(i) for i in range(8)] + [{"messages": [{"role": "user", "content": f"q {i}"}]} for i in range(8)]
    path = recipe(tmp_path, smol_path, write_jsonl(tmp_path / "half.jsonl", rows))
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert "error: data.train:" in err and "have no trained token" in err
    assert not (tmp_path / "run" / "adapter").exists()
