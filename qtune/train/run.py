"""``qtune train``: one recipe in, one run directory out (see :mod:`qtune.rundir`)."""

from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path

from qtune import rundir
from qtune.errors import Interrupted, QtuneError
from qtune.recipe import Recipe
from qtune.train import distributed


def memory_probe(device: str):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated
    return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak RSS, Linux reports KiB


def training_arguments(recipe: Recipe, run: Path, device: str, report_to: list[str]):
    from transformers import TrainingArguments

    t = recipe.train
    bf16 = device == "cuda" and recipe.quant.compute_dtype == "bfloat16"
    fp16 = device == "cuda" and recipe.quant.compute_dtype == "float16"
    args = dict(
        output_dir=str(run / rundir.CHECKPOINTS),
        max_steps=t.max_steps or -1,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accumulation,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if t.eval_steps else "no",
        eval_steps=t.eval_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps,
        save_total_limit=t.keep_checkpoints,
        report_to=report_to,
        run_name=recipe.tracking.run_name or run.name,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=fp16,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **distributed.trainer_arguments(recipe.distributed, device),
    )
    # Gradient checkpointing is switched on while attaching LoRA (prepare_model_for_kbit_training),
    # so the Trainer's own switch stays at its default (off).
    unknown = sorted(set(args) - {f.name for f in dataclasses.fields(TrainingArguments)})
    if unknown:  # a transformers that renamed a field: refuse, never train with a setting silently dropped
        import transformers

        raise QtuneError(f"transformers {transformers.__version__}: TrainingArguments has no {', '.join(unknown)}; "
                         f"install the tested versions: pip install -c constraints.txt -e .")
    return TrainingArguments(**args)


def build_model(recipe: Recipe, device: str):
    """The model ``train`` trains: the base as the recipe quantizes it, LoRA attached, kernels routed, the memory
    switches (``train.frozen_dtype``, ``cross_entropy``, ``rms_norm``, ``rope``) applied to this instance.

    Returns the model and the resolved kernel mode.
    """
    from qtune.data.packing import prepare_model
    from qtune.kernels import apply as apply_kernels, liger
    from qtune.kernels.dispatch import check_switches
    from qtune.models.load import attach_lora, linear_names, load_base_model
    from qtune.registry.families import check_lora_targets, family_of
    from qtune.train.compile import compile_layers

    switches = check_switches(recipe.train, device)  # before any weight loads: a switch that cannot run is refused
    base = load_base_model(recipe.model, recipe.quant, distributed.placement(device))
    check_lora_targets(recipe.lora.target_modules, linear_names(base), f"'{recipe.model.path}'")  # before peft raises
    model = attach_lora(base, recipe.lora, quantized=recipe.quant.method != "none",
                        gradient_checkpointing=recipe.train.gradient_checkpointing,
                        sharded=recipe.distributed.strategy == "fsdp",
                        upcast_frozen=switches["frozen_dtype"] == "float32")
    if recipe.data.packing:
        prepare_model(model)
    liger.apply(model, family_of(base), switches["cross_entropy"], switches["rms_norm"], switches["rope"])
    mode = apply_kernels(model, recipe.train.kernels, device)
    if switches["compile"] == "layers":
        compile_layers(model)
    return model, mode


def describe_switches(recipe: Recipe, s: dict[str, str]) -> str:
    """The switches as :func:`qtune.kernels.dispatch.check_switches` resolved them (``s``), for ``train``'s model line."""
    return (f"frozen {s['frozen_dtype']}, cross-entropy {s['cross_entropy']}, RMSNorm {s['rms_norm']}, RoPE {s['rope']}"
            + (", activations offloaded" if recipe.train.offload_activations else "")
            + (", decoder layers compiled" if s["compile"] == "layers" else ""))


def train(recipe: Recipe, overwrite: bool = False, resume: bool = False, console=None) -> dict:
    """Fine-tune ``recipe``'s base with LoRA and fill its run directory; return the summary (on other ranks: {})."""
    import torch
    from transformers import set_seed

    from qtune import tracking
    from qtune.data.dataset import recipe_datasets, refuse_training
    from qtune.kernels.dispatch import check_switches
    from qtune.models.load import load_tokenizer, model_family, resolve_device
    from qtune.train.disk import base_parameters, check_free_disk, needed_bytes
    from qtune.train.plot import plot_loss
    from qtune.train.callbacks import SessionLedger
    from qtune.train.resume import open_run

    t0 = time.perf_counter()
    family = model_family(recipe.model)  # an unsupported family is refused before anything runs
    device = resolve_device(recipe.train.device)
    switches = check_switches(recipe.train, device)  # a liger choice without liger-kernel, or on a device it cannot run on
    if recipe.optimizer_is_paged and device != "cuda":
        raise QtuneError(f"train.optimizer: '{recipe.train.optimizer}' needs a CUDA GPU (running on {device}); use adamw_torch")
    world = distributed.init(recipe.distributed, device)
    say = (console.print if console is not None else print) if world.is_main else (lambda *a, **k: None)
    # Checks only, nothing written before session.begin; the main process decides (one checkpoint for all ranks).
    session = distributed.on_main(lambda: open_run(recipe, overwrite, resume, world.size))
    session.writes = world.is_main  # the run directory is the main process's
    run = session.run
    set_seed(recipe.train.seed)
    report_to, tracking_env = tracking.configure(recipe.tracking, run, session.state["run_id"])
    with session.attempt(), tracking.environment(tracking_env):
        with distributed.main_first():  # the main process fills the data cache, the others read it
            tokenizer = load_tokenizer(recipe.model)
            data = recipe_datasets(recipe, tokenizer, family=family)
        say(f"data: {data.stats['train']['rows']} train / {data.stats['eval']['rows']} eval rows, "
            f"{data.stats['train']['trained_tokens']} trained tokens per epoch (cache {data.stats['cache']}, {data.stats['load_s']:.1f}s)"
            + (f", packed into {data.stats['packing']['rows']} rows" if recipe.data.packing else ""))
        if data.stats.get("template_note"):
            say(data.stats["template_note"])
        refuse_training(data, recipe.data, tokenizer)
        if not data.eval:
            raise QtuneError("data.eval: the eval split is empty; set data.eval to a file or data.eval_fraction > 0")

        model, kernels = build_model(recipe, device)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"model: {recipe.model.path} ({recipe.quant.method}) on {device}, {trainable:,} trainable LoRA parameters, {kernels} kernels, "
            f"{describe_switches(recipe, switches)}"
            + (f", {recipe.distributed.strategy} over {world.size} processes" if world.size > 1 else ""))
        distributed.on_main(lambda: check_free_disk(run, needed_bytes(recipe, trainable, base_parameters(model))))

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        probe = memory_probe(device)
        trainer = _build_trainer(recipe, model, data, tokenizer, run, device, report_to, probe, say)
        session.begin(recipe, data.train)
        distributed.barrier()  # the run directory is laid out before any rank trains
        eval_before = session.eval_before
        if eval_before is None:
            eval_before = trainer.evaluate()["eval_loss"]
            session.record_eval_before(eval_before)
        say(f"eval loss before training: {eval_before:.4f}" + (f" (stored; resuming from step {session.resume_step})" if session.resuming else ""))
        t_train, eval_s = time.perf_counter(), trainer.eval_seconds
        trained_s = lambda: time.perf_counter() - t_train - (trainer.eval_seconds - eval_s)  # periodic evals excluded
        trainer.add_callback(SessionLedger(session, lambda: time.perf_counter() - t0, trained_s,
                                         lambda: trainer.nonfinite.bad_steps, probe))
        with trainer.signal_stop.installed():
            result = trainer.train(resume_from_checkpoint=str(session.checkpoint) if session.resuming else None)
        _refuse_stopped(trainer, run)
        train_s = trained_s()
        eval_after = trainer.final_eval_loss()
    say(f"eval loss after training:  {eval_after:.4f} ({(eval_after - eval_before) / eval_before:+.1%})")

    weights = distributed.adapter_state_dict(trainer)  # gathered from every rank under FSDP, else None
    if not world.is_main:  # the run directory is the main process's
        return {}
    if data.chat_template is not None:  # generate, chat, merge and every export format prompts as training did
        tokenizer.chat_template = data.chat_template
    with rundir.atomic_path(run / rundir.ADAPTER, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        _write_stops(tmp, recipe, model, tokenizer, family)
    tokens = int(trainer.state.num_input_tokens_seen)
    wall_s, session_tokens = time.perf_counter() - t0, tokens - trainer.metrics_log.tokens_at_start
    summary = {
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "steps": int(result.global_step),
        "train_tokens": tokens,
        # wall_s, tokens_per_s, peak_memory_bytes, nonfinite_steps_skipped: over every session of the run
        **session.whole_run(wall_s, train_s, tokens, trainer.nonfinite.bad_steps, int(probe())),
        "peak_memory_kind": "cuda_max_allocated" if device == "cuda" else "process_max_rss",
        "device": device,
        "data": data.stats,
        "trainable_parameters": trainable,
        "world_size": world.size,
        "global_batch_size": recipe.train.global_batch_size(world.size),
        "distributed": distributed.wrapping(trainer),
        "resumed_from_step": session.resume_step,
        "sessions": session.state["sessions"],
        "this_session": {"wall_s": wall_s, "train_s": train_s, "tokens_per_s": session_tokens / train_s if train_s > 0 else None,
                         "peak_memory_bytes": int(probe())},
    }
    rundir.write_json(run / rundir.SUMMARY, summary)
    plot_loss(rundir.read_metrics(run), run / rundir.LOSS_PLOT, f"{recipe.model.path} · {recipe.quant.method} · LoRA r={recipe.lora.rank}")
    if recipe.export is not None:
        from qtune.export.pipeline import export_run

        export_run(run, recipe.export, console=console)
    return summary


def _refuse_stopped(trainer, run: Path) -> None:
    """After ``trainer.train`` returns early: the one line saying why, and how to go on."""
    from qtune.train.resume import complete_checkpoints

    ckpts = complete_checkpoints(run)
    newest = str(ckpts[-1]) if ckpts else "none (set train.save_steps)"
    if trainer.nonfinite.policy == "stop" and trainer.nonfinite.bad_steps:
        raise QtuneError(f"step {trainer.nonfinite.bad_steps[-1]}: loss or gradients are NaN/inf; stopped without saving "
                         f"that step (train.on_nan: stop); newest good checkpoint: {newest}; resume with train.on_nan=skip "
                         f"to skip such steps, or lower train.lr in a new run")
    if trainer.signal_stop.received is not None and trainer.state.global_step < trainer.state.max_steps:
        from qtune.train.guards import SIGNAL_EXIT

        signum = trainer.signal_stop.received
        raise Interrupted(f"interrupted at step {trainer.state.global_step}; wrote {newest}",
                          exit_code=SIGNAL_EXIT.get(signum, 130))


def _write_stops(adapter: Path, recipe: Recipe, model, tokenizer, family) -> None:
    """generation_config.json beside the adapter: the base's, stopping on the tokenizer's EOS and the family's
    end of turn (:mod:`qtune.data.stops`); generate, chat and every export read it."""
    from qtune.data.stops import stop_ids
    from qtune.models.generation_config import write_generation_config
    from qtune.models.load import resolve_model_path

    write_generation_config(adapter, resolve_model_path(recipe.model.path), model.config,
                            stop_ids(tokenizer, family.end_of_turn))


def _build_trainer(recipe: Recipe, model, data, tokenizer, run: Path, device: str, report_to: list[str], probe, say=print):
    from transformers import PrinterCallback

    from qtune.data.dataset import collator_for
    from qtune.train.callbacks import LayoutGuard, MetricsCallback, RichProgressCallback
    from qtune.train.guards import NonFiniteGuard, SignalStop
    from qtune.train.trainer import QtuneTrainer

    metrics = MetricsCallback(run / rundir.METRICS)
    signal_stop, nonfinite = SignalStop(), NonFiniteGuard(recipe.train.on_nan, say)
    trainer = QtuneTrainer(
        model=model,
        args=training_arguments(recipe, run, device, report_to),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collator_for(recipe.data, tokenizer.pad_token_id),
        callbacks=[LayoutGuard(), metrics, RichProgressCallback(metrics, probe), signal_stop, nonfinite],
        offload_activations=recipe.train.offload_activations,
    )
    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl replace its raw dict prints
    metrics.eval_clock = lambda: trainer.eval_seconds
    trainer.metrics_log = metrics
    trainer.signal_stop, trainer.nonfinite, nonfinite.trainer = signal_stop, nonfinite, trainer
    return trainer
