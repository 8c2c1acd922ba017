"""Calibration blocks: the recipe's data by default, general text mixed in by export.calibration.mix."""

import pytest
import torch

from qtune.errors import QtuneError, RecipeError
from qtune.export.calibration import calibration_set, calibration_tokens, mix_source
from qtune.recipe import load_recipe
from qtune.recipe.schema import CalibrationSection

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "smollm2-135m-nf4.yaml"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPE, ["data.max_examples=64", "data.max_eval_examples=8"])


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from qtune.models.packaged import materialize

    return AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))


def text_stream(tokenizer, folder):
    from qtune.eval.text import read_text_sources

    return [t for d in read_text_sources([str(folder)]).documents for t in tokenizer(d)["input_ids"]]


def is_block_of(block: torch.Tensor, stream: list[int]) -> bool:
    """``block`` is one of the aligned seq_len blocks of ``stream``."""
    n = len(block)
    return any(stream[i : i + n] == block.tolist() for i in range(0, len(stream) - n + 1, n))


def test_no_mix_is_the_recipes_data(recipe, tokenizer):
    cal = CalibrationSection(samples=6, seq_len=32)
    blocks, record = calibration_set(recipe, tokenizer, cal)
    assert torch.equal(blocks, calibration_tokens(recipe, tokenizer, 6, 32))
    assert record == {"source": "train", "seq_len": 32, "seed": 0, "samples": 6}


def test_mix_replaces_its_fraction_of_blocks_with_text(recipe, tokenizer):
    cal = CalibrationSection(samples=10, seq_len=32, mix={"source": "python-docs", "fraction": 0.3})
    blocks, record = calibration_set(recipe, tokenizer, cal)
    assert blocks.shape == (10, 32)
    assert record["task_samples"] == 7 and record["mix"]["samples"] == 3 and record["mix"]["fraction"] == 0.3
    assert torch.equal(blocks[:7], calibration_tokens(recipe, tokenizer, 7, 32))  # the task's blocks come first
    stream = text_stream(tokenizer, REPO / "data/python-docs/tutorial")
    assert all(is_block_of(b, stream) for b in blocks[7:])
    assert record["mix"]["text"]["sha256"] and len(record["mix"]["text"]["files"]) == 6


def test_mix_is_deterministic_and_seeded(recipe, tokenizer):
    def blocks(seed):
        cal = CalibrationSection(samples=8, seq_len=32, seed=seed, mix={"source": "python-docs", "fraction": 0.5})
        return calibration_set(recipe, tokenizer, cal)[0]

    assert torch.equal(blocks(0), blocks(0))
    assert not torch.equal(blocks(0)[4:], blocks(1)[4:])


def test_mix_from_a_jsonl_file_in_the_recipes_format(recipe, tokenizer):
    path = REPO / "data/python-repl/train.jsonl"
    cal = CalibrationSection(samples=4, seq_len=32, mix={"source": str(path), "fraction": 0.25})
    blocks, record = calibration_set(recipe, tokenizer, cal)
    assert record["mix"]["samples"] == 1 and blocks.shape == (4, 32)
    assert torch.equal(blocks[3:], calibration_tokens(recipe, tokenizer, 1, 32, str(path)))


def test_mix_source_kinds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert mix_source("python-docs") == ("text", REPO / "data/python-docs/tutorial")
    assert mix_source(str(tmp_path / "notes.txt"))[0] == "text" and mix_source(str(tmp_path))[0] == "text"
    with pytest.raises(QtuneError, match="mix.source: no such file or bundled text 'wikitext'.*python-docs"):
        mix_source("wikitext")


def test_too_small_a_share_or_source_is_an_error(recipe, tokenizer, tmp_path):
    cal = CalibrationSection(samples=10, seq_len=32, mix={"source": "python-docs", "fraction": 0.01})
    with pytest.raises(QtuneError, match=r"mix.fraction: 0.01 of 10 samples is 0 block\(s\)"):
        calibration_set(recipe, tokenizer, cal)
    (tmp_path / "short.txt").write_text("Too short to cut into blocks.")
    cal = CalibrationSection(samples=4, seq_len=32, mix={"source": str(tmp_path / "short.txt"), "fraction": 0.5})
    with pytest.raises(QtuneError, match="fewer than the 2 its fraction asks for"):
        calibration_set(recipe, tokenizer, cal)


@pytest.mark.parametrize("override,field", [
    ("export.calibration.mix={source: python-docs, fraction: 1.0}", "export.calibration.mix.fraction"),
    ("export.calibration.mix={source: python-docs, fraction: 0}", "export.calibration.mix.fraction"),
    ("export.calibration.mix={source: python-docs}", "export.calibration.mix.fraction"),
    ("export.calibration.mix={source: python-docs, fraction: 0.5, share: 2}", "export.calibration.mix.share"),
])
def test_bad_mix_fields_are_recipe_errors(override, field):
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE, ["export.formats=[gptq]", override])
    assert [line.split(":")[0] for line in e.value.lines] == [field]


def test_cli_flag_sets_the_mix(tmp_path):
    from qtune.cli import build_parser, export_settings
    from qtune.recipe import dump_recipe

    (tmp_path / "recipe.yaml").write_text(dump_recipe(load_recipe(RECIPE)))
    (tmp_path / "adapter").mkdir()
    args = build_parser().parse_args(["export", str(tmp_path), "--format", "gptq", "--calib-mix", "python-docs", "0.25"])
    mix = export_settings(args).calibration.mix
    assert mix.source == "python-docs" and mix.fraction == 0.25
    args = build_parser().parse_args(["export", str(tmp_path), "--format", "gptq", "--calib-mix", "python-docs", "2"])
    with pytest.raises(QtuneError) as e:
        export_settings(args)
    assert e.value.lines[0].startswith("export.calibration.mix.fraction: ")


def test_fidelity_says_when_the_perplexity_text_was_calibrated_on():
    from qtune.export.fidelity import calibrated_on_the_text

    files = [str(REPO / "data/python-docs/tutorial/classes.rst.txt")]
    fidelity = {"export": {"text": {"text": {"files": files}}}}
    assert calibrated_on_the_text(fidelity, {"mix": {"source": "python-docs", "text": {"files": files}}})
    assert calibrated_on_the_text(fidelity, {"mix": {"source": "x.jsonl", "text": {"file": "x.jsonl"}}}) is None
    assert calibrated_on_the_text(fidelity, {"source": "train"}) is None
