"""Trainer callbacks: ``metrics.jsonl`` with throughput, a rich progress bar, and the 4-bit layout guard."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


# what TRL's preference trainers log beside the loss (rewards/accuracies, rewards/margins, eval_rewards/..., logps/...)
PREFERENCE_METRICS = ("rewards/", "eval_rewards/", "logps/", "eval_logps/", "kl", "eval_kl")


class MetricsCallback(TrainerCallback):
    """Appends one JSON object per log event: step, loss, lr, tokens_per_s (and eval_loss when evaluated), and a
    preference objective's reward metrics as TRL names them.

    tokens/s counts non-padding input tokens (``state.num_input_tokens_seen``) over the wall time
    since the previous training log, less the time spent evaluating in between (``eval_clock``
    returns the seconds spent in evaluation so far).
    """

    def __init__(self, path: Path, eval_clock=lambda: 0.0):
        self.path = path
        self.eval_clock = eval_clock
        self.last_time: float | None = None
        self.last_eval_s = 0.0
        self.last_tokens = 0
        self.latest: dict = {}
        self.tokens_at_start = 0  # a resumed run starts with the tokens of its checkpoint

    def on_train_begin(self, args, state, control, **kw):
        self.last_time, self.last_eval_s = time.perf_counter(), self.eval_clock()
        self.last_tokens = self.tokens_at_start = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero:  # one metrics.jsonl, written by the main process
            return
        logs = logs or {}
        record: dict = {"step": state.global_step}
        if "loss" in logs:
            now, eval_s, tokens = time.perf_counter(), self.eval_clock(), state.num_input_tokens_seen
            elapsed = now - (self.last_time or now) - (eval_s - self.last_eval_s)
            record.update(
                loss=logs["loss"],
                lr=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens_per_s=(tokens - self.last_tokens) / elapsed if elapsed > 0 else None,
            )
            self.last_time, self.last_eval_s, self.last_tokens = now, eval_s, tokens
        if "eval_loss" in logs:
            record["eval_loss"] = logs["eval_loss"]
        record.update({k: v for k, v in logs.items() if k.startswith(PREFERENCE_METRICS)})
        if len(record) > 1:
            self.latest.update(record)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()


class RichProgressCallback(TrainerCallback):
    """One progress bar with step, loss, eval loss, tokens/s and memory."""

    def __init__(self, metrics: MetricsCallback, memory_probe):
        self.metrics = metrics
        self.memory_probe = memory_probe
        self.progress = None
        self.task = None

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("<"),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, info="", completed=state.global_step)

    def on_step_end(self, args, state, control, **kw):
        if self.progress is None:
            return
        m = self.metrics.latest
        parts = []
        if m.get("loss") is not None:
            parts.append(f"loss {m['loss']:.3f}")
        if m.get("eval_loss") is not None:
            parts.append(f"eval {m['eval_loss']:.3f}")
        if m.get("tokens_per_s"):
            parts.append(f"{m['tokens_per_s']:.0f} tok/s")
        parts.append(f"mem {self.memory_probe() / 2**30:.2f} GiB")
        self.progress.update(self.task, completed=state.global_step, info=" · ".join(parts))

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class LayoutGuard(TrainerCallback):
    """Refuses to train through 4-bit weights bitsandbytes repacked for inference (:mod:`qtune.models.bnb_layout`).

    Checked when training begins and after every evaluation, the one step that could repack them.
    """

    def on_train_begin(self, args, state, control, model=None, **kw):
        from qtune.models.bnb_layout import check_training_layout

        check_training_layout(model)

    on_evaluate = on_train_begin


class SessionLedger(TrainerCallback):
    """After each checkpoint: the session's wall and training seconds so far and its skipped steps, into
    run_state.json (:meth:`~qtune.train.resume.RunSession.record_progress`)."""

    def __init__(self, session, wall, train, skipped, peak):
        self.session, self.wall, self.train, self.skipped, self.peak = session, wall, train, skipped, peak

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.session.record_progress(state.global_step, self.wall(), self.train(), self.skipped(), int(self.peak()))

