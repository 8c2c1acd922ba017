"""``qtune train`` as named steps, each a function of what the steps before it returned.

    preflight      qtune.train.preflight: family, memory switches, optimizer vs device, output_dir; no weights
    open run       qtune.train.resume.open_run: the run directory as --resume/--overwrite allow (in run.train)
    setup_data     the tokenizer and the objective's rows (qtune.train.objectives), refused when unusable
    setup_model    load_base (the base as the recipe quantizes it) then adapt_model (LoRA, the memory switches,
                   kernels, compile)
    setup_trainer  the objective's Trainer class (make_trainer) with the recipe's TrainingArguments, collator,
                   guards and the run's metrics and progress callbacks
    fit            eval loss before, the training loop (resumed where asked), eval loss after
    save           adapter + tokenizer, summary.json, loss.png (in run.train)

:func:`qtune.train.run.train` runs them in that order; ``qtune plan --measure`` (:mod:`qtune.plan.measure`) runs
setup_data, setup_model and make_trainer for its two steps; ``scripts/bench_train_step.py`` runs setup_model and
make_trainer for each kernel mode it compares. Export after training is not a step of ``train``: the CLI runs it
on the finished run (:func:`qtune.cli.cmd_train`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from qtune import rundir
from qtune.errors import QtuneError
from qtune.recipe import Recipe
from qtune.train import distributed
from qtune.train.objectives import Objective, objective as objective_named


def training_arguments(recipe: Recipe, run: Path, device: str, report_to: list[str], objective: Objective | None = None):
    """The objective's TrainingArguments class (transformers' for sft, TRL's config for a preference objective) with
    the recipe's settings and the objective's own fields."""
    config_class, objective_fields = (objective or objective_named()).arguments(recipe)
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
        **objective_fields,
    )
    # Gradient checkpointing is switched on while attaching LoRA (prepare_model_for_kbit_training),
    # so the Trainer's own switch stays at its default (off).
    unknown = sorted(set(args) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:  # a transformers (or TRL) that renamed a field: refuse, never train with a setting silently dropped
        raise QtuneError(f"{config_class.__module__}.{config_class.__name__} has no {', '.join(unknown)}; "
                         f"install the tested versions: pip install -c constraints.txt -e .")
    return config_class(**args)


def setup_data(recipe: Recipe, family, objective: Objective | None = None, say=print):
    """The tokenizer and the objective's rows; refuses data that would train nothing. Returns (tokenizer, data)."""
    from qtune.models.load import load_tokenizer

    objective = objective or objective_named()
    tokenizer = load_tokenizer(recipe.model)
    data = objective.datasets(recipe, tokenizer, family)
    tokens = data.stats['train']['trained_tokens']
    say(f"data: {data.stats['train']['rows']} train / {data.stats['eval']['rows']} eval rows"
        + (f", {tokens} trained tokens per epoch" if tokens is not None else f" ({data.stats['kind']}, tokenized by TRL)")
        + f" (cache {data.stats['cache']}, {data.stats['load_s']:.1f}s)"
        + (f", packed into {data.stats['packing']['rows']} rows" if recipe.data.packing else ""))
    if data.stats.get("template_note"):
        say(data.stats["template_note"])
    objective.refuse(data, recipe.data, tokenizer)
    if not data.eval:
        raise QtuneError("data.eval: the eval split is empty; set data.eval to a file or data.eval_fraction > 0")
    return tokenizer, data


def load_base(recipe: Recipe, device: str):
    """The base as the recipe quantizes it, on this rank's device; the memory switches are checked first, so a
    switch that cannot run is refused before any weight loads, and ``lora.target_modules`` against its linears."""
    from qtune.kernels.dispatch import check_switches
    from qtune.models.load import linear_names, load_base_model
    from qtune.registry.families import check_lora_targets

    check_switches(recipe.train, device)
    base = load_base_model(recipe.model, recipe.quant, distributed.placement(device))
    check_lora_targets(recipe.lora.target_modules, linear_names(base), f"'{recipe.model.path}'")  # before peft raises
    return base


def adapt_model(base, recipe: Recipe, device: str):
    """``base`` made the model ``train`` trains: LoRA attached (k-bit preparation, gradient checkpointing), the memory
    switches (``train.frozen_dtype``, ``cross_entropy``, ``rms_norm``, ``rope``), the kernels and ``train.compile``
    applied to this instance. Returns (model, resolved kernel mode)."""
    from qtune.data.packing import prepare_model
    from qtune.kernels import apply as apply_kernels, liger
    from qtune.kernels.dispatch import check_switches
    from qtune.models.load import attach_lora
    from qtune.registry.families import family_of
    from qtune.train.compile import compile_layers

    switches = check_switches(recipe.train, device)
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


def setup_model(recipe: Recipe, device: str):
    """:func:`load_base` then :func:`adapt_model`: returns (model, resolved kernel mode)."""
    return adapt_model(load_base(recipe, device), recipe, device)


def describe_switches(recipe: Recipe, s: dict[str, str]) -> str:
    """The switches as :func:`qtune.kernels.dispatch.check_switches` resolved them (``s``), for ``train``'s model line."""
    return (f"frozen {s['frozen_dtype']}, cross-entropy {s['cross_entropy']}, RMSNorm {s['rms_norm']}, RoPE {s['rope']}"
            + (", activations offloaded" if recipe.train.offload_activations else "")
            + (", decoder layers compiled" if s["compile"] == "layers" else ""))


def make_trainer(recipe: Recipe, model, train_rows, eval_rows, collate, out: Path, device: str, report_to: list[str],
                 callbacks: list = (), objective: Objective | None = None, say=print, tokenizer=None):
    """The objective's Trainer over ``model`` with the recipe's TrainingArguments (checkpoints under ``out``), the
    4-bit layout guard, ``callbacks``, the SIGINT/SIGTERM stop and the NaN guard (``train.on_nan``). ``tokenizer``:
    for an objective whose Trainer tokenizes its rows (the preference objectives: TRL's trainers)."""
    from transformers import PrinterCallback

    from qtune.train.callbacks import LayoutGuard
    from qtune.train.guards import NonFiniteGuard, SignalStop

    objective = objective or objective_named()
    signal_stop, nonfinite = SignalStop(), NonFiniteGuard(recipe.train.on_nan, say)
    trainer = objective.trainer()(
        model=model,
        args=training_arguments(recipe, out, device, report_to, objective),
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=collate,
        callbacks=[LayoutGuard(), *callbacks, signal_stop, nonfinite],
        offload_activations=recipe.train.offload_activations,
        **(objective.trainer_kwargs(tokenizer) if tokenizer is not None else {}),
    )
    trainer.remove_callback(PrinterCallback)  # the rich bar and metrics.jsonl (or the caller's table) replace its prints
    trainer.signal_stop, trainer.nonfinite, nonfinite.trainer = signal_stop, nonfinite, trainer
    return trainer


def setup_trainer(recipe: Recipe, model, data, tokenizer, run: Path, device: str, report_to: list[str], meter,
                  say=print, objective: Objective | None = None):
    """:func:`make_trainer` on the data step's rows, with ``metrics.jsonl`` and the progress bar (memory from ``meter``,
    a :class:`qtune.memory.PeakMemory`)."""
    from qtune.train.callbacks import MetricsCallback, RichProgressCallback

    objective = objective or objective_named()
    metrics = MetricsCallback(run / rundir.METRICS)
    trainer = make_trainer(recipe, model, data.train, data.eval, objective.collator(recipe, tokenizer), run, device,
                           report_to, [metrics, RichProgressCallback(metrics, meter.peak)], objective, say, tokenizer)
    metrics.eval_clock = lambda: trainer.eval_seconds
    trainer.metrics_log = metrics
    return trainer


@dataclass
class Fitted:
    result: object  # transformers' TrainOutput
    eval_before: float
    eval_after: float
    train_s: float  # seconds in the training loop, periodic evals excluded


def fit(trainer, session, started: float, meter, say=print) -> Fitted:
    """Eval loss before (stored on resume), the training loop (from the session's checkpoint), eval loss after."""
    from qtune.train.callbacks import SessionLedger

    eval_before = session.eval_before
    if eval_before is None:
        eval_before = trainer.evaluate()["eval_loss"]
        session.record_eval_before(eval_before)
    resumed = f" (stored; resuming from step {session.resume_step})" if session.resuming else ""
    say(f"eval loss before training: {eval_before:.4f}{resumed}")
    t_train, eval_s = time.perf_counter(), trainer.eval_seconds
    trained_s = lambda: time.perf_counter() - t_train - (trainer.eval_seconds - eval_s)  # periodic evals excluded
    trainer.add_callback(
        SessionLedger(session, lambda: time.perf_counter() - started, trained_s, lambda: trainer.nonfinite.bad_steps, meter.peak)
    )
    with trainer.signal_stop.installed():
        result = trainer.train(resume_from_checkpoint=str(session.checkpoint) if session.resuming else None)
    refuse_stopped(trainer, session.run)
    train_s = trained_s()
    return Fitted(result, eval_before, trainer.final_eval_loss(), train_s)


def refuse_stopped(trainer, run: Path) -> None:
    """After ``trainer.train`` returns early: the one line saying why, and how to go on."""
    from qtune.errors import Interrupted
    from qtune.train.resume import complete_checkpoints

    ckpts = complete_checkpoints(run)
    newest = str(ckpts[-1]) if ckpts else "none (set train.save_steps)"
    if trainer.nonfinite.policy == "stop" and trainer.nonfinite.bad_steps:
        raise QtuneError(
            f"step {trainer.nonfinite.bad_steps[-1]}: loss or gradients are NaN/inf; stopped without saving "
            f"that step (train.on_nan: stop); newest good checkpoint: {newest}; resume with train.on_nan=skip "
            f"to skip such steps, or lower train.lr in a new run"
        )
    if trainer.signal_stop.received is not None and trainer.state.global_step < trainer.state.max_steps:
        from qtune.train.guards import SIGNAL_EXIT

        signum = trainer.signal_stop.received
        raise Interrupted(f"interrupted at step {trainer.state.global_step}; wrote {newest}", exit_code=SIGNAL_EXIT.get(signum, 130))
