"""``qtune export`` / ``qtune merge``: from a run directory to ``<run>/exports/<name>/``.

The adapter is merged once (into the base :mod:`qtune.export.merge` describes); every format starts
from that merged model: ``merged`` saves it, ``gptq``/``awq`` calibrate on the recipe's data and
quantize layer by layer, ``gguf`` converts the saved merged checkpoint. Each export directory gets
``qtune_export.json``, ``fidelity.json`` and a README model card (:mod:`qtune.export.card`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from qtune.export import card
from qtune.export.formats import export_name


def _say(console):
    return console.print if console is not None else print


def export_run(run_dir: str | Path, settings, formats: list[str] | None = None, out_root: str | Path | None = None,
               console=None) -> dict[str, Path]:
    """Write every format in ``formats`` (default ``settings.formats``); return their directories."""
    from qtune import rundir
    from qtune.recipe import load_run_recipe
    from qtune.export.fidelity import measure
    from qtune.export.merge import merged_model
    from qtune.registry.families import check_formats
    from qtune.models.load import model_family

    say = _say(console)
    run_dir = Path(run_dir)
    out_root = Path(out_root) if out_root else run_dir / "exports"
    formats = formats or list(settings.formats)
    base = load_run_recipe(run_dir).model
    check_formats(model_family(base), formats)  # before any merging or measuring
    if "gguf" in formats:
        from qtune.export.gguf_export import check_convertible

        check_convertible(base, settings.gguf_types)
    t0 = time.perf_counter()
    model, recipe, tokenizer = merged_model(run_dir, settings.base)
    reference = measure(model, tokenizer, recipe)
    say(f"merged into the {settings.base} base in {time.perf_counter() - t0:.0f}s: eval loss {reference['eval_loss']:.4f}, "
        f"perplexity {reference['perplexity']:.3f}")
    done: dict[str, Path] = {}
    for fmt in formats:
        t = time.perf_counter()
        if fmt == "merged" or (fmt == "gguf" and "merged" not in done):
            done["merged"] = _export_merged(run_dir, model, recipe, tokenizer, settings, reference, out_root / "merged")
        if fmt in ("gptq", "awq"):
            out = out_root / export_name(fmt, settings.bits, settings.group_size)
            done[fmt] = _export_quantized(fmt, copy.deepcopy(model), recipe, tokenizer, settings, reference, out, say)
        elif fmt == "gguf":
            from qtune.export.gguf_export import export_gguf

            done[fmt] = export_gguf(done["merged"], recipe, tokenizer, settings, reference, out_root / "gguf", say)
        say(f"{fmt}: {done[fmt if fmt in done else 'merged']} ({time.perf_counter() - t:.0f}s)")
    return done


def _export_merged(run_dir, model, recipe, tokenizer, settings, reference, out: Path) -> Path:
    from qtune import rundir
    from qtune.export.fidelity import compare, measure
    from qtune.export.merge import save_checkpoint
    from qtune.models.load import load_trained

    save_checkpoint(model, tokenizer, out)
    trained = load_trained(str(run_dir / rundir.ADAPTER), recipe.model, recipe.quant, "cpu")
    trained_fid = measure(trained, tokenizer, recipe)
    del trained
    fidelity = compare(reference, trained_fid)
    fidelity["reference"] = f"the trained adapter on its {recipe.quant.method} base"
    card.write_fidelity(out, fidelity)
    manifest = card.write_manifest(out, "merged", 16, None, settings.base, dtype="float16")
    card.write_card(out, manifest, fidelity, recipe.model.path)
    return out


def _export_quantized(fmt, model, recipe, tokenizer, settings, reference, out: Path, say) -> Path:
    import torch

    from qtune.export.awq import awq_layer_quantizer
    from qtune.export.calibration import calibration_tokens
    from qtune.export.checkpoint import load_dequantized, quantization_config, write_checkpoint
    from qtune.export.fidelity import compare, measure
    from qtune.export.gptq import gptq_layer_quantizer
    from qtune.export.grid import check_shape
    from qtune.export.sequential import decoder_layers, sweep

    s, cal = settings, settings.calibration
    for name, m in decoder_layers(model)[1].named_modules():
        if isinstance(m, torch.nn.Linear):
            check_shape(name, m.in_features, s.bits, s.group_size)
    if fmt == "awq" and s.bits != 4:
        from qtune.errors import QtuneError

        raise QtuneError(f"export.bits: AWQ GEMM checkpoints hold 4-bit weights (given {s.bits}); use gptq for 8 bits")
    calib = calibration_tokens(recipe, tokenizer, cal.samples, cal.seq_len, cal.source, cal.seed)
    if fmt == "gptq":
        quantizer = gptq_layer_quantizer(s.bits, s.group_size, s.sym, s.act_order, s.damp, s.grid_search)
    else:
        quantizer = awq_layer_quantizer(s.bits, s.group_size)
    t = time.perf_counter()
    quantized = sweep(model, calib, 8, quantizer,
                      progress=lambda i, n: say(f"{fmt}: layer {i}/{n}") if i % 10 == 0 or i == n else None)
    quant_s = time.perf_counter() - t
    qcfg = quantization_config(fmt, s.bits, s.group_size, s.sym and fmt == "gptq", s.act_order and fmt == "gptq", s.damp)
    write_checkpoint(model, tokenizer, quantized, qcfg, out)
    fidelity = compare(measure(load_dequantized(out), tokenizer, recipe), reference)
    fidelity["reference"] = "the merged 16-bit model; the export is read back from its files (qtune's dequantized view)"
    card.write_fidelity(out, fidelity)
    manifest = card.write_manifest(
        out, fmt, s.bits, s.group_size, s.base, quantization_config=qcfg, quantize_seconds=round(quant_s, 1),
        calibration={"source": cal.source, "samples": int(calib.shape[0]), "seq_len": cal.seq_len, "seed": cal.seed},
        **({"grid_search": s.grid_search} if fmt == "gptq" else {}),
    )
    card.write_card(out, manifest, fidelity, recipe.model.path)
    return out
