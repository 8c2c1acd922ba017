"""Stopping a run without losing it: on SIGINT/SIGTERM, and on a NaN/inf loss or gradient.

Both work through the Trainer's public callback hooks: they set ``control.should_save`` and
``control.should_training_stop`` (or clear them), and ``train`` reads what happened afterwards.

- :class:`SignalStop`: the first SIGINT or SIGTERM lets the current step finish, then the step is
  checkpointed and training stops; a second one raises :class:`KeyboardInterrupt` at once.
- :class:`NonFiniteGuard`: before each optimizer step it checks the step's losses (recorded by
  :meth:`QtuneTrainer.training_step`) and the clipped gradients. A bad step never reaches the
  weights: its gradients are dropped, so the optimizer leaves every weight and its state as they
  were. ``train.on_nan: stop`` then stops without checkpointing that step (the last good
  checkpoint stays the newest); ``skip`` goes on with the next step (the learning-rate schedule
  still advances, so later steps keep the rates they would have had).

Under several processes (DDP) each rank decides alone: gradients are all-reduced, so the
gradient check agrees across ranks, but a signal may reach the ranks between different steps.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from transformers import TrainerCallback

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's 128 + signal number


class SignalStop(TrainerCallback):
    def __init__(self):
        self.received: int | None = None  # the first signal's number

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    @contextmanager
    def installed(self) -> Iterator["SignalStop"]:
        """Handle SIGINT/SIGTERM in the block (the main thread only), restoring the previous handlers after."""
        if threading.current_thread() is not threading.main_thread():  # Python delivers signals to the main thread only
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNAL_EXIT}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def on_step_end(self, args, state, control, **kw):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True


class NonFiniteGuard(TrainerCallback):
    def __init__(self, policy: str, say=print):
        self.policy = policy  # train.on_nan: stop | skip
        self.say = say
        self.trainer = None  # set by train: the QtuneTrainer whose ``loss_finite`` flag this reads
        self.bad_steps: list[int] = []
        self._bad = False

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        import torch

        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        flags = [torch.isfinite(g).all() for g in grads]
        loss_ok = self.trainer.loss_finite if self.trainer is not None else None
        if loss_ok is not None:
            flags.append(loss_ok)
        self._bad = bool(flags) and not bool(torch.stack([f.to(flags[0].device) for f in flags]).all())
        if self._bad:
            for p in model.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient: weights and state stay put

    def on_step_end(self, args, state, control, **kw):
        if not self._bad:
            return
        self._bad = False
        self.bad_steps.append(state.global_step)
        if self.policy == "skip":
            self.say(f"step {state.global_step}: loss or gradients are NaN/inf; skipped its update (train.on_nan: skip)")
            return
        control.should_save = False  # never checkpoint the step that went bad
        control.should_evaluate = False
        control.should_training_stop = True

    def on_step_begin(self, args, state, control, **kw):
        self._bad = False
        if self.trainer is not None:
            self.trainer.loss_finite = None
