"""Bad input of every kind a user can produce ends in one line naming the field or file, exit code 2.

Each case builds its bad input under ``tmp_path`` and runs the real CLI entry
(:func:`qtune.cli.main`) in-process. Asserted for every case: exit code 2, exactly one line with
``error:`` on stderr and it names the field or file, no traceback, and the run directory left as
it was (a run that failed never leaves something behind that blocks the retry). Most cases fail
before a model loads; the model-path cases load a tokenizer from a copy of the tiny test model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from qtune import rundir
from qtune.cli import main

from tests.conftest import DEMO_DATA, write_recipe


class Ctx:
    """What a case may build on: a temp folder, a good recipe there, and the tiny model's files."""

    def __init__(self, tmp: Path, tiny: Path, monkeypatch=None):
        self.tmp, self.tiny, self.monkeypatch = tmp, tiny, monkeypatch
        self.run = tmp / "run"

    def without(self, module: str) -> "Ctx":
        """This test runs as if ``module`` were not installed (``importlib.util.find_spec`` answers None)."""
        import sys

        self.monkeypatch.setitem(sys.modules, module, None)
        return self

    def recipe(self, name: str = "r.yaml", **sections) -> str:
        sections.setdefault("model", {"path": str(self.tiny)})
        sections.setdefault("quant", {"method": "none"})
        return str(write_recipe(self.tmp / name, **sections))

    def data(self, name: str, text: str, **data) -> str:
        (self.tmp / name).write_text(text)
        return self.recipe(data={"train": [str(self.tmp / name)], **data})

    def model_copy(self, drop: tuple[str, ...] = ()) -> Path:
        out = self.tmp / "model"
        shutil.copytree(self.tiny, out, ignore=shutil.ignore_patterns(*drop) if drop else None)
        return out

    def fake_run(self, recipe: str, state: dict | None = None, **files: str) -> None:
        """A run directory as ``train`` leaves it after begin: recipe.yaml, run_state.json (unless None), more files."""
        from qtune.recipe import dump_recipe, load_recipe

        self.run.mkdir(parents=True, exist_ok=True)
        (self.run / rundir.RECIPE).write_text(dump_recipe(load_recipe(recipe)))
        if state is not None:
            (self.run / rundir.RUN_STATE).write_text(json.dumps(state))
        for name, text in files.items():
            (self.run / name).write_text(text)

    def checkpoint(self, step: int, corrupt: str | None = None) -> Path:
        """A checkpoint folder with readable files, or with ``corrupt`` truncated."""
        import torch
        from safetensors.torch import save_file

        ck = self.run / rundir.CHECKPOINTS / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"w": torch.zeros(2)}, str(ck / "adapter_model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.save({"x": torch.zeros(64)}, ck / name)
        if corrupt:
            data = (ck / corrupt).read_bytes()
            (ck / corrupt).write_bytes(data[: len(data) // 2])
        return ck


STATE = {"layout": 1, "run_id": "abc", "eval_loss_before": 1.0, "sessions": 1}
CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'

# (id, build(ctx) -> argv, text the error line must hold). RECIPE_CASES are ``train RECIPE [overrides]``.
RECIPE_CASES = [
    # --- the recipe file and its YAML
    ("recipe-missing", lambda c: ["train", str(c.tmp / "nope.yaml")], "nope.yaml: no such recipe file"),
    ("yaml-syntax", lambda c: ["train", _write(c.tmp / "r.yaml", "model: {path: x\ndata: [")], "r.yaml:"),
    ("yaml-tab-indent", lambda c: ["train", _write(c.tmp / "r.yaml", "model:\n\tpath: x\n")], "not valid YAML"),
    ("recipe-is-a-list", lambda c: ["train", _write(c.tmp / "r.yaml", "- a\n- b\n")], "a recipe is a mapping"),
    ("recipe-is-a-number", lambda c: ["train", _write(c.tmp / "r.yaml", "42\n")], "a recipe is a mapping of sections"),
    ("recipe-not-utf8", lambda c: ["train", _write_bytes(c.tmp / "r.yaml", b"model:\n  path: \xff\xfe\n")], "r.yaml: not UTF-8 text"),
    # --- recipe fields
    ("unknown-section", lambda c: ["train", c.recipe(lorra={"rank": 4})], "lorra: 'lorra' is not a field"),
    ("misspelled-key", lambda c: ["train", c.recipe(lora={"rnak": 4})], "did you mean 'rank'"),
    ("rank-zero", lambda c: ["train", c.recipe(), "lora.rank=0"], "lora.rank:"),
    ("lr-too-big", lambda c: ["train", c.recipe(), "train.lr=2"], "train.lr:"),
    ("quant-method", lambda c: ["train", c.recipe(), "quant.method=nf5"], "quant.method: 'nf5'"),
    ("scheduler-typo", lambda c: ["train", c.recipe(), "train.scheduler=cosin"], "did you mean 'cosine'"),
    ("max-steps-text", lambda c: ["train", c.recipe(), "train.max_steps=abc"], "train.max_steps:"),
    ("micro-batch-negative", lambda c: ["train", c.recipe(), "train.micro_batch_size=-1"], "train.micro_batch_size:"),
    ("keep-checkpoints-zero", lambda c: ["train", c.recipe(), "train.keep_checkpoints=0"], "train.keep_checkpoints:"),
    ("on-nan-choice", lambda c: ["train", c.recipe(), "train.on_nan=ignore"], "train.on_nan: 'ignore'"),
    ("eval-fraction", lambda c: ["train", c.recipe(), "data.eval_fraction=1.5"], "data.eval_fraction:"),
    (
        "frozen-dtype-choice",
        lambda c: ["train", c.recipe(), "train.frozen_dtype=bf16"],
        "train.frozen_dtype: 'bf16' is not an allowed value (allowed: auto, float32, compute)",
    ),
    ("cross-entropy-choice", lambda c: ["train", c.recipe(), "train.cross_entropy=ligr"], "train.cross_entropy: 'ligr'"),
    ("rms-norm-choice", lambda c: ["train", c.recipe(), "train.rms_norm=fused"], "train.rms_norm: 'fused' is not an allowed value"),
    (
        "rope-choice",
        lambda c: ["train", c.recipe(), "train.rope=triton"],
        "train.rope: 'triton' is not an allowed value (allowed: auto, torch, liger)",
    ),
    ("offload-not-bool", lambda c: ["train", c.recipe(), "train.offload_activations=maybe"], "train.offload_activations:"),
    ("compile-choice", lambda c: ["train", c.recipe(), "train.compile=true"], "train.compile: "),
    (
        "compile-with-blocks",
        lambda c: ["train", c.recipe(), "train.compile=layers", "train.kernels=blocks"],
        "train.compile: 'layers' runs with train.kernels=bitsandbytes only (given blocks)",
    ),
    (
        "liger-not-installed",
        lambda c: ["train", c.without("liger_kernel").recipe(), "train.cross_entropy=liger"],
        "train.cross_entropy: 'liger' needs the optional dependency 'liger-kernel': pip install 'qtune[fast]'",
    ),
    ("liger-rope-not-installed", lambda c: ["train", c.without("liger_kernel").recipe(), "train.rope=liger"], "pip install 'qtune[fast]'"),
    ("liger-rms-norm-on-cpu", lambda c: ["train", c.recipe(), "train.rms_norm=liger"], "train.rms_norm: 'liger' needs a CUDA GPU"),
    (
        "model-missing",
        lambda c: ["train", _write(c.tmp / "r.yaml", yaml.safe_dump({"data": {"train": [str(DEMO_DATA / "train.jsonl")]}}))],
        "model: required field is missing",
    ),
    ("model-path-empty", lambda c: ["train", c.recipe(model={"path": " "})], "model.path:"),
    (
        "data-train-missing",
        lambda c: ["train", _write(c.tmp / "r.yaml", yaml.safe_dump({"model": {"path": "x"}}))],
        "data: required field is missing",
    ),
    ("paged-optimizer-on-cpu", lambda c: ["train", c.recipe(), "train.optimizer=paged_adamw_8bit"], "train.optimizer:"),
    ("export-format", lambda c: ["train", c.recipe(export={"formats": ["gguff"]})], "export.formats.0: 'gguff'"),
    ("export-group-size", lambda c: ["train", c.recipe(export={"group_size": 4})], "export.group_size:"),
    ("output-dir-is-a-file", lambda c: ["train", c.recipe(), f"train.output_dir={_write(c.tmp / 'afile', 'x')}"], "train.output_dir: "),
    # --- CLI overrides
    ("override-without-value", lambda c: ["train", c.recipe(), "train.lr"], "an override is written section.key=value"),
    ("override-under-a-scalar", lambda c: ["train", c.recipe(), "train.max_steps.x=1"], "train.max_steps.x: cannot set a sub-key"),
    # --- data files and rows (fail after the tokenizer, before the model loads)
    (
        "data-file-missing",
        lambda c: ["train", c.recipe(data={"train": [str(c.tmp / "none.jsonl")]})],
        "data.train[0].path: no such file or folder",
    ),
    ("eval-file-missing", lambda c: ["train", c.recipe(data={"eval": str(c.tmp / "none.jsonl")})], "data.eval.path: no such file"),
    ("jsonl-malformed", lambda c: ["train", c.data("d.jsonl", CHAT + '{"messages": [\n')], "d.jsonl:2: malformed JSON"),
    ("jsonl-row-not-object", lambda c: ["train", c.data("d.jsonl", CHAT + "[1, 2]\n")], "d.jsonl:2: each line must be a JSON object"),
    ("data-empty-file", lambda c: ["train", c.data("d.jsonl", "")], "holds no examples"),
    (
        "data-unknown-columns",
        lambda c: ["train", c.data("d.jsonl", '{"foo": "a", "bar": "b"}\n', format="auto")],
        "cannot tell the data format from columns bar, foo",
    ),
    (
        "chat-unknown-role",
        lambda c: ["train", c.data("d.jsonl", CHAT + '{"messages": [{"role": "wizard", "content": "x"}]}\n')],
        "'wizard' is not a known role",
    ),
    ("chat-missing-content", lambda c: ["train", c.data("d.jsonl", '{"messages": [{"role": "user"}]}\n')], "needs 'role' and 'content'"),
    ("data-suffix", lambda c: ["train", c.data("d.txt", "hello\n")], "cannot read 'd.txt'"),
    ("json-not-a-list", lambda c: ["train", c.data("d.json", '"just a string"')], "d.json: a .json data file holds a list"),
    ("parquet-garbage", lambda c: ["train", c.data("d.parquet", "not parquet at all")], "d.parquet: cannot read as parquet"),
    ("data-folder-empty", lambda c: ["train", _mkdir(c.tmp / "empty") and c.recipe(data={"train": [str(c.tmp / "empty")]})], "holds no"),
    # --- every split through the training split's reader (issue 27)
    (
        "eval-split-not-utf8",
        lambda c: ["train", c.recipe(data={"eval": _write_bytes(c.tmp / "e.jsonl", b"\xff\xfe\x00b\x00i\x00n\n")})],
        "e.jsonl:1: not UTF-8 text (byte 0xff at offset 0)",
    ),
    (
        "train-split-latin-1",
        lambda c: [
            "train",
            c.recipe(data={"train": [_write_bytes(c.tmp / "d.jsonl", (CHAT + '{"text": "caf\u00e9"}\n').encode("latin-1"))]}),
        ],
        "d.jsonl:2: not UTF-8 text (byte 0xe9 at offset 13)",
    ),
    (
        "eval-split-null-content",
        lambda c: ["train", c.recipe(data={"eval": _write(c.tmp / "e.jsonl", CHAT.replace('"hello"', "null"))})],
        "e.jsonl:1: messages[1].content must be text, got null",
    ),
    ("json-nested-too-deep", lambda c: ["train", c.data("d.json", "[" * 100000 + "]" * 100000)], "d.json: JSON nested too deeply"),
    (
        "chat-role-not-text",
        lambda c: ["train", c.data("d.jsonl", '{"messages": [{"role": ["user"], "content": "x"}]}\n')],
        "messages[0].role ['user'] is not a known role",
    ),
    # --- LoRA targets the model does not have: refused before peft raises (issue 27)
    (
        "lora-target-typo",
        lambda c: ["train", c.recipe(lora={"target_modules": ["q_proj", "v_prj"]})],
        "lora.target_modules: 'v_prj' match(es) no linear layer of Llama 2/3 (llama); its linears are down_proj, gate_proj, "
        "k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
    ),
    (
        "lora-target-not-in-this-model",
        lambda c: ["train", c.recipe(lora={"target_modules": ["model.layers.7.self_attn.q_proj"]})],
        "lora.target_modules: 'model.layers.7.self_attn.q_proj' match(es) no linear layer of",
    ),
    ("lora-target-empty", lambda c: ["train", c.recipe(lora={"target_modules": []})], "lora.target_modules: the list is empty"),
    # --- model paths
    ("model-dir-missing", lambda c: ["train", c.recipe(model={"path": str(c.tmp / "no-model")})], "model.path: no such file or directory"),
    ("model-dir-no-config", lambda c: ["train", c.recipe(model={"path": str(_mkdir(c.tmp / "m"))})], "has no config.json"),
    ("model-gguf-file", lambda c: ["train", c.recipe(model={"path": _write(c.tmp / "m.gguf", "GGUF")})], "model.path"),
    (
        "model-not-a-gguf-file",
        lambda c: ["train", c.recipe(model={"path": _write(c.tmp / "weights.bin", "x")})],
        "is a file but not a .gguf model",
    ),
    (
        "model-gguf-unsupported-arch",
        lambda c: ["train", c.recipe(model={"path": _gguf_of_arch(c.tmp / "m.gguf", "gpt2")})],
        "is a 'gpt2' GGUF; qtune supports llama",
    ),
    (
        "model-checkpoint-from-gguf-by-hand",
        lambda c: ["train", c.recipe(model={"path": str(_quantization_config(c.model_copy(), "gguf"))})],
        "is already quantized (gguf, config.json quantization_config); give the .gguf file itself",
    ),
    (
        "model-checkpoint-gptq",
        lambda c: ["train", c.recipe(model={"path": str(_quantization_config(c.model_copy(), "gptq"))})],
        "is already quantized (gptq",
    ),
    (
        "model-family-multimodal-gemma3",
        lambda c: ["train", c.recipe(model={"path": str(_model_type(c.model_copy(), "gemma3"))})],
        "qtune does not support 'gemma3' models (supported: llama (Llama 2/3), mistral",
    ),
    (
        "model-config-corrupt",
        lambda c: ["train", c.recipe(model={"path": str(_corrupt(c.model_copy(), "config.json", "{not json"))})],
        "config.json",
    ),
    ("model-no-weights", lambda c: ["train", c.recipe(model={"path": str(c.model_copy(drop=("*.safetensors",)))})], "model.path"),
    (
        "model-weights-corrupt",
        lambda c: ["train", c.recipe(model={"path": str(_truncate(c.model_copy(), "model.safetensors"))})],
        "model.path: could not load",
    ),
    (
        "model-no-tokenizer",
        lambda c: ["train", c.recipe(model={"path": str(c.model_copy(drop=("tokenizer*", "special_tokens*")))})],
        "model.path",
    ),
    (
        "packaged-model-cache-corrupt",
        lambda c: [
            "train",
            c.recipe(model={"path": "smollm2-135m-instruct"}, quant={"method": "none"}) if _fake_converted_cache(c) else "",
        ],
        "delete ",
    ),
]

# ``train`` against a run directory's state (and its flags): validate only notes an existing run.
RUN_CASES = [
    ("run-exists", lambda c: (c.fake_run(c.recipe(), STATE), ["train", c.recipe()])[1], "already holds a run; pass --resume"),
    (
        "resume-not-a-run",
        lambda c: (_write(_mkdir(c.run) / "notes.txt", "x"), ["train", c.recipe(), "--resume"])[1],
        "holds no qtune run (recipe.yaml missing)",
    ),
    (
        "resume-finished-run",
        lambda c: (c.fake_run(c.recipe(), STATE, **{rundir.SUMMARY: "{}"}), ["train", c.recipe(), "--resume"])[1],
        "holds a finished run (summary.json)",
    ),
    (
        "resume-other-version",
        lambda c: (c.fake_run(c.recipe()), ["train", c.recipe(), "--resume"])[1],
        "run_state.json: missing; this run was written by another qtune version",
    ),
    (
        "resume-other-layout",
        lambda c: (c.fake_run(c.recipe(), {**STATE, "layout": 99}), ["train", c.recipe(), "--resume"])[1],
        "run_state.json: run layout 99",
    ),
    (
        "resume-state-corrupt",
        lambda c: (c.fake_run(c.recipe(), STATE, **{rundir.RUN_STATE: "{trunc"}), ["train", c.recipe(), "--resume"])[1],
        "run_state.json: cannot be read",
    ),
    (
        "resume-recipe-corrupt",
        lambda c: (c.fake_run(c.recipe(), STATE, **{rundir.RECIPE: "a: [\n"}), ["train", c.recipe(), "--resume"])[1],
        "recipe.yaml: cannot be read",
    ),
    (
        "resume-changed-lr",
        lambda c: (c.fake_run(c.recipe(), STATE), ["train", c.recipe(), "train.lr=1e-3", "lora.rank=8", "--resume"])[1],
        "lora.rank (16 → 8), train.lr (0.0002 → 0.001)",
    ),
    (
        "resume-corrupt-optimizer",
        lambda c: (c.fake_run(c.recipe(), STATE), c.checkpoint(4, corrupt="optimizer.pt"), ["train", c.recipe(), "--resume"])[2],
        "checkpoint-4/optimizer.pt: corrupted checkpoint file",
    ),
    (
        "resume-corrupt-adapter",
        lambda c: (c.fake_run(c.recipe(), STATE), c.checkpoint(4, corrupt="adapter_model.safetensors"), ["train", c.recipe(), "--resume"])[
            2
        ],
        "checkpoint-4/adapter_model.safetensors: corrupted",
    ),
    (
        "resume-checkpoint-missing-file",
        lambda c: (c.fake_run(c.recipe(), STATE), (c.checkpoint(4) / "scheduler.pt").unlink(), ["train", c.recipe(), "--resume"])[2],
        "checkpoint-4/scheduler.pt: missing",
    ),
    (
        "resume-data-changed",
        lambda c: (c.fake_run(c.recipe(), {**STATE, "train_rows_sha256": "0" * 64}), c.checkpoint(4), ["train", c.recipe(), "--resume"])[2],
        "data.train: the training rows differ",
    ),
]


# Cases of the command line itself and of commands other than train: ``validate`` has nothing to compare them with.
CLI_CASES = [
    # validate alone reads a packaged model's GGUF header (train checks the loaded base instead)
    (
        "lora-target-packaged-model",
        lambda c: ["validate", c.recipe(model={"path": "smollm2-135m-instruct"}, lora={"target_modules": ["qkv_proj"]})],
        "lora.target_modules: 'qkv_proj' match(es) no linear layer of 'smollm2-135m-instruct' (llama)",
    ),
    # --- numeric flags, read before anything loads
    (
        "eval-window-negative",
        lambda c: ["eval", "x", "--window", "-5"],
        "argument --window: must be a whole number of at least 2 (given '-5')",
    ),
    (
        "generate-temperature-nan",
        lambda c: ["generate", "x", "--prompt", "hi", "--temperature", "nan"],
        "argument --temperature: must be a number",
    ),
    (
        "plan-memory-infinite",
        lambda c: ["plan", c.recipe(), "--memory", "1e999GiB"],
        "argument --memory/--gpu-memory: '1e999GiB' is more memory than",
    ),
    ("resume-and-overwrite", lambda c: ["train", c.recipe(), "--resume", "--overwrite"], "not allowed with argument"),
    ("unknown-flag", lambda c: ["train", c.recipe(), "--bogus"], "unrecognized arguments: --bogus"),
    ("unknown-command", lambda c: ["trian", "r.yaml"], "invalid choice: 'trian'"),
    ("export-format-flag", lambda c: ["export", str(c.run), "--format", "gguff"], "argument --format: invalid choice"),
    (
        "eval-window-not-int",
        lambda c: ["eval", "x", "--window", "ten"],
        "argument --window: must be a whole number of at least 2 (given 'ten')",
    ),
    ("export-not-a-run", lambda c: ["export", str(_mkdir(c.run)), "--format", "merged"], "is not a finished qtune run"),
    ("eval-model-missing", lambda c: ["eval", str(c.tmp / "nothing")], "MODEL: no such file or directory"),
    ("eval-model-is-a-recipe", lambda c: ["eval", c.recipe()], "is a file but not a .gguf model"),
    ("eval-model-gguf-not-a-gguf", lambda c: ["eval", _write(c.tmp / "m.gguf", "hello")], "MODEL: '"),
    (
        "eval-model-gguf-without-tensors",
        lambda c: ["eval", _gguf_of_arch(c.tmp / "m.gguf", "llama", tensors=False)],
        "is a GGUF header without tensors",
    ),
    ("eval-model-config-without-model-type", lambda c: ["eval", str(_model_type(c.model_copy(), None))], "names no model_type"),
    (
        "eval-model-config-a-list",
        lambda c: ["eval", str(_corrupt(c.model_copy(), "config.json", "[1, 2]"))],
        "config.json holds a JSON list, not a transformers config",
    ),
    ("eval-model-empty", lambda c: ["eval", ""], "MODEL: empty"),
    (
        "export-adapter-config-corrupt",
        lambda c: (
            c.fake_run(c.recipe(), STATE),
            _write(_mkdir(c.run / rundir.ADAPTER) / "adapter_config.json", "{trunc"),
            ["export", str(c.run), "--format", "merged"],
        )[2],
        "adapter_config.json: cannot be read",
    ),
    ("generate-not-a-model-dir", lambda c: ["generate", str(_mkdir(c.tmp / "d")), "--prompt", "hi"], "MODEL: directory"),
    ("report-not-a-run", lambda c: ["report", str(c.tmp / "nothing")], "RUN_DIR: "),
    ("merge-not-a-run", lambda c: ["merge", str(c.tmp / "nothing")], "RUN_DIR: "),
    (
        "export-run-of-another-version",
        lambda c: (
            _mkdir(c.run / rundir.ADAPTER),
            _write(
                c.run / rundir.RECIPE,
                yaml.safe_dump({**yaml.safe_load(Path(c.recipe()).read_text()), "train": {"max_steps": 2, "old_field": 1}}),
            ),
            ["export", str(c.run), "--format", "merged"],
        )[2],
        "train.old_field: 'old_field' is not a field of train",
    ),
]

CASES = RECIPE_CASES + RUN_CASES + CLI_CASES


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _corrupt(model: Path, name: str, text: str) -> Path:
    (model / name).write_text(text)
    return model


def _gguf_of_arch(path: Path, arch: str, tensors: bool = True) -> str:
    """A GGUF file whose header names ``arch``, with one small tensor (or none: transformers would then build a
    default-sized Llama, 7B parameters, from the empty metadata)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    if tensors:
        w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _model_type(model: Path, model_type: str) -> Path:
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = model_type  # Gemma 3 with its vision tower: only gemma3_text (the text model) is supported
    if model_type is None:
        del config["model_type"]
    (model / "config.json").write_text(json.dumps(config))
    return model


def _quantization_config(model: Path, method: str) -> Path:
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method}
    (model / "config.json").write_text(json.dumps(config))
    return model


def _truncate(model: Path, name: str) -> Path:
    data = (model / name).read_bytes()
    (model / name).write_bytes(data[: len(data) // 3])
    return model


def _fake_converted_cache(c: Ctx) -> bool:
    """The packaged model's converted checkpoint in the (per-test) cache, its weights truncated by an interrupted copy."""
    from qtune.models.packaged import converted_path

    target = converted_path("smollm2-135m-instruct")
    shutil.copytree(c.tiny, target)
    _truncate(target, "model.safetensors")
    return True


def _listing(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_llama_dir, capsys, monkeypatch, build, expected):
    monkeypatch.setenv("QTUNE_CACHE", str(tmp_path / "cache"))  # corrupted caches stay in this test
    ctx = Ctx(tmp_path, tiny_llama_dir, monkeypatch)
    argv = build(ctx)
    before = _listing(ctx.run)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1, err[-3000:]
    assert expected in errors[0], errors[0]
    assert _listing(ctx.run) == before, "the failed attempt changed the run directory"


# Recipe cases ``validate`` cannot catch: they need the weights or the tokenizer loaded.
NEEDS_MORE_THAN_VALIDATE = {
    "model-no-weights",
    "model-weights-corrupt",
    "model-no-tokenizer",
    "packaged-model-cache-corrupt",
    "data-empty-file",
    "lora-target-not-in-this-model",
}
PARITY_CASES = [c for c in RECIPE_CASES if c[0] not in NEEDS_MORE_THAN_VALIDATE]


def _error_line(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.parametrize("build, expected", [c[1:] for c in PARITY_CASES], ids=[c[0] for c in PARITY_CASES])
def test_validate_refuses_what_train_refuses(tmp_path, tiny_llama_dir, capsys, monkeypatch, build, expected):
    """What ``train RECIPE`` refuses, ``validate RECIPE`` refuses with the same line, without loading weights: both
    run the same pre-flight (qtune.train.preflight)."""
    monkeypatch.setenv("QTUNE_CACHE", str(tmp_path / "cache"))
    argv = build(Ctx(tmp_path, tiny_llama_dir, monkeypatch))
    assert argv[0] == "train" and not any(a.startswith("--") for a in argv), f"not a train RECIPE [overrides] case: {argv}"
    trained = _error_line(argv, capsys)
    validated = _error_line(["validate", *argv[1:]], capsys)
    assert trained[0] == 2 and len(trained[1]) == 1 and expected in trained[1][0], trained
    assert validated == trained, f"validate: {validated}\ntrain:    {trained}"


def test_a_failed_start_does_not_block_the_retry(tmp_path, tiny_llama_dir, capsys):
    ctx = Ctx(tmp_path, tiny_llama_dir)
    assert main(["train", ctx.recipe(model={"path": str(tmp_path / "no-model")})]) == 2
    assert not ctx.run.exists()
    assert main(["train", ctx.recipe(), "train.max_steps=1"]) == 0, capsys.readouterr().err[-2000:]
    assert rundir.is_finished_run(ctx.run)


def test_a_corrupted_data_cache_is_rebuilt(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    """A cache entry that does not read back is a miss, rebuilt in place; not an error."""
    monkeypatch.setenv("QTUNE_CACHE", str(tmp_path / "cache"))
    ctx = Ctx(tmp_path, tiny_llama_dir)
    recipe = ctx.recipe()
    assert main(["data", "inspect", recipe, "-n", "1"]) == 0
    (entry,) = (tmp_path / "cache" / "data").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    capsys.readouterr()
    assert main(["data", "inspect", recipe, "-n", "1"]) == 0
    assert "miss" in capsys.readouterr().out
    assert main(["data", "inspect", recipe, "-n", "1"]) == 0
    assert "hit" in capsys.readouterr().out


def test_a_bug_keeps_its_traceback_and_ends_with_where_to_report_it(monkeypatch, capsys):
    """Only qtune's own bugs reach the user as a traceback; the last line says so (a stand-in bug in `qtune models`)."""
    import qtune.cli
    from qtune.errors import REPORT_BUGS

    def broken(args):
        raise RuntimeError("a stand-in bug")

    monkeypatch.setattr(qtune.cli, "cmd_models", broken)
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Traceback") and err[-2] == "RuntimeError: a stand-in bug"
    assert err[-1].endswith(f"is a bug in qtune, not a mistake in your input; {REPORT_BUGS}")
