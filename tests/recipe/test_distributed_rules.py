"""The ``distributed`` section: each combination FSDP (or a backend) cannot run is one line naming field and fix."""

import pytest

from qtune.errors import RecipeError
from qtune.recipe import load_recipe
from qtune.recipe.distributed_rules import RULES

from tests.recipe.test_recipes import DEFAULT, errors_of

FSDP = ("distributed.strategy=fsdp", "train.device=cuda", "quant.compute_dtype=bfloat16")
FSDP_OK = FSDP + ("quant.quant_storage=bfloat16",)


CASES = [
    (FSDP, "quant.quant_storage", "set quant.quant_storage=bfloat16"),
    (FSDP_OK + ("quant.method=int8", "quant.quant_storage=uint8"), "quant.method", "distributed.strategy=ddp"),
    (FSDP_OK + ("model.dtype=float16",), "model.dtype", "set model.dtype=auto"),
    (FSDP_OK + ("train.kernels=triton",), "train.kernels", "train.kernels=bitsandbytes"),
    (FSDP_OK + ("train.frozen_dtype=float32",), "train.frozen_dtype", "train.frozen_dtype=auto or compute"),
    (FSDP_OK + ("train.optimizer=paged_adamw_8bit",), "train.optimizer", "train.optimizer=adamw_torch"),
    (FSDP_OK + ("train.device=cpu",), "distributed.strategy", "strategy=ddp"),
    (("distributed.backend=nccl", "train.device=cpu"), "distributed.backend", "backend=gloo"),
    (("distributed.sharding=shard_grad_op",), "distributed.sharding", "distributed.strategy=fsdp"),
    (("quant.method=none", "quant.quant_storage=bfloat16"), "quant.quant_storage", "remove it"),
]


@pytest.mark.parametrize("overrides, field, fix", CASES, ids=[c[1] for c in CASES])
def test_each_rule_names_the_field_and_the_fix(overrides, field, fix):
    (line,) = errors_of(DEFAULT, *overrides)
    assert line.startswith(f"{field}: ") and fix in line, line


def test_every_rule_is_exercised_above():
    assert len(RULES) == len(CASES)


def test_all_problems_are_reported_at_once():
    lines = errors_of(DEFAULT, *FSDP, "train.kernels=triton", "model.dtype=float16")
    assert [line.split(":")[0] for line in lines] == ["quant.quant_storage", "model.dtype", "train.kernels"]


def test_fsdp_qlora_recipe_validates():
    recipe = load_recipe(DEFAULT, [*FSDP_OK, "distributed.nproc=8", "distributed.cpu_offload=true"])
    assert recipe.train.global_batch_size(recipe.distributed.nproc) == 8 * recipe.train.effective_batch_size


def test_a_dumped_recipe_reloads(tmp_path):
    """recipe.yaml spells out every default (sharding, cpu_offload, quant_storage): the rules go by value."""
    from qtune.recipe import dump_recipe

    for overrides in ((), ("quant.method=int8",), FSDP_OK):
        path = tmp_path / "recipe.yaml"
        path.write_text(dump_recipe(load_recipe(DEFAULT, list(overrides))))
        assert load_recipe(path) == load_recipe(DEFAULT, list(overrides))


def test_distributed_keys_are_checked_like_any_other():
    with pytest.raises(RecipeError) as info:
        load_recipe(DEFAULT, ["distributed.stratgy=fsdp"])
    assert "did you mean 'strategy'?" in info.value.lines[0]


# The README's list of refused combinations, item by item, and the overrides that make each
README_REFUSED = {
    "FSDP with uint8 4-bit storage": (FSDP, "quant.quant_storage"),
    "with int8": (FSDP_OK + ("quant.method=int8", "quant.quant_storage=uint8"), "quant.method"),
    "with `train.kernels=triton`": (FSDP_OK + ("train.kernels=triton",), "train.kernels"),
    "with `model.dtype` unlike the compute dtype": (FSDP_OK + ("model.dtype=float16",), "model.dtype"),
    "on CPU (accelerate would run DDP)": (FSDP_OK + ("train.device=cpu",), "distributed.strategy"),
    "with bitsandbytes' 8-bit or paged optimizers": (FSDP_OK + ("train.optimizer=adamw_8bit",), "train.optimizer"),
    "`nccl` on CPU (`train.device: cpu`, or `auto` on a machine without a GPU: `train` refuses it before loading anything)":
        (("distributed.backend=nccl", "train.device=cpu"), "distributed.backend"),
}


def readme_refused() -> list[str]:
    """The items of the README sentence 'Combinations that cannot run are refused before launch, one line each: ...'."""
    from tests.conftest import REPO

    text = " ".join((REPO / "README.md").read_text().split())
    head = "Combinations that cannot run are refused before launch, one line each: "
    body = text[text.index(head) + len(head):]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and (body.startswith(", ", i) or body.startswith(". ", i)):
            items.append(body[start:i])
            start = i + 2
            if ch == ".":
                return items
    raise AssertionError("the README's list of refused combinations has no end")


def test_the_readme_lists_exactly_what_is_refused():
    assert readme_refused() == list(README_REFUSED)


@pytest.mark.parametrize("item", list(README_REFUSED))
def test_each_combination_the_readme_refuses_is_refused(item):
    overrides, field = README_REFUSED[item]
    (line,) = errors_of(DEFAULT, *overrides)
    assert line.startswith(f"{field}: "), line
