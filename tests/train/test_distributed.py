"""Data-parallel training on CPU: two gloo processes under torchrun against one process with the same global batch.

The tiny NF4 Llama from config is trained 4 steps in this process with micro batch 4, and by
``torchrun --nproc_per_node 2`` running qtune's CLI with micro batch 2 (global batch 4): 4 steps, made
to look killed after step 2's checkpoint, then ``--resume`` on both ranks (tests/train/ddp_worker.py,
which then also dumps each rank's rows of one epoch). LoRA dropout is 0, the LR is constant,
the sampler is seeded, and accelerate gives rank r every 2nd micro batch of the one shuffled order,
so each step sees the same 4 rows either way. Measured (torch 2.13 CPU, gloo, 2 ranks): per-step
losses differ by at most 9.5e-7 (steps 3-4, after the resume, by 0), eval losses by 6.7e-7, adapter
weights by 5.8e-7 with LoRA B up to 4.0e-2 after 4 steps; the tests allow atol 1e-4 on losses and
1e-5 on weights. About 90 s on the shared 2-core machine (one launch, 40 s of CPU time).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qtune import rundir
from qtune.recipe import load_recipe
from qtune.train import distributed
from qtune.train.run import train

from tests.conftest import REPO, write_recipe
from tests.train import ddp_worker

LAUNCH_TIMEOUT_S = 300


def _env() -> dict:
    """This environment for a launched child: the worktree's qtune first, no launcher variables of ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _recipe(root: Path, name: str, model_dir: Path, micro: int, nproc: int, steps: int, **sections) -> Path:
    (root / name).mkdir(parents=True)
    return write_recipe(
        root / name / "r.yaml",
        model={"path": str(model_dir)},
        quant={"method": "nf4", "compute_dtype": "float32"},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        data={"max_examples": 16, "max_eval_examples": 7},  # 7 eval rows: the ranks' shares are uneven
        train={"max_steps": steps, "micro_batch_size": micro, "lr": 1e-2, "scheduler": "constant", "save_steps": 2},
        distributed={"nproc": nproc},
        **sections,
    )


def _rows_recipe(root: Path, name: str, micro: int, nproc: int) -> Path:
    return write_recipe(root / f"{name}-rows.yaml", model={"path": "unused"},
                        train={"micro_batch_size": micro, "output_dir": str(root / f"{name}-rows")}, distributed={"nproc": nproc})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir):
    """(one-process run dir, two-process run dir, the launch's stderr, root): one torchrun launch for every check."""
    root = tmp_path_factory.mktemp("ddp")
    one = load_recipe(_recipe(root, "one", tiny_llama_dir, micro=4, nproc=1, steps=4))
    train(one)
    two = _recipe(root, "two", tiny_llama_dir, micro=2, nproc=2, steps=4, tracking={"backend": "tensorboard"})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(ddp_worker.__file__)), str(two), "2", str(_rows_recipe(root, "two", micro=2, nproc=2)), str(root)],
        env=_env(), cwd=root, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(one.train.output_dir), two.parent / "run", proc.stderr, root


def test_two_processes_give_the_losses_of_one(runs):
    one, two, _, _ = runs
    m1, m2 = rundir.read_metrics(one), rundir.read_metrics(two)
    a = [m["loss"] for m in m1 if "loss" in m]
    b = [m["loss"] for m in m2 if "loss" in m]
    assert len(a) == len(b) == 4
    diffs = [abs(x - y) for x, y in zip(a, b)]
    assert max(diffs) < 1e-4, f"loss: max diff {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e} ({a} vs {b})"
    assert len(set(a)) == len(a), "steps must see different rows, or the order is not being checked"
    e1 = {m["step"]: m["eval_loss"] for m in m1 if "eval_loss" in m}  # before and after: steps 0 and 4
    e2 = [(m["step"], m["eval_loss"]) for m in m2 if "eval_loss" in m]  # the first session's step-4 eval was cut
    assert [s for s, _ in e2] == [0, 4]
    diffs = [abs(e1[s] - x) for s, x in e2 if s in e1]
    assert max(diffs) < 1e-4, f"eval loss: max diff {max(diffs):.2e} ({e1} vs {e2})"
    s1, s2 = rundir.read_json(one / rundir.SUMMARY), rundir.read_json(two / rundir.SUMMARY)
    assert s2["train_tokens"] == s1["train_tokens"], "tokens are counted over both ranks"
    assert (s1["world_size"], s1["global_batch_size"]) == (1, 4)
    assert (s2["world_size"], s2["global_batch_size"], s2["distributed"]) == (2, 4, "ddp")


def test_two_processes_give_the_adapter_of_one(runs):
    from safetensors.torch import load_file

    one, two, _, _ = runs
    a = load_file(one / rundir.ADAPTER / "adapter_model.safetensors")
    b = load_file(two / rundir.ADAPTER / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    moved = max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-3, "LoRA B starts at zero; 4 steps at lr 1e-2 must move it, or the comparison is empty"
    diffs = [float((a[k] - b[k]).abs().max()) for k in a]
    assert max(diffs) < 1e-5, f"max diff {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e} (LoRA B up to {moved:.2e})"


def test_the_run_directory_is_written_once(runs):
    _, two, stderr, _ = runs
    assert sorted(p.name for p in two.iterdir()) == sorted(
        [rundir.ADAPTER, rundir.CHECKPOINTS, rundir.LOSS_PLOT, rundir.METRICS, rundir.RECIPE, rundir.RUN_STATE, rundir.SUMMARY,
         "tensorboard"]
    ), "no temporary files left by a second writer"
    events = sorted(p.name for p in (two / "tensorboard").rglob("events.out.tfevents.*"))  # ...<host>.<pid>.<n>
    assert events and len({name.split(".")[-2] for name in events}) == 1, f"one process tracks: {events}"
    metrics = rundir.read_metrics(two)
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4], "one metrics line per step, over both sessions"
    ckpt = two / rundir.CHECKPOINTS / "checkpoint-2"
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file(), "each rank saves its RNG state"
    assert not (two / rundir.CHECKPOINTS / ".staging").exists()
    assert stderr.count("done in") == 2 and stderr.count("eval loss before training") == 2, "only the main process reports"


def test_each_row_once_per_epoch_and_in_the_one_process_order(runs):
    """Rank 0's micro batch k and rank 1's together are the one process's batch k (16 rows, global batch 4)."""
    root = runs[3]
    single = ddp_worker.epoch_batches(str(_rows_recipe(root, "one", micro=4, nproc=1)), str(root / "one-rows"))
    ranks = [json.loads((root / f"rows-{r}.json").read_text()) for r in (0, 1)]
    seen = sorted(i for batches in ranks for batch in batches for i in batch)
    assert seen == list(range(ddp_worker.ROWS)), f"every row exactly once per epoch, got {seen}"
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in single]
    assert sum(single, []) != list(range(ddp_worker.ROWS)), "the seeded sampler shuffles, so the order is being checked"


def test_eval_shards_pad_to_the_same_length_with_untrained_rows():
    rows = [{"input_ids": [i, i], "labels": [i, i]} for i in range(7)]
    shares = [distributed.shard_rows(rows, r, 2) for r in (0, 1)]
    assert [len(s) for s in shares] == [4, 4], "every rank runs the same number of forward passes"
    assert shares[1][-1]["labels"] == [-100, -100], "the padding row has no trained token"
    real = sorted(r["input_ids"][0] for s in shares for r in s if r["labels"][0] != -100)
    assert real == list(range(7))


def test_nproc_launches_torchrun_standalone():
    expected = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                "-m", "qtune.cli", "train", "r.yaml", "train.lr=1e-4", "--resume"]
    for argv in (["train", "r.yaml", "--nproc", "4", "train.lr=1e-4", "--resume"],
                 ["train", "--nproc=4", "r.yaml", "train.lr=1e-4", "--resume"]):
        # torchrun's parser would take --nproc for its --nproc-per-node (measured: "ambiguous option")
        assert distributed.launch_command(4, argv)[1:] == expected


def test_validate_shows_the_global_batch(tmp_path, capsys):
    from qtune.cli import main

    path = write_recipe(tmp_path / "r.yaml", model={"path": "unused"}, train={"micro_batch_size": 3, "grad_accumulation": 2})
    assert main(["validate", str(path), "--nproc", "4"]) == 0
    assert "global batch 24 (micro 3 x grad accumulation 2 x 4 process(es), ddp)" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["auto", "gloo"])
def test_two_ranks_share_one_gpu_only_through_gloo(backend, monkeypatch):
    """The CUDA branch of ``init`` and ``placement`` with the device faked (one GPU, rank 1 of 2 on this node): NCCL
    is refused in one line that names the way out; gloo pins rank 1 to GPU 0, where its model loads."""
    import torch

    from qtune.recipe.schema import DistributedSection

    pinned = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)  # WORLD_SIZE 1: no process group is opened, only the device logic runs
    section = DistributedSection(backend=backend)
    if backend == "auto":
        with pytest.raises(Exception, match=r"2 processes on this node but 1 GPU\(s\).*distributed.backend=gloo"):
            distributed.init(section, "cuda")
        assert pinned == []
    else:
        distributed.init(section, "cuda")
        assert pinned == [0] and distributed.placement("cuda") == "cuda:0"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="train.device: auto is a GPU here")
def test_nccl_on_a_machine_without_a_gpu_is_refused_before_anything_loads(tmp_path, tiny_llama_dir, capsys):
    """The README's '`nccl` on CPU': with train.device auto the recipe cannot know; train refuses it, one line."""
    from qtune.cli import main

    recipe = write_recipe(tmp_path / "r.yaml", model={"path": str(tiny_llama_dir)}, quant={"method": "none"},
                          distributed={"backend": "nccl"})
    assert main(["train", str(recipe), "train.device=auto", "--no-plan-check"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: distributed.backend: nccl needs CUDA GPUs (running on cpu); use distributed.backend=gloo "
                           "or auto"), err[-2000:]
    assert not (tmp_path / "run").exists()
