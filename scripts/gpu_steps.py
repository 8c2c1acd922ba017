"""The steps of scripts/gpu_all.py, in priority order: what each runs, its time budget and why, how its figures are read.

Budgets are caps, not reservations: a step that ends early leaves its time to the next. Each budget's evidence is a
figure measured on a GPU (docs/kernels.md, "Measured on one H100": torch 2.11, CUDA 13.0, 2026-11-27) or arithmetic
from one; "est." marks what no GPU has timed yet. Tiny budgets were measured on the 2-core CPU machine (``--tiny``).

Figures reach the summary three ways: a line ``RESULT {json}`` printed by a step's script (scripts written for this),
the ``summary.json`` of a qtune run directory (``Command.run_dir``), or a parser over an existing benchmark's printout
(``Command.parse``: bench_train_step.py's mode and ratio lines, the kernel benchmarks' "best" lines).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SUMMARY_KEYS = ("device", "world_size", "distributed", "steps", "eval_loss_before", "eval_loss_after", "tokens_per_s",
                "peak_memory_bytes", "kernels")


@dataclass
class Context:
    tiny: bool
    python: str
    model: Path  # the tiny model with SmolLM2's tokenizer (.gpu/tiny)
    work: Path
    logs: Path


@dataclass
class Command:
    name: str
    argv: list[str]
    expect: str = "ok"  # or "refused": the command must fail with an ``error:`` line
    parse: str = "result"  # result | bench | best | plan
    run_dir: Path | None = None
    env: dict = field(default_factory=dict)


@dataclass
class Step:
    name: str
    what: str
    budget_s: int
    min_s: int
    evidence: str
    commands: list[Command]
    tiny_skip: str = ""  # why ``--tiny`` skips this step (it is GPU-only), or empty


def steps(c: Context) -> list[Step]:
    py, w, tiny = c.python, c.work, c.tiny
    cli = [py, "-m", "qtune.cli"]
    bench = [py, "scripts/bench_train_step.py", "--modes", "bitsandbytes", "triton", "blocks", "fast"]
    bench += (["--size", "tiny", "--micro", "2x32", "--warmup", "1", "--steps", "2", "--repeats", "1"] if tiny else
              ["--micro", "4x1024", "--warmup", "2", "--steps", "4", "--repeats", "2"])
    shaped = w / "shaped"
    long_data = w / "long"
    plan = [*cli, "plan", "recipes/llama7b-nf4.yaml", f"model.path={shaped}", f"data.train=[{long_data}/train.jsonl]",
            f"data.eval={long_data}/eval.jsonl", "tracking.backend=none"]
    plan += (["train.device=cpu", "quant.compute_dtype=float32", "model.dtype=float32", "train.optimizer=adamw_torch",
              "data.max_length=64", "--no-time"] if tiny else []) + ["--measure", "--json"]
    tiny_run = ["recipes/smollm2-135m-nf4.yaml", f"model.path={c.model}", "tracking.backend=none", "train.lr=2e-3"]
    tiny_run += (["train.device=cpu", "train.max_steps=2", "train.eval_steps=2", "data.max_examples=16",
                  "data.max_length=32", "data.max_eval_examples=4"] if tiny else
                 ["train.device=cuda", "quant.compute_dtype=bfloat16", "train.max_steps=20", "train.eval_steps=20",
                  "data.max_examples=320", "data.max_eval_examples=16"])
    dist = [*tiny_run, "distributed.backend=gloo", "train.micro_batch_size=4"]
    fsdp = ["distributed.strategy=fsdp", f"quant.quant_storage={'float32' if tiny else 'bfloat16'}"]
    e2e = w / "e2e"
    kernels = [[py, "scripts/bench_dequant.py"] + (["--shapes", "256x256"] if tiny else []),
               [py, "scripts/bench_gemv.py"] + (["--shapes", "256x256", "--cold-bytes", str(2**20)] if tiny else [])]
    return [
        Step(
            "env",
            "versions; bitsandbytes 4-bit round trip on the device; carried wheels vs this Python and CUDA",
            30,
            10,
            "imports of torch, transformers, peft, bitsandbytes, liger (~10 s est.) and one round trip",
            [Command("env", [py, "scripts/gpu_env_check.py", *(["--tiny"] if tiny else []), "--model", str(c.model)])],
        ),
        Step(
            "train_step_7b",
            "QLoRA step at the 7B shape, 4 x 1024: each mode beside HF peft + bitsandbytes, one process",
            140,
            90,
            "7B build ~60 s (est.); a step at 4 x 1024 is 4096 / 5601 tok/s = 0.73 s (H100, measured), "
            "4 modes x 2 repeats x 6 steps = 35 s; Triton/liger JIT ~20 s (est.); 5 forwards for saved bytes",
            [Command("bench", bench, parse="bench")],
        ),
        Step(
            "plan_7b",
            "qtune plan --measure at the recipe's shape (llama7b-nf4, 4 x 1024 rows) on a random 7B",
            150,
            100,
            "13.5 GB random bf16 checkpoint written ~40 s (est.); load + NF4 quantize ~60 s (est.); two "
            "steps 2 x 0.73 s (measured rate) + the plan's probe ~5 s",
            [
                Command(
                    "make_model",
                    [
                        py,
                        "scripts/make_shaped_model.py",
                        str(shaped),
                        "--preset",
                        "tiny" if tiny else "llama2-7b",
                        "--weights",
                        "--tokenizer-from",
                        str(c.model),
                        "--vocab",
                        "49152",
                    ],
                ),
                Command(
                    "make_data",
                    [py, "scripts/make_long_data.py", str(long_data), "--tokenizer", str(c.model), "--tokens", "64" if tiny else "1024"],
                ),
                Command("plan", plan, parse="plan"),
            ],
        ),
        Step(
            "export_7b",
            "GPTQ and AWQ per decoder layer at the 7B width, 128 x 2048 calibration; 2 layers, extrapolated to 32",
            70,
            30,
            "per layer ~5 s GPTQ (17.3k column updates ~60 µs each) and ~3 s AWQ (est.); 4 GiB of float32 layer inputs captured once",
            [
                Command(
                    "export",
                    [py, "scripts/bench_export_layers.py", "--layers", "2"]
                    + (
                        ["--width", "tiny", "--samples", "4", "--seq", "64"]
                        if tiny
                        else ["--width", "7b", "--samples", "128", "--seq", "2048"]
                    ),
                )
            ],
        ),
        Step(
            "distributed",
            "qtune train with 2 ranks (gloo; on one GPU both ranks share it): DDP, then FSDP-QLoRA",
            60,
            25,
            "two torchrun launches of the tiny model, 20 steps: ~10 s start + ~10 s training each (est.; "
            "60 tiny steps ran in ~10 s at 6646 tok/s on the H100)",
            [
                Command(
                    "ddp2",
                    [*cli, "train", "--overwrite", "--nproc", "2", *dist, f"train.output_dir={w}/ddp2"],
                    run_dir=w / "ddp2",
                    env={"OMP_NUM_THREADS": "1"},
                ),
                Command(
                    "fsdp2",
                    [*cli, "train", "--overwrite", "--nproc", "2", *dist, *fsdp, f"train.output_dir={w}/fsdp2"],
                    expect="refused" if tiny else "ok",
                    run_dir=None if tiny else w / "fsdp2",
                    env={"OMP_NUM_THREADS": "1"},
                ),
            ],
        ),
        Step(
            "train_e2e",
            "qtune train end to end on the tiny model through each mode (one process)",
            60,
            20,
            "6 modes x 20 steps of the tiny model (~1 s each at the measured 6646 tok/s) + model loads, "
            "Triton and compile warm-up ~30 s (est.)",
            [
                Command(
                    "modes",
                    [
                        py,
                        "scripts/train_each_mode.py",
                        str(e2e),
                        *(["--tiny"] if tiny else []),
                        "--",
                        *tiny_run,
                        f"train.micro_batch_size={4 if tiny else 8}",
                    ],
                )
            ],
        ),
        Step(
            "generate_eval",
            "qtune generate and qtune eval on the trained tiny run, on the device",
            25,
            10,
            "two CLI calls in one process on the tiny model (~10 s imports, est.)",
            [
                Command(
                    "use",
                    [
                        py,
                        "scripts/cli_timed.py",
                        f"generate {e2e}/bitsandbytes --prompt 'What is AI?' --max-new-tokens 16 --device {'cpu' if tiny else 'cuda'}",
                        f"eval {e2e}/bitsandbytes --max-tokens 512 --device {'cpu' if tiny else 'cuda'}",
                    ],
                )
            ],
        ),
        Step(
            "kernels",
            "dequant and 4-bit GEMV micro-benchmarks (GEMV cold L2: rotating 512 MiB of copies)",
            40,
            15,
            "measured before: 3 dequant shapes x 5 configs and 3 GEMV shapes x 8 implementations, ~25 s (est.)",
            [Command("dequant", kernels[0], parse="best"), Command("gemv", kernels[1], parse="best")],
        ),
        Step(
            "train_step_compiled",
            "the baseline with each decoder layer torch.compile-d, beside the baseline",
            100,
            90,
            "7B build ~60 s (est.) + one compile of a decoder layer ~20 s (est.) + 2 x 6 steps x 0.73 s",
            [
                Command(
                    "bench",
                    [py, "scripts/bench_train_step.py", "--modes", "compiled", "--repeats", "1"]
                    + (["--size", "tiny", "--micro", "2x32", "--warmup", "1", "--steps", "1"] if tiny else ["--micro", "4x1024"]),
                    parse="bench",
                )
            ],
            tiny_skip="inductor compiles C++ for the CPU (minutes on 2 cores); tests/train/test_compile.py covers the logic",
        ),
        Step(
            "profile",
            "where a 7B step's time and memory go, bitsandbytes and blocks",
            90,
            80,
            "7B build ~60 s (est.) + 2 modes x (3 profiled + 6 timed steps) x 0.73 s",
            [
                Command(
                    "profile",
                    [py, "scripts/profile_train_step.py", "--kernels", "bitsandbytes", "blocks", "--out", str(c.logs / "profile.txt")]
                    + (["--size", "tiny", "--batch", "2", "--seq", "32", "--steps", "1"] if tiny else []),
                    parse="none",
                )
            ],
        ),
    ]


RESULT = re.compile(r"^RESULT (\{.*\})\s*$", re.M)
MODE_LINE = re.compile(r"^\s*(\w+): +([\d.]+) tokens/s, (.+?) ([\d.]+) GiB, losses (\[.*?\])", re.M)
RATIO_LINE = re.compile(r"^ratio (\w+)/bitsandbytes at (\d+x\d+): ([\d.]+)x tokens/s, ([\d.]+)x .*?; losses (.*)$", re.M)
BEST_LINE = re.compile(r"^\s*(\S+)?\s*best qtune: (.*)$", re.M)


def results_of(text: str, cmd: Command) -> list[dict]:
    """The figures a command's output (``text``) or its run directory hold, each a flat dict."""
    if cmd.run_dir is not None:
        path = Path(cmd.run_dir) / "summary.json"
        if path.is_file():
            s = json.loads(path.read_text())
            return [{k: s[k] for k in SUMMARY_KEYS if k in s}]
        return []
    if cmd.parse == "result":
        return [json.loads(m) for m in RESULT.findall(text)]
    if cmd.parse == "plan":
        start = text.find("{")
        try:
            p = json.loads(text[start : text.rfind("}") + 1]) if start >= 0 else {}
        except json.JSONDecodeError:
            return []
        m = p.get("measured") or {}
        return [
            {
                "batch": m.get("batch"),
                "seq": m.get("seq"),
                "planned_peak_bytes": m.get("planned_peak_bytes"),
                "peak_bytes": m.get("peak_bytes"),
                "plan/measured": m.get("ratio"),
                "step_s": m.get("step_s"),
                "planned_step_s": (p.get("time") or {}).get("micro_step_s"),
            }
        ]
    if cmd.parse == "bench":
        out = [
            {"mode": mode, "tokens_per_s": float(tps), "memory": f"{kind} {gib} GiB", "losses": json.loads(losses)}
            for mode, tps, kind, gib, losses in MODE_LINE.findall(text)
        ]
        out += [
            {"ratio": f"{mode}/bitsandbytes", "micro": micro, "tokens_per_s_x": float(t), "memory_x": float(m), "losses": eq}
            for mode, micro, t, m, eq in RATIO_LINE.findall(text)
        ]
        return out
    if cmd.parse == "best":
        return [{"shape": shape or "", "best": best} for shape, best in BEST_LINE.findall(text)]
    return []


def outcome(rc: int | None, expect: str, text: str) -> str:
    """``ok``, or what went wrong, in a few words."""
    if rc is None:
        return "timed out"
    if expect == "refused":
        return "ok" if rc != 0 and "error:" in text else f"expected a one-line refusal, got exit {rc}"
    if rc == 0:
        return "ok"
    return f"exit {rc}: " + (last_error(text) or "no error line")


def last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines or [""])[-1][:300]


def first_error(log: Path, status: str, limit_s: int) -> str:
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("error:"):
            return line
    if status == "timeout":
        return f"error: the environment check took more than its {limit_s} s (imports stuck?); see {log}"
    return f"error: the environment check failed without an error line; see {log}"


def brief(r: dict) -> str:
    """One result in a table cell."""
    if "ratio" in r:
        return f"{r['ratio']} {r['micro']}: {r['tokens_per_s_x']}x tok/s, {r['memory_x']}x mem, losses {r['losses']}"
    if "mode" in r and "tokens_per_s" in r:
        return f"{r['mode']} {r['tokens_per_s']:.0f} tok/s"
    if "plan/measured" in r and r["plan/measured"] is not None:
        return (
            f"plan/measured {r['plan/measured']:.2f} at {r['batch']}x{r['seq']} (peak {r['peak_bytes'] / 2**30:.2f} "
            f"GiB), step {r['step_s']:.2f} s vs plan {r['planned_step_s'] or '-'}"
        )
    return ", ".join(f"{k} {_short(v)}" for k, v in r.items() if k not in ("command", "versions"))


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v[:4]) + (", …]" if len(v) > 4 else "]")
    return str(v)
