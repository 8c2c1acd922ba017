"""``qtune report`` on a tiny run: every stage measured in its own process, consistent with
``qtune eval``, a merged export matching the fine-tuned model, and the three files written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qtune.eval.measure import EvalSettings
from qtune.report.build import build_report, render_markdown, write_report

SETTINGS = EvalSettings(window=32, stride=16, max_tokens=200, gen_tokens=4)


@pytest.fixture(scope="module")
def merged_export(tiny_run):
    """A minimal merged export per the exports contract: adapter folded into the float32 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qtune.recipe import load_run_recipe

    recipe = load_run_recipe(tiny_run)
    base = AutoModelForCausalLM.from_pretrained(recipe.model.path)
    merged = PeftModel.from_pretrained(base, tiny_run / "adapter").merge_and_unload()
    out = tiny_run / "exports" / "merged"
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(recipe.model.path).save_pretrained(out)
    meta = {
        "format": "merged",
        "bits": 32.0,
        "group_size": None,
        "files": ["model.safetensors"],
        "base": recipe.model.path,
        "created_by": "test",
    }
    (out / "qtune_export.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def report(tiny_run, merged_export):
    rep = build_report(tiny_run, SETTINGS, "cpu", console=lambda s: None)
    write_report(tiny_run, rep)
    return rep


def test_rows_cover_every_stage_with_measured_footprints(report):
    rows = {r["stage"]: r for r in report["rows"]}
    assert list(rows) == ["reference (float32)", "nf4", "int8", "fine-tuned", "merged (merged)"]
    assert rows["reference (float32)"]["bits_per_weight"] == 32
    # NF4 + double quant: 4 + 8/64 + per-layer code books (a 1 KiB nested code) — measured 6.04 on
    # these 64x64..64x128 layers, ~4.13 on SmolLM2's. INT8: 8 + a float32 scale per row (8.45 here).
    assert 4.1 < rows["nf4"]["bits_per_weight"] < rows["int8"]["bits_per_weight"], rows["nf4"]["bits_per_weight"]
    assert 8.0 < rows["int8"]["bits_per_weight"] < 9.0, rows["int8"]["bits_per_weight"]
    assert rows["nf4"]["size_bytes"] < rows["int8"]["size_bytes"] < rows["reference (float32)"]["size_bytes"]
    assert rows["fine-tuned"]["size_bytes"] > rows["reference (float32)"]["size_bytes"]  # base + adapter
    # every stage holds at least its weights in memory right after loading
    for r in rows.values():
        if r["kind"] != "export":
            assert r["load_peak_bytes"] >= 0.9 * r["size_bytes"], (r["stage"], r["load_peak_bytes"], r["size_bytes"])
        assert r["generation"]["new_tokens"] == 4
        assert r["perplexity"]["window"] == 32 and r["perplexity"]["text_tokens"] == 200
        assert math.isfinite(r["eval"]["eval_loss"])


def test_deltas_are_against_reference_and_fine_tuned(report):
    ref, nf4, ft = report["rows"][0], report["rows"][1], report["rows"][3]
    assert ref["deltas"]["ppl_pct_vs_reference"] == 0 and ft["deltas"]["eval_loss_vs_fine-tuned"] == 0
    p, p0 = nf4["perplexity"]["perplexity"], ref["perplexity"]["perplexity"]
    assert nf4["deltas"]["ppl_pct_vs_reference"] == pytest.approx(100 * (p - p0) / p0)
    assert nf4["deltas"]["eval_loss_vs_fine-tuned"] == pytest.approx(nf4["eval"]["eval_loss"] - ft["eval"]["eval_loss"])


def test_merged_export_matches_fine_tuned_and_adapter_changes_the_model(report):
    rows = {r["stage"]: r for r in report["rows"]}
    ft, merged, ref = rows["fine-tuned"], rows["merged (merged)"], rows["reference (float32)"]
    # Merging W + s*B@A in float32 changes logits by float rounding only (measured ~1e-7 relative).
    assert merged["perplexity"]["perplexity"] == pytest.approx(ft["perplexity"]["perplexity"], rel=1e-4)
    assert merged["eval"]["eval_loss"] == pytest.approx(ft["eval"]["eval_loss"], rel=1e-4)
    assert ft["perplexity"]["perplexity"] != ref["perplexity"]["perplexity"]


def test_report_row_equals_eval_in_this_process(report, tiny_run):
    """Same inputs, same numbers: the fine-tuned row (spawned process) vs a fresh in-process eval."""
    from qtune.eval.measure import measure
    from qtune.models.sources import load_source, resolve_source
    from qtune.recipe import load_run_recipe

    loaded = load_source(resolve_source(str(tiny_run)), "cpu")
    again = measure(loaded, EvalSettings(**{**SETTINGS.__dict__, "gen_tokens": 0}).for_device("cpu"), load_run_recipe(tiny_run))
    ft = next(r for r in report["rows"] if r["stage"] == "fine-tuned")
    assert again["perplexity"]["perplexity"] == ft["perplexity"]["perplexity"]
    assert again["eval"]["eval_loss"] == ft["eval"]["eval_loss"]


def test_files_written(report, tiny_run):
    md = (tiny_run / "report.md").read_text()
    assert "| fine-tuned |" in md and "window 32, stride 16" in md
    assert (
        json.loads((tiny_run / "report.json").read_text())["rows"][0]["perplexity"]["text"]["sha256"]
        == report["rows"][0]["perplexity"]["text"]["sha256"]
    )
    png = (tiny_run / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not [p for p in tiny_run.iterdir() if p.name.startswith(".report")]  # no temp files left


def test_a_second_report_reuses_its_rows_and_measures_what_changed(report, tiny_run, merged_export):
    """Rows are stored as they are measured; a report of the same files and settings measures nothing again,
    one whose export file changed measures that row alone, and fresh measures every row."""
    import os

    def figures(rows):
        return [{k: v for k, v in r.items() if k not in ("deltas", "notes", "generation", "load_peak_bytes", "measured_at")} for r in rows]

    said = []
    again = build_report(tiny_run, SETTINGS, "cpu", console=said.append)
    names = [r["stage"] for r in report["rows"]]
    assert again["reused"] == names and not [s for s in said if s.startswith("measuring")], said
    assert figures(again["rows"]) == figures(report["rows"])
    assert "rows kept from an earlier `qtune report`" in render_markdown(again)

    weights = merged_export / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the export rewritten
    said.clear()
    changed = build_report(tiny_run, SETTINGS, "cpu", console=said.append)
    assert [s for s in said if s.startswith("measuring")] == ["measuring merged (merged) ..."], said
    assert changed["reused"] == names[:-1]
    assert figures(changed["rows"]) == figures(report["rows"])  # deterministic: the same file measures the same

    other = build_report(tiny_run, SETTINGS, "cpu", console=said.append, fresh=True)
    assert other["reused"] == []


def test_each_gguf_file_is_its_own_row(tiny_run, tmp_path):
    """A gguf export holding several file types gives one row per file, with that file's bits and size."""
    import shutil

    from qtune.report.build import plan_stages, weight_file_bytes
    from qtune.recipe import load_run_recipe

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("exports"))
    gg = run / "exports" / "gguf"
    gg.mkdir(parents=True)
    (gg / "run-Q8_0.gguf").write_bytes(b"x" * 300)
    (gg / "run-Q4_K_M.gguf").write_bytes(b"x" * 200)
    meta = {"format": "gguf", "bits": 4.9, "bits_per_file": {"run-Q8_0.gguf": 8.5, "run-Q4_K_M.gguf": 4.9}}
    (gg / "qtune_export.json").write_text(json.dumps(meta))
    stages = [s for s in plan_stages(run, load_run_recipe(run), "cpu") if s.kind == "export"]
    assert [(s.name, s.bits) for s in stages] == [("run-Q4_K_M (gguf)", 4.9), ("run-Q8_0 (gguf)", 8.5)]
    assert [weight_file_bytes(Path(s.path)) for s in stages] == [200, 300]
