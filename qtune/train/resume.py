"""Exact resume, and a run directory that a failed attempt never blocks.

A ``train`` attempt goes through three moments:

1. :func:`open_run`, before anything heavy loads, decides whether the directory may be used: it
   is new or empty; ``--overwrite`` was given; or ``--resume`` names a run this layout wrote
   (``run_state.json``), not yet finished, whose recipe trains the same. Only the fields in
   :data:`TRAINING_NEUTRAL` may differ on resume (tracking, export, how often to log, evaluate and
   save, how many checkpoints to keep, the NaN policy, the data cache switch): every other field
   changes the losses, and a change to one is refused with the fields named.
2. Until :meth:`RunSession.begin` nothing is written; if the attempt fails before it (a bad model,
   bad data), :meth:`RunSession.attempt` removes what the attempt created, so a retry finds the
   directory as it was.
3. :meth:`RunSession.begin`, once the trainer exists, clears the old run (``--overwrite``), writes
   ``recipe.yaml`` and ``run_state.json`` and cuts ``metrics.jsonl`` back to the checkpoint's step.

Exactness comes from transformers' own resume (optimizer, scheduler, RNG states, the sampler's
batches skipped to the checkpoint's step); what this module adds is picking only complete
checkpoints. :class:`~qtune.train.trainer.QtuneTrainer` writes each one under ``.staging/`` and
renames it into place, so ``checkpoint-N`` under its final name is complete; a folder without
its ``trainer_state.json`` (or naming another step) is still never picked, and the files of the
one picked are read through before training starts, so a corrupted one is an error naming the
file rather than a traceback mid-resume.
"""

from __future__ import annotations

import json
import shutil
import uuid
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from qtune import rundir
from qtune.errors import QtuneError

RUN_LAYOUT = 1  # run_state.json's "layout": bump when a run directory written before cannot be resumed
TRAINING_NEUTRAL = (
    "tracking.", "export.", "train.logging_steps", "train.eval_steps", "train.save_steps",
    "train.keep_checkpoints", "train.on_nan", "data.cache",
)
CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


def rng_files(world_size: int) -> list[str]:
    """The Trainer saves one RNG state per process (``rng_state_<rank>.pth`` when there are several)."""
    return ["rng_state.pth"] if world_size == 1 else [f"rng_state_{r}.pth" for r in range(world_size)]


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named ``checkpoint-N``; None for anything else (``.staging``, temp names)."""
    prefix, _, n = path.name.partition("-")
    return int(n) if prefix == "checkpoint" and n.isdigit() else None


def complete_checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of ``run``, oldest first: named ``checkpoint-N``, with a trainer state for step N."""
    found = []
    for path in (run / rundir.CHECKPOINTS).glob("checkpoint-*"):
        step = checkpoint_step(path)
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if step is not None and isinstance(state, dict) and state.get("global_step") == step:
            found.append((step, path))
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints under ``root`` (the checkpoints folder)."""
    for old in complete_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: Path, world_size: int = 1) -> None:
    """Read every file resuming loads; a one-line error naming the first unreadable one."""
    from safetensors import safe_open

    hint = f"delete {path} to resume from the checkpoint before it, or pass --overwrite"
    for name in (*CHECKPOINT_FILES, *rng_files(world_size)):
        file = path / name
        if not file.is_file():
            raise QtuneError(f"{file}: missing from the checkpoint; {hint}")
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        f.get_slice(key)
            elif name.endswith((".pt", ".pth")):
                with zipfile.ZipFile(file) as z:  # torch.save's zip archive: every member's CRC checked
                    bad = z.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} fails its checksum")
        except Exception as e:  # noqa: BLE001 - any failure to read the file is the same user-facing problem
            raise QtuneError(
                f"{file}: corrupted checkpoint file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {hint}"
            ) from None


def changed_fields(stored: dict, given: dict) -> list[str]:
    """Dotted fields whose values differ and change training (not in :data:`TRAINING_NEUTRAL`), as ``field (old → new)``."""
    a, b = _flatten(stored), _flatten(given)
    out = []
    for key in sorted(set(a) | set(b)):
        neutral = any(key == n.rstrip(".") or key.startswith(n) for n in TRAINING_NEUTRAL)  # "export": None
        if a.get(key, "<unset>") != b.get(key, "<unset>") and not neutral:
            out.append(f"{key} ({a.get(key, '<unset>')!r} → {b.get(key, '<unset>')!r})")
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cut_metrics(run: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (and drop a line a kill left half-written)."""
    kept = []
    for line in (run / rundir.METRICS).read_text(encoding="utf-8").splitlines() if (run / rundir.METRICS).exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line + "\n")
    rundir.write_text(run / rundir.METRICS, "".join(kept))


class RunSession:
    """One ``train`` attempt on a run directory (see the module docstring)."""

    def __init__(self, run: Path, overwrite: bool, checkpoint: Path | None, state: dict):
        self.run, self.overwrite, self.checkpoint, self.state = run, overwrite, checkpoint, state
        self.begun = False
        self.writes = True  # False on every rank but the main one: the run directory is the main process's

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None

    @property
    def resume_step(self) -> int:
        return checkpoint_step(self.checkpoint) if self.checkpoint else 0

    @property
    def eval_before(self) -> float | None:
        return self.state.get("eval_loss_before") if self.resuming else None

    @contextmanager
    def attempt(self) -> Iterator["RunSession"]:
        """Undo what this attempt created in the run directory if it fails before :meth:`begin`."""
        existed = self.run.exists()
        before = set(self.run.iterdir()) if existed else set()
        try:
            yield self
        except BaseException:
            if not self.begun and self.writes:
                if not existed:
                    shutil.rmtree(self.run, ignore_errors=True)
                elif self.run.exists():
                    for path in set(self.run.iterdir()) - before:
                        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            raise

    def begin(self, recipe, train_rows: list[dict]) -> None:
        """Training starts: clear an overwritten run, write recipe.yaml and run_state.json, cut metrics.jsonl.

        A resumed run must see the same training rows (a data file edited since would change them
        without changing the recipe): their fingerprint is stored and compared.
        """
        from qtune.recipe import dump_recipe

        fingerprint = rows_fingerprint(train_rows)
        if self.resuming and self.state.get("train_rows_sha256") not in (None, fingerprint):
            raise QtuneError(
                f"data.train: the training rows differ from those {self.run} was trained on (a data file "
                f"changed since); restore the data, or set train.output_dir=<new dir>"
            )
        self.state["train_rows_sha256"] = fingerprint
        self.state["sessions"] = self.state.get("sessions", 0) + 1
        if not self.writes:
            self.begun = True
            return
        if self.overwrite and self.run.exists():
            for path in self.run.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.run.mkdir(parents=True, exist_ok=True)
        if self.resuming:
            cut_metrics(self.run, self.resume_step)
            for path in (self.run / rundir.CHECKPOINTS).iterdir():  # staging leftovers, incomplete or later folders
                if path.is_dir() and (path not in complete_checkpoints(self.run) or checkpoint_step(path) > self.resume_step):
                    shutil.rmtree(path, ignore_errors=True)
        else:
            (self.run / rundir.METRICS).unlink(missing_ok=True)
            shutil.rmtree(self.run / rundir.CHECKPOINTS, ignore_errors=True)
        rundir.write_text(self.run / rundir.RECIPE, dump_recipe(recipe))
        self.save_state()
        self.begun = True

    def record_eval_before(self, loss: float) -> None:
        self.state["eval_loss_before"] = loss
        self.save_state()

    def record_progress(self, step: int, wall_s: float, train_s: float, skipped: list[int], peak_bytes: int) -> None:
        """After checkpoint ``step`` is complete: this session's time and skipped steps so far, in run_state.json,
        so that the summary of a run resumed after a crash still covers the sessions before it."""
        entry = {
            "session": self.state["sessions"],
            "step": step,
            "wall_s": wall_s,
            "train_s": train_s,
            "peak_memory_bytes": peak_bytes,
            "nonfinite_steps_skipped": [s for s in skipped if s <= step],
        }
        self.state["ledger"] = [e for e in self.state.get("ledger", []) if e["session"] != entry["session"]] + [entry]
        self.save_state()

    def whole_run(self, wall_s: float, train_s: float, tokens: int, skipped: list[int], peak_bytes: int) -> dict:
        """Summary figures over every session: this one's plus what the earlier ones recorded at their last
        checkpoint (work after it was lost and redone, so its time is not in ``train_s``)."""
        earlier = [e for e in self.state.get("ledger", []) if e["session"] < self.state["sessions"]]
        kept = sorted({s for e in earlier for s in e["nonfinite_steps_skipped"] if s <= self.resume_step} | set(skipped))
        train_total = train_s + sum(e["train_s"] for e in earlier)
        return {
            "wall_s": wall_s + sum(e["wall_s"] for e in earlier),
            "tokens_per_s": tokens / train_total if train_total > 0 else None,
            "peak_memory_bytes": max([peak_bytes] + [e["peak_memory_bytes"] for e in earlier]),
            "nonfinite_steps_skipped": kept,
        }

    def save_state(self) -> None:
        if self.writes:
            rundir.write_json(self.run / rundir.RUN_STATE, self.state)


def rows_fingerprint(rows: list[dict]) -> str:
    """sha256 over every row's token ids and labels, in order; a preference row (text or messages, tokenized later
    by TRL) by its JSON."""
    import hashlib
    import json

    import numpy as np

    h = hashlib.sha256()
    for row in rows:
        if "input_ids" not in row:
            h.update(json.dumps(row, sort_keys=True).encode())
        for key in ("input_ids", "labels") if "input_ids" in row else ():
            h.update(np.asarray(row[key], dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def new_state() -> dict:
    return {"layout": RUN_LAYOUT, "run_id": uuid.uuid4().hex[:12], "eval_loss_before": None, "sessions": 0}


def holds_a_run(run: Path) -> bool:
    """Whether ``run`` (train.output_dir) holds files already; a one-line error when it is a file."""
    if run.exists() and not run.is_dir():
        raise QtuneError(f"train.output_dir: '{run}' is a file, not a directory; set train.output_dir=<new dir>")
    return run.is_dir() and any(run.iterdir())


def open_run(recipe, overwrite: bool, resume: bool, world_size: int = 1) -> RunSession:
    """Check that ``train`` may use ``train.output_dir`` as asked; writes nothing (see the module docstring)."""
    from qtune.recipe import dump_recipe

    run = Path(recipe.train.output_dir)
    holds_files = holds_a_run(run)
    if not holds_files or overwrite:
        return RunSession(run, overwrite, None, new_state())
    if not resume:
        raise QtuneError(
            f"train.output_dir: '{run}' already holds a run; pass --resume to continue it, --overwrite to replace it, "
            f"or set train.output_dir=<new dir>"
        )
    state = read_state(run)
    if (run / rundir.SUMMARY).is_file():
        raise QtuneError(
            f"--resume: '{run}' holds a finished run ({rundir.SUMMARY}); nothing to resume "
            f"(pass --overwrite to train it again, or set train.output_dir=<new dir>)"
        )
    try:
        stored = yaml.safe_load((run / rundir.RECIPE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise QtuneError(
            f"{run / rundir.RECIPE}: cannot be read ({type(e).__name__}); the run cannot be resumed, pass --overwrite"
        ) from None
    if not isinstance(stored, dict):
        raise QtuneError(f"{run / rundir.RECIPE}: not a recipe mapping; the run cannot be resumed, pass --overwrite")
    changed = changed_fields(stored, yaml.safe_load(dump_recipe(recipe)))
    if changed:
        raise QtuneError(
            f"--resume: the recipe changes training against {run / rundir.RECIPE}: {', '.join(changed)}; "
            f"undo those changes, or set train.output_dir=<new dir>"
        )
    ckpts = complete_checkpoints(run)
    checkpoint = ckpts[-1] if ckpts else None
    if checkpoint is not None:
        verify_checkpoint(checkpoint, world_size)
    return RunSession(run, False, checkpoint, state if checkpoint is not None else {**new_state(), "run_id": state["run_id"]})


def read_state(run: Path) -> dict:
    path = run / rundir.RUN_STATE
    if not (run / rundir.RECIPE).is_file():
        raise QtuneError(
            f"train.output_dir: '{run}' holds no qtune run ({rundir.RECIPE} missing), so --resume has nothing to continue; "
            f"pass --overwrite or set train.output_dir=<new dir>"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QtuneError(
            f"{path}: missing; this run was written by another qtune version and cannot be resumed (pass --overwrite)"
        ) from None
    except (OSError, ValueError) as e:
        raise QtuneError(f"{path}: cannot be read ({type(e).__name__}); the run cannot be resumed (pass --overwrite)") from None
    if not isinstance(state, dict) or state.get("layout") != RUN_LAYOUT or not isinstance(state.get("run_id"), str):
        layout = state.get("layout") if isinstance(state, dict) else None
        raise QtuneError(f"{path}: run layout {layout!r}, this qtune resumes layout {RUN_LAYOUT}; pass --overwrite to train it again")
    return state
