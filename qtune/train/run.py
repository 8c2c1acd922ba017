"""``qtune train``: one recipe in, one run directory out (see :mod:`qtune.rundir`), through the named steps of
:mod:`qtune.train.steps`."""

from __future__ import annotations

import time
from pathlib import Path

from qtune import rundir
from qtune.recipe import Recipe
from qtune.train import distributed
from qtune.train.steps import Fitted, describe_switches, fit, setup_data, setup_model, setup_trainer


def train(recipe: Recipe, overwrite: bool = False, resume: bool = False, console=None, objective: str | None = None) -> dict:
    """Fine-tune ``recipe``'s base with LoRA and fill its run directory; return the summary (on other ranks: {})."""
    from transformers import set_seed

    from qtune import tracking
    from qtune.device import resolve_device
    from qtune.memory import PeakMemory
    from qtune.train.disk import base_parameters, check_free_disk, needed_bytes
    from qtune.train.objectives import objective as objective_named
    from qtune.train.preflight import preflight
    from qtune.train.resume import open_run

    t0 = time.perf_counter()
    goal = objective_named(objective or recipe.train.objective)
    device = resolve_device(recipe.train.device, "train.device")
    checked = preflight(recipe, device)
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
            tokenizer, data = setup_data(recipe, checked.family, goal, say)
        meter = PeakMemory(device).begin()  # the baseline: before the model loads
        model, kernels = setup_model(recipe, device)
        meter.holds(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"model: {recipe.model.path} ({recipe.quant.method}) on {device}, {trainable:,} trainable LoRA parameters, {kernels} kernels, "
            f"{describe_switches(recipe, checked.switches)}"
            + (f", {recipe.distributed.strategy} over {world.size} processes" if world.size > 1 else ""))
        distributed.on_main(lambda: check_free_disk(run, needed_bytes(recipe, trainable, base_parameters(model))))

        meter.reset_peak()  # the peak of training, the weights in it (as plan --measure counts it)
        trainer = setup_trainer(recipe, model, data, tokenizer, run, device, report_to, meter, say, goal)
        session.begin(recipe, data.train)
        distributed.barrier()  # the run directory is laid out before any rank trains
        fitted = fit(trainer, session, t0, meter, say)
    say(f"eval loss after training:  {fitted.eval_after:.4f} ({(fitted.eval_after - fitted.eval_before) / fitted.eval_before:+.1%})")

    weights = distributed.adapter_state_dict(trainer)  # gathered from every rank under FSDP, else None
    if not world.is_main:  # the run directory is the main process's
        return {}
    return save(recipe, run, model, tokenizer, data, trainer, fitted, session, meter, device=device, started=t0,
                trainable=trainable, world_size=world.size, weights=weights, family=checked.family)


def save(recipe: Recipe, run: Path, model, tokenizer, data, trainer, fitted: Fitted, session, meter, *, device: str,
         started: float, trainable: int, world_size: int, weights, family) -> dict:
    """The save step: adapter + tokenizer, summary.json and loss.png; returns the summary."""
    from qtune.train.plot import plot_loss

    if data.chat_template is not None:  # generate, chat, merge and every export format prompts as training did
        tokenizer.chat_template = data.chat_template
    with rundir.atomic_path(run / rundir.ADAPTER, directory=True) as tmp:
        # only the trained adapter: a preference objective's trainer adds a frozen reference copy, "ref" (qtune.train.preference)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights, selected_adapters=["default"])
        tokenizer.save_pretrained(tmp)
        _write_stops(tmp, recipe, model, tokenizer, family)
    tokens = int(trainer.state.num_input_tokens_seen)
    wall_s, session_tokens = time.perf_counter() - started, tokens - trainer.metrics_log.tokens_at_start
    train_s, peak = fitted.train_s, int(meter.peak())
    summary = {
        "eval_loss_before": fitted.eval_before,
        "eval_loss_after": fitted.eval_after,
        "steps": int(fitted.result.global_step),
        "train_tokens": tokens,
        # wall_s, tokens_per_s, peak_memory_bytes, nonfinite_steps_skipped: over every session of the run
        **session.whole_run(wall_s, train_s, tokens, trainer.nonfinite.bad_steps, peak),
        "peak_memory_kind": meter.kind,  # qtune.memory: the same kind plan --measure reports
        "device": device,
        "data": data.stats,
        "trainable_parameters": trainable,
        "world_size": world_size,
        "global_batch_size": recipe.train.global_batch_size(world_size),
        "distributed": distributed.wrapping(trainer),
        "resumed_from_step": session.resume_step,
        "sessions": session.state["sessions"],
        "this_session": {"wall_s": wall_s, "train_s": train_s, "tokens_per_s": session_tokens / train_s if train_s > 0 else None,
                         "peak_memory_bytes": peak},
    }
    rundir.write_json(run / rundir.SUMMARY, summary)
    plot_loss(rundir.read_metrics(run), run / rundir.LOSS_PLOT, f"{recipe.model.path} · {recipe.quant.method} · LoRA r={recipe.lora.rank}")
    return summary


def _write_stops(adapter: Path, recipe: Recipe, model, tokenizer, family) -> None:
    """generation_config.json beside the adapter: the base's, stopping on the tokenizer's EOS and the family's
    end of turn (:mod:`qtune.data.stops`); generate, chat and every export read it."""
    from qtune.data.stops import stop_ids
    from qtune.models.generation_config import write_generation_config
    from qtune.models.load import resolve_model_path

    write_generation_config(adapter, resolve_model_path(recipe.model.path), model.config,
                            stop_ids(tokenizer, family.end_of_turn))
