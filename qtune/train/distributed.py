"""Training on more than one process: rank, world size, the main process, and launching through torchrun.

qtune has no distributed layer of its own. ``torchrun`` (``torch.distributed.run``) or ``accelerate
launch`` start one process per GPU and set ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; accelerate's
``PartialState`` opens the process group (the same one transformers' Trainer then uses); the Trainer
wraps the model in DDP or FSDP, shards the training data with its seeded sampler (each rank takes
every ``world_size``-th micro batch of one shuffled order, so a global step sees the rows one process
with ``micro_batch × world_size`` would), averages the loss over the tokens of all ranks, and saves
checkpoints (weights and optimizer from the main process, each rank its RNG state). What is left for qtune lives here: who writes the run
directory, which device a rank loads onto, the eval loss summed over ranks, and the Trainer options a
``distributed`` recipe section stands for.

Nothing here reads the environment, torch or a device at import time.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from qtune.errors import QtuneError

if TYPE_CHECKING:  # pragma: no cover
    from qtune.recipe.schema import DistributedSection

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, as the launcher (torchrun, accelerate launch) set it; one process otherwise."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def under_launcher() -> bool:
    """Started by torchrun or accelerate launch (they set LOCAL_RANK), so ``--nproc`` must not launch again."""
    return "LOCAL_RANK" in os.environ


def is_main() -> bool:
    return world().is_main


def backend_for(section: "DistributedSection", device: str) -> str:
    return ("nccl" if device == "cuda" else "gloo") if section.backend == "auto" else section.backend


def init(section: "DistributedSection", device: str) -> World:
    """Open the process group when launched with more than one process, and pin this rank's GPU."""
    w = world()
    if section.backend == "nccl" and device != "cuda":  # train.device auto on a machine without a GPU: known only here
        raise QtuneError(f"distributed.backend: nccl needs CUDA GPUs (running on {device}); use distributed.backend=gloo or auto")
    if section.strategy == "fsdp" and device != "cuda":
        raise QtuneError(
            f"distributed.strategy: fsdp needs CUDA GPUs (running on {device}; accelerate would quietly run DDP "
            "instead); use distributed.strategy=ddp"
        )
    if section.strategy == "fsdp" and not under_launcher():
        raise QtuneError("distributed.strategy: fsdp runs under a launcher; start it with qtune train --nproc N, "
                         "torchrun or accelerate launch")
    if device == "cuda" and under_launcher():
        import torch

        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", w.local_rank + 1)), torch.cuda.device_count()
        if per_node > gpus and backend_for(section, device) == "nccl":  # alike on every rank: all stop with one error
            raise QtuneError(
                f"distributed.nproc: {per_node} processes on this node but {gpus} GPU(s) visible; launch at most "
                "one process per GPU (NCCL puts no two ranks on one device), or set distributed.backend=gloo to "
                "let ranks share GPUs (slower: gloo stages CUDA tensors through the host)"
            )
        torch.cuda.set_device(gpu_of(w.local_rank))
    if w.size > 1:
        from accelerate import PartialState

        PartialState(cpu=device == "cpu", backend=backend_for(section, device))
    return w


def gpu_of(local_rank: int) -> int:
    """The GPU of a local rank: its own when there are enough, else shared round-robin (gloo only, see :func:`init`)."""
    import torch

    return local_rank % max(torch.cuda.device_count(), 1)


def placement(device: str) -> str:
    """Where this rank loads the model: its own GPU (``cuda:LOCAL_RANK``), never one GPU for all ranks."""
    return f"cuda:{gpu_of(world().local_rank)}" if device == "cuda" else device


def _group_open() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group_open():
        import torch.distributed as dist

        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only; every rank returns its result, or raises the QtuneError it raised."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except QtuneError as e:
            error = e
    if _group_open():
        import torch.distributed as dist

        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (filling caches), then the other ranks (reading them)."""
    if not _group_open():
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def all_sum(values: list[float]) -> list[float]:
    """``values`` summed over every rank (float64), or unchanged in one process."""
    if not _group_open():
        return values
    import torch
    import torch.distributed as dist

    device = f"cuda:{gpu_of(world().local_rank)}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def shard_rows(rows: list[dict], rank: int, size: int) -> list[dict]:
    """Rank ``rank``'s share of ``rows`` (every ``size``-th row), padded to the same length on every rank.

    The padding repeats row 0 with no trained token (labels all -100): it adds nothing to the loss
    sums, and every rank runs the same number of forward passes, which FSDP's collectives need.
    """
    share = rows[rank::size]
    per_rank = -(-len(rows) // size)
    if len(share) < per_rank and rows:
        blank = {**rows[0], "labels": [-100] * len(rows[0]["labels"])}
        share = share + [blank] * (per_rank - len(share))
    return share


def trainer_arguments(section: "DistributedSection", device: str) -> dict:
    """The TrainingArguments a ``distributed`` section stands for (the Trainer does the wrapping)."""
    args: dict = {"ddp_find_unused_parameters": False}  # every LoRA weight is used each step
    if world().size > 1:
        args["ddp_backend"] = backend_for(section, device)
    if section.strategy == "fsdp":  # FSDP2 (fully_shard), transformers' default; each decoder layer is one unit
        args["fsdp"] = True
        args["fsdp_config"] = {
            "version": 2,
            "reshard_after_forward": section.sharding == "full_shard",  # shard_grad_op keeps layers gathered
            "cpu_offload": section.cpu_offload,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "activation_checkpointing": False,  # gradient checkpointing is the model's own (attach_lora)
        }
    return args


def wrapping(trainer) -> str | None:
    """How the Trainer really wrapped the model: ``fsdp``, ``ddp``, or None (one process, unwrapped)."""
    if trainer.is_fsdp_enabled:
        return "fsdp"
    from torch.nn.parallel import DistributedDataParallel

    return "ddp" if isinstance(trainer.model_wrapped, DistributedDataParallel) else None


def adapter_state_dict(trainer) -> dict | None:
    """Under FSDP, the full state dict gathered from every rank (a collective: call it on all); else None."""
    if not trainer.is_fsdp_enabled:
        return None
    return trainer.accelerator.get_state_dict(trainer.model)  # state_dict_type FULL_STATE_DICT (trainer_arguments)


def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m qtune.cli ARGV``: this command, N times.

    ``--nproc`` is dropped from ARGV: the launched processes take the launcher's count, and torchrun's
    own parser would read it as an abbreviation of its ``--nproc-per-node``. ``--standalone`` is one
    node with a free local port (no clash with another job's default 29500); several nodes are
    torchrun's own flags (README, "More than one GPU").
    """
    args, skip = [], False
    for a in argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        args.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "qtune.cli", *args]


def relaunch(nproc: int, argv: list[str]) -> None:
    """Replace this process by torchrun running ``qtune ARGV`` on ``nproc`` processes (signals go straight to it)."""
    cmd = launch_command(nproc, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
