import pytest
import torch


def tiny_llama(kv_heads: int = 4, seed: int = 0):
    """A 2-layer llama whose sizes are multiples of 128 (every group size divides them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=256, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger, uneven weights than the init, so quantization error is visible
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.exp(torch.randn(1, p.shape[1]) * 0.5) * 3)
    return model


@pytest.fixture
def make_tiny():
    return tiny_llama


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (16, 64), generator=g)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """These tests run many small ops; on a shared 2-core machine OpenMP spinning made them ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def make_tiny_run(root, seed: int = 0):
    """A finished qtune run on a tiny llama (SmolLM2's tokenizer, sizes multiple of 128) with a
    LoRA adapter whose B is non-zero, so merging really changes the weights."""
    from peft import get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from qtune import rundir
    from qtune.models.load import lora_config
    from qtune.models.packaged import materialize
    from qtune.recipe import dump_recipe, load_recipe

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, rms_norm_eps=1e-5,
    )
    base = root / "base"
    LlamaForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    run = root / "run"
    (root / "recipe.yaml").write_text(f"""
model: {{path: {base}}}
quant: {{method: nf4, compute_dtype: float32}}
lora: {{rank: 8, alpha: 16, dropout: 0.0}}
data: {{train: [{REPO}/data/chatterbot/train.jsonl], eval: {REPO}/data/chatterbot/eval.jsonl, format: chat,
        max_length: 64, max_examples: 200, max_eval_examples: 24}}
train: {{output_dir: {run}, device: cpu}}
""")
    recipe = load_recipe(root / "recipe.yaml")
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base, dtype=torch.float32), lora_config(recipe.lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    run.mkdir()
    rundir.write_text(run / rundir.RECIPE, dump_recipe(recipe))
    model.save_pretrained(run / rundir.ADAPTER)
    tok.save_pretrained(run / rundir.ADAPTER)
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tinyrun"))


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory):
    """``(run, exports)``: every format of a tiny run (GGUF F16, Q8_0, Q4_0), calibrated on a 3:1 mix of task rows and
    bundled prose, exported once for the pipeline and model-card tests, in a folder moved after writing (so nothing
    may lean on the path it was written at)."""
    from qtune.export.pipeline import export_run
    from qtune.recipe.schema import ExportSection

    root = tmp_path_factory.mktemp("exports")
    run = make_tiny_run(root)
    settings = ExportSection(
        formats=["merged", "gptq", "awq", "gguf"],
        group_size=64,
        gguf_types=["F16", "Q8_0", "Q4_0"],
        calibration={"samples": 8, "seq_len": 64, "mix": {"source": "python-docs", "fraction": 0.25}},
    )
    export_run(run, settings, out_root=root / "written")
    return run, (root / "written").rename(root / "moved")


def make_family_run(model_type: str, root):
    """A finished run on the tiny ``model_type`` model of tests/conftest.py, as ``train`` leaves it: the family's
    template saved with the tokenizer, generation_config.json with its stop ids, and an adapter whose B is non-zero."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune import rundir
    from qtune.data.stops import stop_ids
    from qtune.models.generation_config import write_generation_config
    from qtune.models.load import lora_config
    from qtune.recipe import dump_recipe, load_recipe
    from qtune.registry.families import family
    from qtune.registry.templates import NAMED_TEMPLATES

    from tests.conftest import tiny_family_dir, write_recipe

    base = tiny_family_dir(model_type, root / "base")
    recipe = load_recipe(
        write_recipe(
            root / "recipe.yaml",
            model={"path": str(base)},
            quant={"method": "nf4", "compute_dtype": "float32"},
            lora={"rank": 8, "alpha": 16, "dropout": 0.0},
        )
    )
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), lora_config(recipe.lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    run = root / "run"
    run.mkdir()
    rundir.write_text(run / rundir.RECIPE, dump_recipe(recipe))
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = NAMED_TEMPLATES[family(model_type).chat_template]
    model.save_pretrained(run / rundir.ADAPTER)
    tok.save_pretrained(run / rundir.ADAPTER)
    write_generation_config(run / rundir.ADAPTER, base, model.config, stop_ids(tok, family(model_type).end_of_turn))
    return run
