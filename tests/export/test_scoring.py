"""Export fidelity: in memory and one layer at a time give the same figures; a stored reference is reused
only for the same inputs, and equals a fresh measurement."""

import json

import pytest
from transformers import AutoTokenizer

from qtune import rundir
from qtune.export.fidelity import FidelitySettings, measure, prepare
from qtune.export.layerwise import MergedWeights, lazy_model, resident_model
from qtune.recipe.schema import ExportSection

# Measured on the tiny run (2 layers, float32, SmolLM2's 49,152-token vocabulary): in memory and one layer
# at a time gave bit-identical figures; batch 4 against batch 1 moved the eval loss by 1.5e-9 relative
# (the order of a batched matmul's sums). The bound leaves three orders of magnitude over that.
REL_BOUND = 1e-6


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def merged(tiny_run):
    weights = MergedWeights(tiny_run, "dequantized", "cpu")
    return weights, AutoTokenizer.from_pretrained(str(tiny_run / rundir.ADAPTER))


def test_in_memory_and_layer_streamed_fidelity_agree(merged):
    weights, tok = merged
    figures = {}
    for name, batch in (("layers", 1), ("memory", 1), ("memory", 4)):
        inputs = prepare(tok, weights.recipe, FidelitySettings(max_tokens=600, examples=8, batch_size=batch).for_device("cpu"))
        build = resident_model if name == "memory" else lazy_model
        figures[name, batch] = measure(build(weights.config, weights, "cpu"), inputs)
    ref = figures["layers", 1]  # the path every export took before
    for where, f in figures.items():
        for k in ("perplexity", "eval_loss"):
            assert _rel(f[k], ref[k]) <= REL_BOUND, f"{where} {k}: {f[k]!r} vs {ref[k]!r} (rel {_rel(f[k], ref[k]):.2e})"
        assert f["text"]["scored_tokens"] == ref["text"]["scored_tokens"] and f["eval_tokens"] == ref["eval_tokens"]


def test_stored_reference_equals_a_fresh_one_and_a_changed_key_measures_again(tiny_run):
    from qtune.export.pipeline import export_device
    from qtune.export.scoring import Scorer

    weights = MergedWeights(tiny_run, "dequantized", "cpu")
    tok = AutoTokenizer.from_pretrained(str(tiny_run / rundir.ADAPTER))
    said = []
    s = ExportSection(base="dequantized", fidelity_tokens=300, fidelity_examples=4)
    first = Scorer(tiny_run, weights, tok, s, export_device("cpu"), said.append, exports=1)
    assert first.plan.mode == "memory"  # a tiny model fits
    fresh = first.reference()
    stored = sorted((tiny_run / rundir.FIDELITY_REFERENCE).glob("merged-*.json"))
    assert len(stored) == 1
    again = Scorer(tiny_run, weights, tok, s, export_device("cpu"), said.append, exports=1)
    assert "reference scores reused for merged" in said[-1] and "expected ~" in said[-1] and "--fidelity-tokens" in said[-1]
    assert again.reference() == json.loads(json.dumps(fresh)) and again.seconds == 0  # read, not measured
    streamed = Scorer(
        tiny_run, weights, tok, s.model_copy(update={"fidelity_mode": "layers"}), export_device("cpu"), said.append, exports=1
    )
    assert streamed.plan.mode == "layers" and streamed.cached["merged"] is not None  # the mode is not in the key
    remeasured = streamed.of(weights)
    for k in ("perplexity", "eval_loss"):
        assert _rel(remeasured[k], fresh[k]) <= REL_BOUND, (k, remeasured[k], fresh[k])
    other = Scorer(tiny_run, weights, tok, s.model_copy(update={"fidelity_tokens": 200}), export_device("cpu"), said.append, exports=1)
    assert other.cached["merged"] is None  # another budget: measured again, stored beside the first
    other.reference()
    assert len(list((tiny_run / rundir.FIDELITY_REFERENCE).glob("merged-*.json"))) == 2


def test_report_takes_the_fine_tuned_row_from_the_stored_trained_scores(tiny_run):
    """The stored ``trained`` scores are what ``qtune report`` measures for the fine-tuned row (the adapter on its
    4-bit base, loaded by bitsandbytes), and the report reuses them only for its own inputs."""
    from qtune.eval.measure import EvalSettings, measure as eval_measure
    from qtune.models.sources import load_source, resolve_source
    from qtune.export.reference import report_figures
    from qtune.export.pipeline import export_device
    from qtune.export.scoring import Scorer

    weights = MergedWeights(tiny_run, "original", "cpu")
    tok = AutoTokenizer.from_pretrained(str(tiny_run / rundir.ADAPTER))
    s = ExportSection(base="original", fidelity_tokens=300, fidelity_examples=0)
    trained = Scorer(tiny_run, weights, tok, s, export_device("cpu"), lambda line: None, exports=0, trained=True).trained()
    settings = EvalSettings(max_tokens=300, gen_tokens=0).for_device("cpu")
    known = report_figures(tiny_run, weights.recipe, settings, "cpu")
    assert known is not None and known["perplexity"]["perplexity"] == trained["perplexity"]
    assert report_figures(tiny_run, weights.recipe, EvalSettings(max_tokens=400, gen_tokens=0).for_device("cpu"), "cpu") is None
    measured = eval_measure(load_source(resolve_source(str(tiny_run)), "cpu"), settings, weights.recipe)
    # Measured: perplexity identical, eval loss 2.4e-8 relative between the bitsandbytes run and the merge.
    for got, want in (
        (known["perplexity"]["perplexity"], measured["perplexity"]["perplexity"]),
        (known["eval"]["eval_loss"], measured["eval"]["eval_loss"]),
    ):
        assert _rel(got, want) <= REL_BOUND, (got, want, _rel(got, want))
    assert known["eval"]["eval_examples"] == measured["eval"]["eval_examples"]
