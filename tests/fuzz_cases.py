"""A seeded generator of bad inputs for every command, and the check every one of them must pass.

Case ``i`` of seed ``s`` is always the same input (``random.Random(f"{s}:{i}")``), so a failure is
reproduced by its number alone: ``scripts/fuzz_inputs.py --seed S --only I``. Kinds, round-robin
over the case number so any slice covers all of them:

* ``recipe``: a good recipe with one to three keys deleted, added or set to values of the wrong
  type, range or size (unicode, huge numbers, NaN, nested lists), or the file's bytes mangled;
* ``override``: a good recipe with ``section.key=value`` overrides of such values;
* ``data``: a data file of bytes, another encoding, truncated JSON, wrong shapes, nulls, empty or
  nested rows, in every split: ``data.train``, ``data.eval``, ``export --calib-source`` and
  ``export --calib-mix``; the train and eval splits go through ``validate`` and ``train``;
* ``model``: a model path that is empty, missing, a file of the wrong kind, a truncated GGUF, a
  config without (or with a wrong) ``model_type``, given to ``validate``, ``train``, ``eval``,
  ``generate``;
* ``flag``: a numeric or size flag of ``eval``, ``generate``, ``export``, ``merge``, ``report``,
  ``plan``, ``train``, ``data inspect`` set to a value outside what it takes;
* ``rundir``: a run directory (or adapter) that is missing, a file, or holds corrupt files, given
  to ``export``, ``merge``, ``report``, ``eval``, ``train --resume``.

Every case is bad by construction (``expect_error``), except the few whose generator cannot tell
(``None``). The check (:func:`verdict`): exit status 2, at most a few ``error:`` lines, no
traceback, nothing changed in the run directory, and nothing in the cache but new tokenized-data entries.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "chatterbot"
MAX_ERROR_LINES = 5  # validate reports every recipe error at once; a case has at most three mutations
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
KINDS = ("recipe", "override", "data", "model", "flag", "rundir")


@dataclass
class Case:
    kind: str
    label: str  # what was generated, for the report
    argv: list[str]
    expect_error: bool | None = True  # None: the generator cannot tell whether the input is acceptable


@dataclass
class Outcome:
    case: Case
    code: int | None
    err: str
    problems: list[str]

    @property
    def traceback(self) -> str | None:
        """The exception class of a traceback in the output, or None."""
        if "Traceback" not in self.err:
            return None
        tail = self.err[self.err.rindex("Traceback"):].splitlines()
        raised = [line for line in tail[1:] if line and not line.startswith((" ", "qtune "))]
        return raised[0].split(":")[0] if raised else "?"


# ---- values of the wrong type, range or size

def odd_value(rng: random.Random):
    return rng.choice([
        -1, 0, -(10**30), 10**30, 2**63, 1e308, -1e-308, float("nan"), float("inf"), float("-inf"), True, None, "",
        " ", "∞", "ünïcødé ✓ 🚀", "\x00", "a" * 5000, "0x10", "1e999", "-0", "[1, 2", [], [1, "x", None], {}, {"a": {"b": [1]}},
        "../../etc/passwd", "nan", "yes", 3.5, -0.5, 1.0000001,
    ])


def yaml_text(value) -> str:
    """``value`` as an override's right-hand side (YAML)."""
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def good_recipe(ws: "Workspace", case_dir: Path, **data) -> dict:
    return {
        "model": {"path": str(ws.model)},
        "quant": {"method": "none"},
        "lora": {"rank": 4},
        "data": {"train": [str(DEMO / "train.jsonl")], "eval": str(DEMO / "eval.jsonl"), "format": "chat",
                 "max_length": 64, "max_examples": 16, "max_eval_examples": 8, **data},
        "train": {"max_steps": 1, "micro_batch_size": 4, "logging_steps": 1, "device": "cpu",
                  "gradient_checkpointing": False, "output_dir": str(case_dir / "run")},
    }


def write_recipe(case_dir: Path, recipe: dict, name: str = "r.yaml") -> str:
    path = case_dir / name
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return str(path)


def _leaves(tree: dict, prefix=()) -> list[tuple]:
    out = []
    for k, v in tree.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _leaves(v, prefix + (k,))
    return out


SCHEMA_KEYS = {  # keys a mutation may add or set, beyond those in the good recipe: every section's fields
    "model": ["path", "dtype", "revision", "trust_remote_code"],
    "quant": ["method", "compute_dtype", "double_quant", "quant_storage", "int8_threshold"],
    "lora": ["rank", "alpha", "dropout", "target_modules", "dora", "rslora"],
    "data": ["format", "max_length", "packing", "eval_fraction", "train_on", "truncation", "chat_template", "system_prompt",
             "max_examples", "max_eval_examples", "max_untrained_fraction", "cache"],
    "train": ["lr", "epochs", "max_steps", "micro_batch_size", "grad_accumulation", "warmup_steps", "weight_decay", "seed",
              "scheduler", "optimizer", "eval_steps", "save_steps", "keep_checkpoints", "kernels", "on_nan", "device",
              "frozen_dtype", "cross_entropy", "rms_norm", "rope", "compile", "offload_activations", "output_dir"],
    "distributed": ["strategy", "nproc", "backend", "sharding", "cpu_offload"],
    "export": ["formats", "bits", "group_size", "damp", "gguf_types", "fidelity_tokens", "threads"],
    "tracking": ["run_name"],
}


def gen_recipe(rng, ws, d) -> Case:
    recipe = good_recipe(ws, d)
    if rng.random() < 0.2:  # the file itself
        text = yaml.safe_dump(recipe).encode()
        how = rng.choice(["truncated", "bytes", "latin-1", "utf-16", "tabs", "empty", "top-level-list", "binary"])
        raw = {"truncated": text[: rng.randrange(1, len(text))] + b"\n  - [", "bytes": bytes(rng.randrange(256) for _ in range(200)),
               "latin-1": text + "  # caf\u00e9\n".encode("latin-1"), "utf-16": text.decode().encode("utf-16"),
               "tabs": text.replace(b"  ", b"\t"), "empty": b"", "top-level-list": b"- model\n- data\n",
               "binary": b"\x00\x01\x02GGUF\xff" * 20}[how]
        (d / "r.yaml").write_bytes(raw)
        return Case("recipe", f"recipe file {how}", ["validate", str(d / "r.yaml")], None if how in ("truncated",) else True)
    labels = []
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["delete", "add", "set", "set"])
        if op == "delete":
            path = rng.choice([p for p in _leaves(recipe) if p[0] in ("model", "data") or len(p) == 1])
            parent = recipe
            for k in path[:-1]:
                parent = parent[k]
            parent.pop(path[-1], None)
            labels.append(f"del {'.'.join(path)}")
        elif op == "add":
            section = rng.choice(list(SCHEMA_KEYS) + ["bogus"])
            key = rng.choice(["rnak", "lr ", "ünï", "x" * 300, "1", "model"])
            recipe.setdefault(section, {}) if isinstance(recipe.get(section, {}), dict) else None
            if isinstance(recipe.get(section), dict):
                recipe[section][key] = odd_value(rng)
            labels.append(f"add {section}.{key[:20]}")
        else:
            section = rng.choice(list(SCHEMA_KEYS))
            key = rng.choice(SCHEMA_KEYS[section])
            value = odd_value(rng)
            if not isinstance(recipe.get(section), dict):
                recipe[section] = {}
            recipe[section][key] = value
            labels.append(f"set {section}.{key}={repr(value)[:30]}")
    # deleting an optional key or setting a value the field takes may leave a good recipe: cannot tell
    return Case("recipe", "; ".join(labels), ["validate", write_recipe(d, recipe)], None)


def gen_override(rng, ws, d) -> Case:
    recipe = write_recipe(d, good_recipe(ws, d))
    overrides = []
    for _ in range(rng.randint(1, 2)):
        section = rng.choice(list(SCHEMA_KEYS))
        key = rng.choice(SCHEMA_KEYS[section] + ["nope"])
        shape = rng.random()
        if shape < 0.1:
            overrides.append(rng.choice([f"{section}.{key}", f"={key}", f"{section}..{key}=1", f"{section}.{key}.sub=1", "=",
                                         f"{section}.{key}=\x00"]))
        else:
            overrides.append(f"{section}.{key}={yaml_text(odd_value(rng))}")
    command = rng.choice(["validate", "validate", "plan"])
    extra = ["--no-time"] if command == "plan" else []
    return Case("override", " ".join(o[:40] for o in overrides), [command, recipe, *overrides, *extra], None)


# ---- data files

def bad_data(rng: random.Random) -> tuple[str, bytes, bool | None]:
    """(label, bytes, bad?) of one data file's content."""
    good = (json.dumps(CHAT) + "\n").encode()
    kinds = {
        "random-bytes": lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))),
        "latin-1": lambda: good + json.dumps({"messages": [{"role": "user", "content": "café"}, {"role": "assistant",
                                              "content": "ok"}]}, ensure_ascii=False).encode("latin-1") + b"\n",
        "utf-16": lambda: (good * 2).decode().encode("utf-16"),
        "nul-bytes": lambda: good + b"\x00" * rng.randrange(1, 50) + b"\n",
        "truncated-json": lambda: (good * 3)[: rng.randrange(1, len(good) * 3 - 2)] if True else b"",
        "row-is-list": lambda: good + b"[1, 2, 3]\n",
        "row-is-number": lambda: good + b"42\n",
        "row-is-string": lambda: good + b'"hello"\n',
        "row-is-null": lambda: good + b"null\n",
        "empty-object": lambda: good + b"{}\n",
        "null-content": lambda: good + json.dumps({"messages": [{"role": "user", "content": None},
                                                              {"role": "assistant", "content": None}]}).encode() + b"\n",
        "null-messages": lambda: good + b'{"messages": null}\n',
        "messages-is-dict": lambda: good + b'{"messages": {"role": "user"}}\n',
        "message-is-string": lambda: good + b'{"messages": ["hi", "hello"]}\n',
        "role-is-list": lambda: good + b'{"messages": [{"role": ["user"], "content": "x"}]}\n',
        "role-is-dict": lambda: good + b'{"messages": [{"role": {"a": 1}, "content": "x"}]}\n',
        "content-is-dict": lambda: good + b'{"messages": [{"role": "user", "content": {"a": 1}}, {"role": "assistant", "content": [1]}]}\n',
        "content-is-number": lambda: good + b'{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": 2.5}]}\n',
        "empty-messages": lambda: good + b'{"messages": []}\n',
        "deep-nesting": lambda: good + b"[" * 100000 + b"]" * 100000 + b"\n",
        "deep-object": lambda: good + b'{"messages": ' + b"[" * 50000 + b"]" * 50000 + b"}\n",
        "only-whitespace": lambda: b"\n \n\t\n",
        "empty-file": lambda: b"",
        "bom": lambda: b"\xef\xbb\xbf" + good,
        "nan-literal": lambda: good + b'{"messages": NaN}\n',
        "wrong-columns": lambda: good + b'{"text": "x", "prompt": "y"}\n',
        "huge-number": lambda: good + b'{"messages": [{"role": "user", "content": 1e999}]}\n',
        "surrogate": lambda: good + b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}\n',
    }
    name = rng.choice(sorted(kinds))
    data = kinds[name]()
    maybe = {"bom", "huge-number", "surrogate"}  # a reader may accept these (after a decision)
    return name, data, None if name in maybe else True


def gen_data(rng, ws, d) -> Case:
    label, raw, bad = bad_data(rng)
    split = rng.choice(["train", "eval", "calib", "mix"])
    suffix = rng.choice([".jsonl", ".jsonl", ".jsonl", ".json", ".csv", ".parquet"]) if split in ("train", "eval") else ".jsonl"
    path = d / f"split{suffix}"
    path.write_bytes(raw)
    if suffix != ".jsonl":
        bad = None  # a jsonl body under another suffix: the reader decides
    if split in ("train", "eval"):
        data = {"train": [str(path)]} if split == "train" else {"eval": str(path)}
        command = rng.choice(["validate", "train"])
        return Case("data", f"{split} {suffix} {label} via {command}", [command, write_recipe(d, good_recipe(ws, d, **data))], bad)
    run = ws.fake_run(d)
    argv = ["export", str(run), "--format", "gptq", "--no-fidelity"]
    argv += ["--calib-source", str(path)] if split == "calib" else ["--calib-mix", str(path), "0.5"]
    return Case("data", f"{split} {label} via export", argv, bad)


# ---- model paths

def _gguf_bytes() -> bytes:
    """A GGUF header (magic, version 3, 0 tensors, 1 key: general.architecture = llama)."""
    key, val = b"general.architecture", b"llama"
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)
            + struct.pack("<Q", len(val)) + val)


def bad_model(rng: random.Random, d: Path, ws) -> tuple[str, str]:
    m = d / "m"
    kinds = ["empty", "spaces", "missing", "empty-dir", "text-file", "gguf-truncated", "gguf-header-only", "gguf-garbage",
             "gguf-empty", "config-no-model-type", "config-garbage", "config-list", "config-unknown-type", "config-only",
             "weights-garbage", "dir-of-gguf-name", "hub-like", "null-byte"]
    kind = rng.choice(kinds)
    if kind in ("empty-dir", "config-no-model-type", "config-garbage", "config-list", "config-unknown-type", "config-only",
                "weights-garbage", "dir-of-gguf-name"):
        m = d / ("m.gguf" if kind == "dir-of-gguf-name" else "m")
        m.mkdir()
    config = json.loads((ws.model / "config.json").read_text())
    if kind == "empty":
        return kind, ""
    if kind == "spaces":
        return kind, "   "
    if kind == "missing":
        return kind, str(d / "nothing")
    if kind == "null-byte":
        return kind, str(d / "a\x00b")
    if kind == "hub-like":
        return kind, rng.choice(["./not/there", "~/nope/x", "a/b/c/d"])
    if kind == "text-file":
        (d / "model.bin").write_text("hello")
        return kind, str(d / "model.bin")
    if kind.startswith("gguf-"):
        raw = {"gguf-truncated": _gguf_bytes()[: rng.randrange(4, 40)], "gguf-header-only": _gguf_bytes(),
               "gguf-garbage": b"GGUF" + bytes(rng.randrange(256) for _ in range(64)), "gguf-empty": b""}[kind]
        (d / "m.gguf").write_bytes(raw)
        return kind, str(d / "m.gguf")
    if kind == "config-no-model-type":
        config.pop("model_type")
        (m / "config.json").write_text(json.dumps(config))
    elif kind == "config-garbage":
        (m / "config.json").write_bytes(bytes(rng.randrange(256) for _ in range(100)))
    elif kind == "config-list":
        (m / "config.json").write_text("[1, 2]")
    elif kind == "config-unknown-type":
        config["model_type"] = rng.choice(["gpt2", "bert", "üñï", "", "llama4"])
        (m / "config.json").write_text(json.dumps(config))
    elif kind == "config-only":
        (m / "config.json").write_text(json.dumps(config))
    elif kind == "weights-garbage":
        shutil.copytree(ws.model, m, dirs_exist_ok=True)
        (m / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    return kind, str(m)


def gen_model(rng, ws, d) -> Case:
    kind, path = bad_model(rng, d, ws)
    command = rng.choice(["validate", "train", "eval", "generate"])
    if command in ("validate", "train"):
        recipe = good_recipe(ws, d)
        recipe["model"]["path"] = path
        argv = [command, write_recipe(d, recipe)]
    else:
        argv = [command, path, *(["--prompt", "hi", "--max-new-tokens", "2"] if command == "generate" else
                                 ["--max-tokens", "64", "--window", "32"])]
    # a model without weights but with a config validates (validate reads no weights)
    maybe = command == "validate" and kind in ("config-only", "weights-garbage")
    return Case("model", f"{kind} via {command}", argv, None if maybe else True)


# ---- numeric and size flags

def bad_number(rng, kind: str) -> str:
    ints = ["-1", "-100", "0", "99999999999999999999999", "1.5", "abc", "", "nan", "1e3", "0x10", "٣"]
    floats = ["-1", "nan", "inf", "-inf", "abc", "", "1e999", "-0.5", "2"]
    sizes = ["abc", "-1GiB", "0", "12 parsecs", "1e999GiB", "nan", "GiB", "", "-5", "1.5.5GB"]
    return rng.choice({"int": ints, "float": floats, "size": sizes}[kind])


FLAGS = {  # command -> [(flag, kind, values that are still good for it)]
    "eval": [("--window", "int", {"1e3"}), ("--stride", "int", set()), ("--max-tokens", "int", {"0"}),
             ("--gen-tokens", "int", {"0"})],
    "generate": [("--max-new-tokens", "int", set()), ("--temperature", "float", {"2"}), ("--seed", "int", {"0"})],
    "export": [("--group-size", "int", set()), ("--damp", "float", set()), ("--calib-samples", "int", set()),
               ("--calib-seq-len", "int", set()), ("--fidelity-tokens", "int", set()), ("--threads", "int", set()),
               ("--calib-mix", "float", set())],
    "report": [("--window", "int", set()), ("--stride", "int", set()), ("--max-tokens", "int", {"0"}),
               ("--gen-tokens", "int", {"0"})],
    "plan": [("--memory", "size", set())],
    "train": [("--memory", "size", set()), ("--nproc", "int", set())],
    "validate": [("--nproc", "int", set())],
    "data inspect": [("-n", "int", set())],
}


def gen_flag(rng, ws, d) -> Case:
    command = rng.choice(sorted(FLAGS))
    flag, kind, good = rng.choice(FLAGS[command])
    value = bad_number(rng, kind)
    if flag == "--nproc" and value == "٣":  # 3 processes: train would relaunch itself under torchrun, replacing this one
        value = "-1"
    recipe = write_recipe(d, good_recipe(ws, d))
    if command in ("eval", "generate"):
        argv = [command, str(ws.model), *(["--prompt", "hi"] if command == "generate" else ["--max-tokens", "64"])]
    elif command in ("export", "report"):
        argv = [command, str(ws.fake_run(d)), *(["--format", "gptq", "--no-fidelity"] if command == "export" else [])]
    else:
        argv = [*command.split(), recipe, *(["--no-time"] if command == "plan" else [])]
    argv += [flag, "x.jsonl", value] if flag == "--calib-mix" else [flag, value]
    # '٣' (an Arabic-Indic digit) is a whole number to Python, as to its reader
    bad = None if value in good or value == "٣" or (kind == "float" and value == "2" and flag != "--damp") else True
    return Case("flag", f"{command} {flag} {value!r}", argv, bad)


# ---- run directories and adapters

def gen_rundir(rng, ws, d) -> Case:
    run = ws.fake_run(d)
    kind = rng.choice(["missing", "a-file", "empty-dir", "recipe-garbage", "recipe-empty", "recipe-binary", "no-adapter",
                       "adapter-a-file", "adapter-config-garbage", "adapter-weights-garbage",
                       "export-meta-garbage", "export-meta-format"])
    if kind == "missing":
        shutil.rmtree(run)
    elif kind == "a-file":
        shutil.rmtree(run)
        run.write_text("x")
    elif kind == "empty-dir":
        shutil.rmtree(run)
        run.mkdir()
    elif kind.startswith("recipe-"):
        (run / "recipe.yaml").write_bytes({"recipe-garbage": b"model: [\n", "recipe-empty": b"",
                                           "recipe-binary": b"\xff\xfe\x00\x01"}[kind])
    elif kind == "no-adapter":
        shutil.rmtree(run / "adapter")
    elif kind == "adapter-a-file":
        shutil.rmtree(run / "adapter")
        (run / "adapter").write_text("x")
    elif kind == "adapter-config-garbage":
        (run / "adapter" / "adapter_config.json").write_text("{trunc")
    elif kind == "adapter-weights-garbage":
        (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    elif kind == "summary-garbage":
        (run / "summary.json").write_text("{trunc")
    elif kind.startswith("export-meta"):
        e = run / "exports" / "merged"
        e.mkdir(parents=True)
        (e / "qtune_export.json").write_text("{trunc" if kind == "export-meta-garbage" else '{"format": "zip"}')
        run = e
    command = rng.choice(["export", "merge", "report", "eval", "generate"])
    argv = [command, str(run)]
    argv += {"export": ["--format", "merged", "--no-fidelity"], "eval": ["--max-tokens", "64"], "generate": ["--prompt", "hi"],
             "report": ["--max-tokens", "64", "--gen-tokens", "0"], "merge": []}[command]
    return Case("rundir", f"{kind} via {command}", argv)


GENERATORS = {"recipe": gen_recipe, "override": gen_override, "data": gen_data, "model": gen_model, "flag": gen_flag,
              "rundir": gen_rundir}


# ---- the workspace, running a case, and the verdict

class Workspace:
    """A tiny model (2 layers, SmolLM2's tokenizer) and a fake finished run's files, built once."""

    def __init__(self, root: Path, model: Path):
        self.root, self.model = root, model
        self.cache = root / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)

    def fake_run(self, d: Path) -> Path:
        """A run directory with the files a finished run has (the adapter's weights are random, rank 4)."""
        run = d / "run"
        if run.exists():
            return run
        shutil.copytree(self.run_template(), run)
        return run

    def run_template(self) -> Path:
        t = self.root / "run-template"
        if t.exists():
            return t
        from peft import get_peft_model

        from qtune.models.load import lora_config
        from qtune.recipe import dump_recipe, load_recipe
        from qtune.recipe.schema import LoraSection
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = self.root / "run-template.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        recipe = good_recipe(self, tmp)
        recipe["train"]["output_dir"] = str(t)
        (tmp / "recipe.yaml").write_text(dump_recipe(load_recipe(write_recipe(tmp, recipe, "src.yaml"))))
        (tmp / "src.yaml").unlink()
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(self.model)), lora_config(LoraSection(rank=4)))
        model.save_pretrained(tmp / "adapter")
        AutoTokenizer.from_pretrained(str(self.model)).save_pretrained(tmp / "adapter")
        (tmp / "summary.json").write_text("{}")
        tmp.rename(t)
        return t


def generate(seed: int, index: int, ws: Workspace, case_dir: Path) -> Case:
    rng = random.Random(f"{seed}:{index}")
    kind = KINDS[index % len(KINDS)]
    case_dir.mkdir(parents=True, exist_ok=True)
    return GENERATORS[kind](rng, ws, case_dir)


def listing(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.stat().st_size}
    # files only: an empty folder left behind (export's exports/) trips no retry
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def run_case(case: Case, case_dir: Path, ws: Workspace) -> Outcome:
    """Run ``qtune ARGV`` in this process (stdout/stderr captured; stdin empty) and judge it."""
    import os
    import sys
    import traceback

    from qtune.cli import main

    watched = [case_dir / "run", ws.cache]
    before = [listing(p) for p in watched]
    out, err = io.StringIO(), io.StringIO()
    old_cache, old_stdin = os.environ.get("QTUNE_CACHE"), sys.stdin
    os.environ["QTUNE_CACHE"] = str(ws.cache)
    sys.stdin = io.StringIO("")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(case.argv))
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 2
            except BaseException:  # what main lets through reaches the user as a traceback
                traceback.print_exc()
                code = None
    finally:
        sys.stdin = old_stdin
        if old_cache is None:
            os.environ.pop("QTUNE_CACHE", None)
        else:
            os.environ["QTUNE_CACHE"] = old_cache
    text = err.getvalue()
    return Outcome(case, code, text, verdict(case, code, text, before, [listing(p) for p in watched]))


def verdict(case: Case, code, err: str, before, after) -> list[str]:
    """What is wrong with how ``case`` ended (empty: it ended well)."""
    problems = []
    errors = [line for line in err.splitlines() if line.startswith(("error:", "qtune: error:")) or ": error: " in line]
    if "Traceback" in err:
        problems.append("traceback")
    if case.expect_error and code != 2:
        problems.append(f"exit status {code}, not 2")
    if code not in (0, 2):
        problems.append(f"exit status {code}")
    if code == 2 and not 1 <= len(errors) <= MAX_ERROR_LINES:
        problems.append(f"{len(errors)} error lines")
    if any(len(line) > 1200 for line in errors):
        problems.append("an error line over 1200 characters")
    (run_before, cache_before), (run_after, cache_after) = before, after
    if code != 0 and run_after != run_before:
        problems.append("the failed command changed the run directory")
    # the cache may gain entries of the tokenized-data cache (keyed by content, written whole); nothing else may change
    gained = set(cache_after or {}) - set(cache_before or {})
    if code != 0 and ({k: (cache_after or {}).get(k) for k in cache_before or {}} != (cache_before or {})
                      or any(not k.startswith("data/") for k in gained)):
        problems.append("the failed command changed the cache beyond adding tokenized-data entries")
    return problems
