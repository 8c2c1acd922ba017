"""``qtune export`` options: the recipe's export section, overridden by flags, validated once."""


import pytest

from qtune.cli import build_parser, export_settings
from qtune.errors import QtuneError

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dir(tmp_path):
    from qtune.recipe import dump_recipe, load_recipe

    recipe = load_recipe(REPO / "recipes/smollm2-135m-nf4.yaml", ["export.formats=[gptq]", "export.group_size=32"])
    (tmp_path / "recipe.yaml").write_text(dump_recipe(recipe))
    (tmp_path / "adapter").mkdir()
    return tmp_path


def test_flags_override_recipe_section(run_dir):
    args = build_parser().parse_args(["export", str(run_dir), "--format", "awq", "gguf", "--bits", "4",
                                      "--gguf-type", "Q4_0", "--calib-samples", "16", "--no-act-order",
                                      "--device", "cpu", "--fidelity-tokens", "256", "--no-fidelity", "--threads", "1"])
    s = export_settings(args)
    assert s.formats == ["awq", "gguf"] and s.group_size == 32  # group size kept from the recipe
    assert s.gguf_types == ["Q4_0"] and s.calibration.samples == 16 and s.act_order is False
    assert s.device == "cpu" and s.fidelity_tokens == 256 and s.fidelity is False and s.threads == 1
    assert export_settings(build_parser().parse_args(["export", str(run_dir), "--format", "gptq"])).device == "auto"


def test_bad_option_is_one_line_error(run_dir):
    args = build_parser().parse_args(["export", str(run_dir), "--format", "gptq", "--group-size", "3"])
    with pytest.raises(QtuneError) as e:
        export_settings(args)
    assert e.value.lines == ["export.group_size: must be -1 (one group per row) or at least 8 (given 3)"]


def test_threads_must_be_positive(run_dir):
    args = build_parser().parse_args(["export", str(run_dir), "--format", "gptq", "--threads", "0"])
    with pytest.raises(QtuneError) as e:
        export_settings(args)
    assert e.value.lines == ["export.threads: Input should be greater than or equal to 1 (given 0)"]


def test_not_a_run_dir(tmp_path):
    args = build_parser().parse_args(["export", str(tmp_path), "--format", "merged"])
    with pytest.raises(QtuneError, match="not a finished qtune run"):
        export_settings(args)
