"""``qtune export`` / ``qtune merge``: from a run directory to ``<run>/exports/<name>/``.

One streamed pass (:mod:`qtune.export.stream`) reads the base's shards lazily, merges each decoder
layer's LoRA on the export device (``export.device``: the GPU when there is one) and hands the
merged layer to every requested format: ``merged`` writes it in float16, ``gptq``/``awq`` quantize
it with their own calibration activations. ``gguf`` then converts the merged shards. Fidelity
(:mod:`qtune.export.fidelity`) runs on the same device, each model held in memory when the planner
says it fits and one layer at a time otherwise, the merged reference's scores reused from earlier
exports of the run (:mod:`qtune.export.scoring`). Every format is written into a temporary
folder; all are renamed into place only when every one is complete, so an interrupted export
leaves none half-written. Each export directory gets ``qtune_export.json``, ``fidelity.json`` and a
README model card (:mod:`qtune.export.card`).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from qtune import rundir
from qtune.errors import QtuneError
from qtune.export import card
from qtune.export.threads import cpu_threads
from qtune.registry.exports import export_name


class ExportInterrupted(QtuneError):
    exit_code = 130


@contextmanager
def sigterm_interrupts():
    """SIGTERM (a job scheduler's stop, ``kill``) unwinds like Ctrl-C: the temporary folders are removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(console):
    return console.print if console is not None else print


def export_device(choice: str):
    import torch

    from qtune.device import resolve_device

    return torch.device(resolve_device(choice, "export.device"))


@contextmanager
def _layer_bar(console, what: str, on_layer=None):
    """``progress(i, n)`` for the stream: a rich bar (elapsed, ETA) when there is a console."""
    if console is None:
        yield on_layer or (lambda i, n: None)
        return
    if not console.is_terminal:  # a log file: a line every tenth of the layers instead of a live bar
        t0 = time.perf_counter()

        def line(i, n):
            if i == n or i % max(1, n // 10) == 0:
                el = time.perf_counter() - t0
                console.print(f"{what}: layer {i}/{n}, {el:.0f}s elapsed, ETA {el / i * (n - i):.0f}s")
            if on_layer is not None:
                on_layer(i, n)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("layers"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(what, total=None)

        def progress(i, n):
            bar.update(task, completed=i, total=n)
            if on_layer is not None:
                on_layer(i, n)

        yield progress


def export_run(run_dir: str | Path, settings, formats: list[str] | None = None, out_root: str | Path | None = None,
               console=None, on_layer=None) -> dict[str, Path]:
    """Write every format in ``formats`` (default ``settings.formats``); return their directories.

    ``on_layer(i, n)`` is called after each streamed decoder layer.
    """
    from qtune.models.load import model_family
    from qtune.recipe import load_run_recipe
    from qtune.registry.families import check_formats

    run_dir = Path(run_dir)
    out_root = Path(out_root) if out_root else run_dir / rundir.EXPORTS
    formats = list(dict.fromkeys(formats or settings.formats))
    recipe = load_run_recipe(run_dir)
    base = recipe.model
    check_formats(model_family(base), formats)  # before any merging or measuring
    if {"gptq", "awq"} & set(formats):
        from qtune.export.calibration import check_calibration

        check_calibration(recipe, settings.calibration)
    if "gguf" in formats:
        from qtune.export.gguf_export import check_convertible

        check_convertible(base, settings.gguf_types)
    rundir.check_adapter(run_dir)  # formats first: they need no adapter to be refused
    folders = {f: out_root / export_name(f, settings.bits, settings.group_size) for f in formats}
    if "gguf" in folders and "merged" not in folders:
        folders = {"merged": out_root / "merged", **folders}  # GGUF converts the merged shards
    try:
        with sigterm_interrupts(), ExitStack() as stack, cpu_threads(settings.threads):
            tmp = {f: stack.enter_context(rundir.atomic_path(p, directory=True)) for f, p in folders.items()}
            _export(run_dir, settings, tmp, folders, console, on_layer)
    except KeyboardInterrupt:
        raise ExportInterrupted(
            f"export interrupted: nothing was written under {out_root} (temporary folders removed); "
            f"rerun the same command: qtune export {run_dir} --format {' '.join(formats)}") from None
    return folders


def _export(run_dir: Path, settings, tmp: dict[str, Path], final: dict[str, Path], console, on_layer) -> None:
    import torch
    from transformers import AutoTokenizer

    from qtune.export.fidelity import compare
    from qtune.export.layerwise import MergedWeights
    from qtune.export.stream import MergedTarget, QuantTarget, stream_export, write_config

    say = _say(console)
    s = settings
    device = export_device(s.device)
    threads = torch.get_num_threads()  # the quantizers' speed depends on it; their results do not
    weights = MergedWeights(run_dir, s.base, device)
    recipe = weights.recipe
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / rundir.ADAPTER))
    stops = _stops(run_dir, tokenizer, recipe)
    stop_tokens = {tokenizer.convert_ids_to_tokens(i): i for i in stops}  # for the manifest and the card
    quant = [f for f in tmp if f in ("gptq", "awq")]
    targets = [MergedTarget(tmp["merged"])] if "merged" in tmp else []
    calib = calib_record = None
    if quant:
        calib, calib_record = _calibration(weights, recipe, tokenizer, s, quant)
        targets += [QuantTarget(f, _quantizer(f, s), tmp[f]) for f in quant]
    t0 = time.perf_counter()
    what = f"merge{' + ' + ' + '.join(quant) if quant else ''} on {device.type}"
    with _layer_bar(console, what, on_layer) as progress:
        stream_export(weights, targets, calib, 8, progress)
    for target in targets:
        target.writer.close()
        fmt = getattr(target, "fmt", "merged")
        write_config(target.folder, weights, "float16", _qconfig(fmt, s) if fmt != "merged" else None, stops)
        tokenizer.save_pretrained(target.folder)
    say(f"streamed {len(targets)} format(s) layer by layer on {device.type} in {time.perf_counter() - t0:.0f}s")

    fid = None
    if s.fidelity:
        from qtune.export.scoring import Scorer

        fid = Scorer(run_dir, weights, tokenizer, s, device, say, exports=len(quant) + ("gguf" in tmp) * len(s.gguf_types),
                     trained="merged" in tmp)
    reference = fid.reference() if fid else None
    if "merged" in tmp:
        fidelity = None
        if fid:
            fidelity = compare(reference, fid.trained())  # the merged model against the trained one
            fidelity["reference"] = (f"the trained adapter on its {recipe.quant.method} base (computed as the merge "
                                     "into the dequantized base, which it equals: tests/export/test_merge.py)")
        _paperwork(tmp["merged"], final["merged"], "merged", 16, None, s, recipe, fidelity, dtype="float16", stop_tokens=stop_tokens,
                   device=device.type)
    for target in targets:
        if isinstance(target, QuantTarget):
            fidelity = None
            if fid:
                from qtune.export.checkpoint import DequantizedWeights
                from qtune.export.fidelity import calibrated_on_the_text

                fidelity = compare(fid.of(DequantizedWeights(target.folder, device)), reference)
                fidelity["reference"] = "the merged 16-bit model; the export is read back from its files (qtune's dequantized view)"
                if note := calibrated_on_the_text(fidelity, calib_record):
                    fidelity["note"] = note
                    say(f"{target.fmt}: {note}")
            _paperwork(
                target.folder,
                final[target.fmt],
                target.fmt,
                s.bits,
                s.group_size,
                s,
                recipe,
                fidelity,
                quantization_config=_qconfig(target.fmt, s),
                stop_tokens=stop_tokens,
                quantize_seconds=round(target.seconds, 1),
                device=device.type,
                threads=threads,
                calibration=calib_record,
                **({"grid_search": s.grid_search} if target.fmt == "gptq" else {}),
            )
            say(f"{target.fmt}: quantized in {target.seconds:.0f}s → {final[target.fmt]}")
    if "gguf" in tmp:
        from qtune.export.gguf_export import export_gguf

        export_gguf(
            tmp["merged"], recipe, tokenizer, s, reference, tmp["gguf"], say, fidelity_of=fid.of if fid else None, final=final["gguf"]
        )
    if fid:
        say(f"fidelity: measured in {fid.seconds:.0f}s ({fid.plan.mode}, batch {fid.plan.batch})")


def _stops(run_dir: Path, tokenizer, recipe) -> list[int]:
    from qtune.data.stops import run_stop_ids
    from qtune.models.load import model_family

    return run_stop_ids(run_dir / rundir.ADAPTER, tokenizer, model_family(recipe.model).end_of_turn)


def _paperwork(out, final, fmt, bits, group_size, s, recipe, fidelity, **details) -> None:
    if fidelity is not None:
        card.write_fidelity(out, fidelity)
    manifest = card.write_manifest(out, fmt, bits, group_size, s.base, **details)
    card.write_card(out, manifest, fidelity, recipe.model.path, final)


def _calibration(weights, recipe, tokenizer, s, quant: list[str]):
    import torch

    from qtune.export.calibration import calibration_set
    from qtune.export.grid import check_shape
    from qtune.export.layerwise import skeleton
    from qtune.export.sequential import decoder_layers

    if "awq" in quant and s.bits != 4:
        raise QtuneError(f"export.bits: AWQ GEMM checkpoints hold 4-bit weights (given {s.bits}); use gptq for 8 bits")
    for name, m in decoder_layers(skeleton(weights.config))[1][0].named_modules():
        if isinstance(m, torch.nn.Linear):
            check_shape(name, m.in_features, s.bits, s.group_size)
    return calibration_set(recipe, tokenizer, s.calibration)


def _quantizer(fmt: str, s):
    from qtune.export.awq import awq_layer_quantizer
    from qtune.export.gptq import gptq_layer_quantizer

    if fmt == "gptq":
        return gptq_layer_quantizer(s.bits, s.group_size, s.sym, s.act_order, s.damp, s.grid_search)
    return awq_layer_quantizer(s.bits, s.group_size)


def _qconfig(fmt: str, s) -> dict:
    from qtune.export.checkpoint import quantization_config

    return quantization_config(fmt, s.bits, s.group_size, s.sym and fmt == "gptq", s.act_order and fmt == "gptq", s.damp)


def merge_run(run_dir: str | Path, base: str, out: str | Path, dtype: str = "float16", device: str = "auto", console=None) -> Path:
    """``qtune merge``: the merged checkpoint alone, streamed layer by layer (no fidelity)."""
    from transformers import AutoTokenizer

    from qtune.export.layerwise import MergedWeights
    from qtune.export.stream import DTYPES, MergedTarget, stream_export, write_config

    if dtype not in DTYPES:
        raise QtuneError(f"--dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    weights = MergedWeights(run_dir, base, export_device(device))
    tokenizer = AutoTokenizer.from_pretrained(str(Path(run_dir) / rundir.ADAPTER))
    out = Path(out)
    try:
        with sigterm_interrupts(), rundir.atomic_path(out, directory=True) as tmp:
            target = MergedTarget(tmp, dtype)
            with _layer_bar(console, f"merge on {weights.device.type}") as progress:
                stream_export(weights, [target], None, progress=progress)
            target.writer.close()
            stops = _stops(Path(run_dir), tokenizer, weights.recipe)
            write_config(tmp, weights, dtype, stops=stops)
            tokenizer.save_pretrained(tmp)
            manifest = card.write_manifest(
                tmp,
                "merged",
                16 if dtype != "float32" else 32,
                None,
                base,
                dtype=dtype,
                stop_tokens={tokenizer.convert_ids_to_tokens(i): i for i in stops},
            )
            card.write_card(tmp, manifest, None, weights.recipe.model.path, out)
    except KeyboardInterrupt:
        raise ExportInterrupted(f"merge interrupted: {out} was not written; rerun: qtune merge {run_dir}") from None
    return out
