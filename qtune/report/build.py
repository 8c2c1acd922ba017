"""``qtune report RUN_DIR``: the fidelity table of one fine-tune, as report.md, report.json, report.png.

One row per stage that exists, in this order:

- ``reference`` — the base unquantized: bf16 on a GPU; on CPU the checkpoint's stored float dtype
  (named as such, e.g. ``reference (float32)``), since CPU bf16 matmuls are slow and not what the
  table is for;
- ``nf4`` / ``int8`` — the base quantized at load time by bitsandbytes (NF4 as the recipe sets it
  when it trains on NF4);
- ``fine-tuned`` — the base as the run's recipe loads it, plus the run's adapter;
- one row per export under ``<run>/exports/*/qtune_export.json`` (merged, gptq, awq, in that order), and one per
  ``.gguf`` file of a gguf export (each file type its own row).

Each row: bits per weight of the linears, size (bytes as saved), peak memory to load, greedy
tokens/s at batch 1, perplexity on the eval text, eval loss on the recipe's eval split, and the
change of the last two against ``reference`` and ``fine-tuned``:
``Δ% = 100 * (x - x_ref) / x_ref`` for perplexity, ``Δ = x - x_ref`` (nats) for eval loss.

Every stage is loaded and measured in its own fresh process (spawned), so peak load memory is
that stage's alone and nothing (caches, compiled kernels, memory) leaks from one row into the next.

A row is written to ``<run>/report-rows/`` as soon as it is measured, keyed by what it was measured
from: the stage, the settings, the device, qtune's version and the name, size and modification time of
every file the stage loads. A later ``qtune report`` of the same run reuses a row whose key is
unchanged (on a 0.5 B model a row costs 10-30 CPU minutes) and measures the rest, so an interrupted
report loses only the row it was in; ``--fresh`` measures every row again.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qtune import __version__, rundir
from qtune.errors import QtuneError
from qtune.eval.measure import EvalSettings
from qtune.registry.exports import EXPORT_FORMATS
from qtune.models.packaged import PACKAGED_MODELS
from qtune.noise import quiet
from qtune.recipe import load_run_recipe
from qtune.rundir import REPORT_JSON, REPORT_MD, REPORT_PNG, REPORT_ROWS


@dataclass
class Stage:
    name: str
    kind: str  # "base" | "run" | "export"
    quant: dict = field(default_factory=dict)  # QuantSection fields, for "base"
    dtype: str = "auto"  # ModelSection.dtype, for "base"
    path: str | None = None  # run or export directory
    bits: float | None = None  # declared bits per weight (exports)


def plan_stages(run: Path, recipe, device: str) -> list[Stage]:
    """The rows of the report for ``run`` on ``device`` (see the module docstring)."""
    from qtune.models.sources import export_dirs, read_export_meta, stored_float_dtype

    ref_dtype = "bfloat16" if device == "cuda" else stored_float_dtype(recipe.model.path)
    compute = recipe.quant.compute_dtype if device == "cuda" else ref_dtype
    nf4 = recipe.quant.model_dump() if recipe.quant.method == "nf4" else {"method": "nf4", "double_quant": True, "compute_dtype": compute}
    stages = [
        Stage(f"reference ({ref_dtype})", "base", {"method": "none"}, ref_dtype),
        Stage("nf4", "base", nf4),
        Stage("int8", "base", {"method": "int8", "compute_dtype": compute}),
        Stage("fine-tuned", "run", path=str(run)),
    ]
    exports = [(d, read_export_meta(d)) for d in export_dirs(run)]
    exports.sort(key=lambda e: EXPORT_FORMATS.index(e[1]["format"]))  # merged, gptq, awq, gguf; by name within
    for d, meta in exports:
        if meta["format"] == "gguf":  # one row per file type (Q8_0, Q4_K_M, ...)
            for f in sorted(d.glob("*.gguf")):
                bits = meta.get("bits_per_file", {}).get(f.name, meta.get("bits"))
                stages.append(Stage(f"{f.stem} (gguf)", "export", path=str(f), bits=bits))
        else:
            stages.append(Stage(f"{d.name} ({meta['format']})", "export", path=str(d), bits=meta.get("bits")))
    return stages


def load_stage(stage: Stage, recipe, device: str):
    from qtune.models.sources import load_base, load_source, resolve_source
    from qtune.recipe.schema import ModelSection, QuantSection

    if stage.kind == "base":
        return load_base(ModelSection(**{**recipe.model.model_dump(), "dtype": stage.dtype}), QuantSection(**stage.quant), device)
    return load_source(resolve_source(stage.path), device)


WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def weight_file_bytes(path: Path) -> int:
    """Bytes of an export's weight files (tokenizer, card and metadata are not counted); ``path`` a directory or one file."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files if f.name.endswith(WEIGHT_SUFFIXES))


def _import_loaders(model_path: str) -> None:
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from qtune.models.load import resolve_model_path

    try:
        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(resolve_model_path(model_path)))]
    except (OSError, KeyError, ValueError):
        pass  # an unknown architecture is imported during the load instead, and counted there


def measure_stage(stage: Stage, run_dir: str, settings: EvalSettings, device: str, known: dict | None = None) -> dict:
    """Load one stage and measure it (runs in a fresh process, see :func:`build_report`); ``known``: its perplexity
    and eval loss stored by an export (:func:`qtune.export.reference.report_figures`), only the rest measured."""
    from transformers import set_seed

    from qtune.eval.footprint import LoadMemory, linear_bits_per_weight, state_dict_bytes
    from qtune.eval.measure import measure

    run = Path(run_dir)
    recipe = load_run_recipe(run)
    set_seed(settings.seed)
    # bitsandbytes logs on every INT8 matmul that float32 inputs are cast to float16; said once in the notes.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(
        lambda record: not str(record.msg).startswith("MatMul8bitLt: inputs will be cast"))
    _import_loaders(recipe.model.path)  # so the load memory below is the model's, not library code
    with LoadMemory(device) as mem:
        loaded = load_stage(stage, recipe, device)
        mem.holds(loaded.model)
    row = {"stage": stage.name, "kind": stage.kind, "compute_dtype": loaded.dtype, "notes": loaded.notes}
    if stage.quant.get("method") == "int8":
        row["notes"] = row["notes"] + ["bitsandbytes LLM.int8: float32 activations are cast to float16 for the int8 matmul"]
    if stage.kind == "export":
        row["bits_per_weight"] = stage.bits
        row["size_bytes"] = weight_file_bytes(Path(stage.path))
        row["size_kind"] = "weight files on disk"
    else:
        row["bits_per_weight"] = linear_bits_per_weight(loaded.model)
        row["size_bytes"] = state_dict_bytes(loaded.model)
        row["size_kind"] = "state dict bytes as saved (base + adapter)" if stage.kind == "run" else "state dict bytes as saved"
    row["load_peak_bytes"] = mem.bytes
    row["load_peak_kind"] = mem.kind
    if known is None:
        row.update(measure(loaded, settings, recipe))
        return row
    row.update({**known, "notes": row["notes"] + known["notes"]})
    if settings.gen_tokens:
        from qtune.eval.generate import generation_speed

        row["generation"] = generation_speed(loaded.model, loaded.tokenizer, settings.gen_tokens)
    return row


def _files_under(roots: list[Path]) -> list[Path]:
    """Every file of ``roots`` (each a file or a folder), sorted."""
    return sorted(f for root in roots for f in ([root] if root.is_file() else root.rglob("*")) if f.is_file())


def stage_files(stage: Stage, recipe) -> list[Path]:
    """The files a stage's measurement reads its weights from (their changes invalidate a stored row)."""
    from qtune.models.load import resolve_model_path

    if stage.kind == "base":
        roots = [Path(resolve_model_path(recipe.model.path))]
    elif stage.kind == "run":
        roots = [Path(resolve_model_path(recipe.model.path)), Path(stage.path) / rundir.ADAPTER]
    else:
        roots = [Path(stage.path)]
    return _files_under(roots)


def row_key(stage: Stage, recipe, settings: EvalSettings, device: str) -> dict:
    """What a row was measured from: equal keys, equal figures (tokens/s aside, which is wall-clock)."""
    from qtune.eval.text import DEFAULT_TEXT

    texts = [Path(t) for t in settings.text] or [DEFAULT_TEXT]
    sources = [*recipe.data.train, *([recipe.data.eval] if recipe.data.eval else [])]
    data = [Path(src.path) for src in sources if not src.is_hub and Path(src.path).exists()]
    files = []
    for f in stage_files(stage, recipe) + _files_under(texts + data):
        st = f.stat()
        files.append([str(f), st.st_size, st.st_mtime_ns])
    return {"stage": asdict(stage), "settings": asdict(settings), "device": device, "qtune": __version__,
            "data": recipe.data.model_dump(mode="json"), "files": files}


def _row_file(run: Path, stage: Stage) -> Path:
    import hashlib

    return run / REPORT_ROWS / f"{hashlib.sha256(stage.name.encode()).hexdigest()[:16]}.json"


def stored_row(run: Path, stage: Stage, key: dict) -> dict | None:
    """The row measured earlier from exactly ``key``, or None."""
    path = _row_file(run, stage)
    if not path.is_file():
        return None
    try:
        kept = rundir.read_json(path)
    except QtuneError:  # damaged: the row is measured again and written whole
        return None
    if not isinstance(kept, dict):
        return None
    return kept.get("row") if kept.get("key") == json.loads(json.dumps(key)) else None


def store_row(run: Path, stage: Stage, key: dict, row: dict) -> None:
    (run / REPORT_ROWS).mkdir(exist_ok=True)
    rundir.write_json(_row_file(run, stage), {"key": key, "row": row})


def run_isolated(fn, *args):
    """``fn(*args)`` in a freshly spawned process; its result (or its exception) comes back. The child drops the
    same library noise the CLI does (:func:`qtune.noise.quiet`): a spawned process starts without the parent's
    logging filters, and printed bitsandbytes' optional-kernel warning once per report row."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=quiet) as pool:
        return pool.submit(fn, *args).result()


def add_deltas(rows: list[dict]) -> None:
    """Perplexity Δ% and eval-loss Δ (nats) of each row against ``reference`` and ``fine-tuned``."""

    def value(row, key):
        return row.get("perplexity", {}).get("perplexity") if key == "ppl" else row.get("eval", {}).get("eval_loss")

    anchors = {"reference": rows[0] if rows and rows[0]["stage"].startswith("reference") else None,
               "fine-tuned": next((r for r in rows if r["stage"] == "fine-tuned"), None)}
    for row in rows:
        deltas = {}
        for anchor, a in anchors.items():
            if a is None:
                continue
            p, p0 = value(row, "ppl"), value(a, "ppl")
            l, l0 = value(row, "loss"), value(a, "loss")
            deltas[f"ppl_pct_vs_{anchor}"] = 100 * (p - p0) / p0 if p is not None and p0 else None
            deltas[f"eval_loss_vs_{anchor}"] = l - l0 if l is not None and l0 is not None else None
        row["deltas"] = deltas


def build_report(run: Path, settings: EvalSettings, device: str, console=print, fresh: bool = False) -> dict:
    """Measure every stage of ``run`` (each in its own process) and return the report dict.

    Rows stored by an earlier report from the same inputs are reused unless ``fresh`` (module docstring)."""
    import time

    from qtune.device import resolve_device

    recipe = load_run_recipe(run)
    device = resolve_device(device)
    settings = settings.for_device(device)
    rows, skipped, reused = [], [], []
    for stage in plan_stages(run, recipe, device):
        key = row_key(stage, recipe, settings, device)
        row = None if fresh else stored_row(run, stage, key)
        if row is not None:
            console(f"{stage.name}: reused the row measured {row['measured_at']} from the same files and settings "
                    f"(--fresh measures it again)")
            console(f"  {format_row_brief(row)}")
            rows.append(row)
            reused.append(stage.name)
            continue
        console(f"measuring {stage.name} ...")
        from qtune.export.reference import report_figures

        known = report_figures(run, recipe, settings, device) if stage.kind == "run" else None
        try:
            row = run_isolated(measure_stage, stage, str(run.resolve()), settings, device, known)
        except QtuneError as e:  # e.g. a GPTQ export without its backend: the other rows still count
            console(f"  skipped: {e}")
            skipped.append({"stage": stage.name, "error": str(e)})
            continue
        row["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        store_row(run, stage, key, row)
        console(f"  {format_row_brief(row)}")
        rows.append(row)
    add_deltas(rows)
    if recipe.model.path in PACKAGED_MODELS and rows and rows[0]["stage"].startswith("reference"):
        spec = PACKAGED_MODELS[recipe.model.path]
        rows[0]["notes"] = rows[0]["notes"] + [
            f"the packaged base ships as {spec.weights} ({spec.gguf_name}); its reference is that GGUF dequantized to float32, "
            "so every row here re-quantizes weights that were already 4-bit, not the original 16-bit release"
        ]
    return {
        "skipped": skipped,
        "reused": reused,
        "run": str(run.resolve()),
        "base": recipe.model.path,
        "device": device,
        "settings": asdict(settings),
        "rows": rows,
        "created_by": f"qtune {__version__}",
    }


def format_row_brief(row: dict) -> str:
    ev = row.get("eval", {}).get("eval_loss")
    return f"ppl {row['perplexity']['perplexity']:.3f}" + (f", eval loss {ev:.4f}" if ev is not None else "")


def _fmt(x, spec: str, empty: str = "—") -> str:
    return empty if x is None else format(x, spec)


def _pct(x) -> str:
    return "—" if x is None else f"{x:+.2f}%"


def render_markdown(report: dict) -> str:
    rows = report["rows"]
    p0 = rows[0]["perplexity"]
    head = [
        f"# Fidelity report: {Path(report['run']).name}",
        "",
        f"Base `{report['base']}` on **{report['device']}**. Perplexity: {p0['text_tokens']} tokens of "
        f"{len(p0['text']['files'])} file(s) (sha256 `{p0['text']['sha256'][:16]}…`"
        f"{', capped' if p0['text_truncated'] else ''}), window {p0['window']}, stride {p0['stride']} "
        f"({p0['scored_tokens']} tokens scored). Eval loss: token-weighted NLL (nats) on `{rows[0].get('eval', {}).get('eval_data')}`.",
        "Δ columns: perplexity change in % and eval-loss change in nats, against the reference and the fine-tuned model.",
        "",
        "| stage | bits/weight | size (MB) | load peak (MB) | tok/s (batch 1) | perplexity | Δppl vs ref | "
        "Δppl vs FT | eval loss | Δloss vs ref | Δloss vs FT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = []
    for r in rows:
        d = r["deltas"]
        lines.append(
            f"| {r['stage']} | {_fmt(r['bits_per_weight'], '.2f')} | {r['size_bytes'] / 1e6:.1f} | {r['load_peak_bytes'] / 1e6:.0f} | "
            f"{_fmt(r.get('generation', {}).get('tokens_per_s'), '.1f')} | {r['perplexity']['perplexity']:.3f} | "
            f"{_pct(d.get('ppl_pct_vs_reference'))} | {_pct(d.get('ppl_pct_vs_fine-tuned'))} | "
            f"{_fmt(r.get('eval', {}).get('eval_loss'), '.4f')} | {_fmt(d.get('eval_loss_vs_reference'), '+.4f')} | "
            f"{_fmt(d.get('eval_loss_vs_fine-tuned'), '+.4f')} |"
        )
    notes = ["", "Notes:", f"- size: {', '.join(sorted({r['stage'] + ': ' + r['size_kind'] for r in rows}))}.",
             f"- load peak: {rows[0]['load_peak_kind'].replace('_', ' ')}, each stage loaded in a fresh process. A float "
             "checkpoint loaded in its stored dtype is memory-mapped, so on CPU its pages count only once touched (the "
             "reference row can read below its size); quantized rows materialize their weights while loading.",
             "- tok/s: greedy decoding at batch 1, EOS suppressed, after a warm-up; wall-clock, so it varies with machine load "
             "(every other number is deterministic)."]
    notes += [f"- {r['stage']}: {n}" for r in rows for n in r.get("notes", [])]
    notes += [f"- {r['stage']}: not measured — {r['error']}" for r in report.get("skipped", [])]
    if report.get("reused"):
        notes.append(f"- rows kept from an earlier `qtune report` of the same files and settings (tok/s as measured then): "
                     f"{', '.join(report['reused'])}")
    return "\n".join(head + lines + notes) + "\n"


def write_report(run: Path, report: dict) -> list[Path]:
    """Write report.md, report.json and report.png into ``run``, each atomically."""
    from qtune.report.chart import plot_report

    rundir.write_json(run / REPORT_JSON, report)
    rundir.write_text(run / REPORT_MD, render_markdown(report))
    with rundir.atomic_path(run / REPORT_PNG) as tmp:
        plot_report(report, tmp)
    return [run / REPORT_MD, run / REPORT_JSON, run / REPORT_PNG]
