"""``qtune train``: one recipe in, one run directory out (see :mod:`qtune.rundir`)."""

from __future__ import annotations

import dataclasses
import resource
import shutil
import time
from pathlib import Path

from qtune import rundir
from qtune.errors import QtuneError
from qtune.recipe import Recipe, dump_recipe


def prepare_run_dir(recipe: Recipe, overwrite: bool, resume: bool) -> Path:
    run = Path(recipe.train.output_dir)
    if run.exists() and any(run.iterdir()) and not (overwrite or resume):
        raise QtuneError(
            f"train.output_dir: '{run}' already holds a run; pass --resume to continue it, --overwrite to replace it, "
            f"or set train.output_dir=<new dir>"
        )
    if overwrite and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run / rundir.METRICS).unlink(missing_ok=True)
    rundir.write_text(run / rundir.RECIPE, dump_recipe(recipe))
    return run


def memory_probe(device: str):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated
    return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak RSS, Linux reports KiB


def latest_checkpoint(run: Path) -> str | None:
    ckpts = sorted((run / rundir.CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return str(ckpts[-1]) if ckpts else None


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
        report_to=report_to,
        run_name=recipe.tracking.run_name or run.name,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=fp16,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    # Gradient checkpointing is switched on while attaching LoRA (prepare_model_for_kbit_training),
    # so the Trainer's own switch stays at its default (off).
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    return TrainingArguments(**{k: v for k, v in args.items() if k in known})


def build_model(recipe: Recipe, device: str):
    """The model ``train`` trains: the base as the recipe quantizes it, LoRA attached, kernels routed.

    Returns the model and the resolved kernel mode.
    """
    from qtune.data.packing import prepare_model
    from qtune.kernels import apply as apply_kernels
    from qtune.models.load import attach_lora, load_base_model

    base = load_base_model(recipe.model, recipe.quant, device)
    model = attach_lora(base, recipe.lora, quantized=recipe.quant.method != "none",
                        gradient_checkpointing=recipe.train.gradient_checkpointing)
    if recipe.data.packing:
        prepare_model(model)
    return model, apply_kernels(model, recipe.train.kernels, device)


def train(recipe: Recipe, overwrite: bool = False, resume: bool = False, console=None) -> dict:
    """Fine-tune ``recipe``'s base with LoRA and fill its run directory; return the summary."""
    import torch
    from transformers import set_seed

    from qtune import tracking
    from qtune.data.dataset import build_datasets, refuse_training
    from qtune.models.load import load_tokenizer, model_family, resolve_device
    from qtune.train.plot import plot_loss

    say = console.print if console is not None else print
    t0 = time.perf_counter()
    model_family(recipe.model)  # an unsupported family is refused before anything runs
    device = resolve_device(recipe.train.device)
    if recipe.optimizer_is_paged and device != "cuda":
        raise QtuneError(f"train.optimizer: '{recipe.train.optimizer}' needs a CUDA GPU (running on {device}); use adamw_torch")
    run = prepare_run_dir(recipe, overwrite, resume)
    resume_from = latest_checkpoint(run) if resume else None
    set_seed(recipe.train.seed)

    tokenizer = load_tokenizer(recipe.model)
    data = build_datasets(recipe.data, tokenizer, recipe.train.seed)
    say(f"data: {data.stats['train']['rows']} train / {data.stats['eval']['rows']} eval rows, "
        f"{data.stats['train']['trained_tokens']} trained tokens per epoch (cache {data.stats['cache']}, {data.stats['load_s']:.1f}s)"
        + (f", packed into {data.stats['packing']['rows']} rows" if recipe.data.packing else ""))
    refuse_training(data, recipe.data, tokenizer)
    if not data.eval:
        raise QtuneError("data.eval: the eval split is empty; set data.eval to a file or data.eval_fraction > 0")

    model, kernels = build_model(recipe, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"model: {recipe.model.path} ({recipe.quant.method}) on {device}, {trainable:,} trainable LoRA parameters, {kernels} kernels")

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    probe = memory_probe(device)
    report_to, tracking_env = tracking.configure(recipe.tracking, run)
    with tracking.environment(tracking_env):
        trainer = _build_trainer(recipe, model, data, tokenizer, run, device, report_to, probe)
        eval_before = trainer.evaluate()["eval_loss"]
        say(f"eval loss before training: {eval_before:.4f}")
        t_train, eval_s = time.perf_counter(), trainer.eval_seconds
        result = trainer.train(resume_from_checkpoint=resume_from)
        train_s = time.perf_counter() - t_train - (trainer.eval_seconds - eval_s)  # periodic evals excluded
        eval_after = trainer.final_eval_loss()
    say(f"eval loss after training:  {eval_after:.4f} ({(eval_after - eval_before) / eval_before:+.1%})")

    with rundir.atomic_path(run / rundir.ADAPTER, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    tokens = int(trainer.state.num_input_tokens_seen)
    summary = {
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "steps": int(result.global_step),
        "train_tokens": tokens,
        "tokens_per_s": (tokens - trainer.metrics_log.tokens_at_start) / train_s if train_s > 0 else None,
        "peak_memory_bytes": int(probe()),
        "peak_memory_kind": "cuda_max_allocated" if device == "cuda" else "process_max_rss",
        "wall_s": time.perf_counter() - t0,
        "device": device,
        "data": data.stats,
        "trainable_parameters": trainable,
    }
    rundir.write_json(run / rundir.SUMMARY, summary)
    plot_loss(rundir.read_metrics(run), run / rundir.LOSS_PLOT, f"{recipe.model.path} · {recipe.quant.method} · LoRA r={recipe.lora.rank}")
    if recipe.export is not None:
        from qtune.export.pipeline import export_run

        export_run(run, recipe.export, console=console)
    return summary


def _build_trainer(recipe: Recipe, model, data, tokenizer, run: Path, device: str, report_to: list[str], probe):
    from transformers import PrinterCallback

    from qtune.data.dataset import collator_for
    from qtune.train.callbacks import LayoutGuard, MetricsCallback, RichProgressCallback
    from qtune.train.trainer import QtuneTrainer

    metrics = MetricsCallback(run / rundir.METRICS)
    trainer = QtuneTrainer(
        model=model,
        args=training_arguments(recipe, run, device, report_to),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=collator_for(recipe.data, tokenizer.pad_token_id),
        callbacks=[LayoutGuard(), metrics, RichProgressCallback(metrics, probe)],
    )
    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl replace its raw dict prints
    metrics.eval_clock = lambda: trainer.eval_seconds
    trainer.metrics_log = metrics
    return trainer
