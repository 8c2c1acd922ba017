"""Every GPU claim of qtune measured in one device call: a hard deadline, steps in priority order, results kept as they come.

One command (``scripts/gpu_all.sh``, which installs the carried wheels and calls this) runs the steps of
:mod:`gpu_steps` in order. Each step gets its budget, cut to what is left before the deadline (a step that cannot get
its minimum is skipped and says so). After every step three files are rewritten in ``--out`` (the device tool's
``$OUT``), so a call killed at its limit still returns everything measured before:

    summary.json   the mode, device, deadline, and per step: status, seconds, budget, the figures it reported
    summary.md     the same as one markdown table
    logs.tar.gz    every step's full log (and the files steps wrote beside it)

The first step checks the environment (versions, a bitsandbytes round trip on the device, the carried wheels'
Python and CUDA against this machine's); if it fails the run stops there with one ``error:`` line.

``--tiny`` runs the same steps through the same code on CPU with tiny shapes (Triton's interpreter), so the script
is tested in CI (tests/scripts/test_gpu_all.py) between GPU runs.

    scripts/prepare_gpu.sh                                  # once, on the CPU machine: builds .gpu/ (carried)
    # device tool: run(command="bash scripts/gpu_all.sh", carry=[".gpu"], timeout_s=580)
    python scripts/gpu_all.py --tiny --out /tmp/gpu-all     # CPU rehearsal
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import gpu_steps

REPO = Path(__file__).resolve().parent.parent
RESERVE_S = 8  # kept back from the deadline for the last summary and archive
TINY_SLOWER = 4  # --tiny: budgets x4 (the GPU's; the shared 2-core CPU ran env in 21-25 s under load 16, 30 s is tight)


def run_command(cmd: gpu_steps.Command, limit: float, log, env: dict) -> tuple[int | None, float]:
    """Run ``cmd`` with its output appended to ``log``; (exit status or None if killed at ``limit``, seconds)."""
    log.write(f"$ {' '.join(cmd.argv)}\n")
    log.flush()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd.argv, cwd=REPO, env={**env, **cmd.env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: a timeout ends torchrun's ranks too
    try:
        rc = proc.wait(timeout=max(limit, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    seconds = time.monotonic() - t0
    log.write(f"\n== exit {'timeout' if rc is None else rc} after {seconds:.1f} s\n")
    log.flush()
    return rc, seconds


def run_step(step: gpu_steps.Step, limit: float, logs: Path, env: dict) -> dict:
    """Run a step's commands in order inside ``limit`` seconds; its record for the summary."""
    record = {"step": step.name, "what": step.what, "budget_s": step.budget_s, "limit_s": round(limit),
              "evidence": step.evidence, "status": "ok", "results": [], "notes": []}
    t0 = time.monotonic()
    log_path = logs / f"{step.name}.log"
    with open(log_path, "a", encoding="utf-8") as log:
        for cmd in step.commands:
            left = limit - (time.monotonic() - t0)
            if left < 1:
                record["status"] = "timeout"
                record["notes"].append(f"{cmd.name}: not started, the step's {limit:.0f} s were used")
                break
            start = log_path.stat().st_size
            rc, _ = run_command(cmd, left, log, env)
            log.flush()
            text = log_path.read_text(encoding="utf-8", errors="replace")[start:]
            record["results"] += [{"command": cmd.name, **r} for r in gpu_steps.results_of(text, cmd)]
            outcome = gpu_steps.outcome(rc, cmd.expect, text)
            if outcome != "ok":
                record["notes"].append(f"{cmd.name}: {outcome}")
                if record["status"] == "ok":
                    record["status"] = "timeout" if rc is None else "failed"
            if rc is None:
                break
    record["seconds"] = round(time.monotonic() - t0, 1)
    return record


def markdown(summary: dict) -> str:
    lines = [f"# gpu_all: {summary['mode']} on {summary.get('device', '?')}",
             "", f"deadline {summary['deadline_s']} s, elapsed {summary['elapsed_s']} s; {summary['state']}", "",
             "| step | status | s | budget s | figures |", "| --- | --- | --- | --- | --- |"]
    for s in summary["steps"]:
        figures = "; ".join(gpu_steps.brief(r) for r in s["results"]) or "—"
        if s["notes"]:
            figures += " (" + "; ".join(s["notes"]) + ")"
        lines.append(f"| {s['step']} | {s['status']} | {s.get('seconds', 0)} | {s['budget_s']} | {figures} |")
    return "\n".join(lines) + "\n"


def write_out(out: Path, summary: dict, logs: Path) -> None:
    """summary.json, summary.md and logs.tar.gz in ``out``, each replaced whole (never left half-written)."""
    def put(name: str, data: bytes) -> None:
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / name)

    put("summary.json", json.dumps(summary, indent=1).encode())
    put("summary.md", markdown(summary).encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(logs, arcname="logs")
    put("logs.tar.gz", buf.getvalue())


def child_env(tiny: bool) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               TRITON_INTERPRET="1" if tiny else "0", TOKENIZERS_PARALLELISM="false")
    paths = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny shapes, same steps (the CI rehearsal)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / ".gpu" / "out"))
    ap.add_argument("--deadline", type=float, help="seconds for the whole run (default 540 on the GPU, 300 tiny)")
    ap.add_argument("--model", default=str(REPO / ".gpu" / "tiny"), help="the tiny model (scripts/prepare_gpu.sh)")
    ap.add_argument("--work", default="/tmp/qtune-gpu-all", help="scratch folder (models, runs, data)")
    ap.add_argument("--only", nargs="+", help="run only these steps (env always runs)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    deadline = args.deadline or (300 if args.tiny else 540)
    out, work = Path(args.out), Path(args.work)
    logs = work / "logs"
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.iterdir():
        old.unlink()
    ctx = gpu_steps.Context(tiny=args.tiny, python=sys.executable, model=Path(args.model), work=work, logs=logs)
    steps = [s for s in gpu_steps.steps(ctx) if s.name == "env" or not args.only or s.name in args.only]
    summary = {"mode": "tiny (CPU)" if args.tiny else "gpu", "deadline_s": deadline, "elapsed_s": 0,
               "state": "running", "steps": []}
    env = child_env(args.tiny)
    for step in steps:
        left = deadline - (time.monotonic() - t0) - RESERVE_S
        why = step.tiny_skip if args.tiny else ""
        # the environment check is the gate and always runs; a minimum, like a budget, is x4 on the CPU with --tiny
        minimum = 0 if step.name == "env" else step.min_s * (TINY_SLOWER if args.tiny else 1)
        if left < minimum or why:
            summary["steps"].append({"step": step.name, "what": step.what, "budget_s": step.budget_s, "status": "skipped",
                                     "evidence": step.evidence, "results": [],
                                     "notes": [why or f"needs at least {minimum} s, {max(left, 0):.0f} s left"]})
            write_out(out, summary, logs)
            continue
        budget = step.budget_s * (TINY_SLOWER if args.tiny else 1)
        print(f"== {step.name}: budget {budget} s, limit {min(budget, left):.0f} s", flush=True)
        record = run_step(step, min(budget, left), logs, env)
        summary["steps"].append(record)
        if step.name == "env":
            summary.update({k: v for r in record["results"] for k, v in r.items() if k in ("device", "versions")})
        summary["elapsed_s"] = round(time.monotonic() - t0, 1)
        print(f"== {step.name}: {record['status']} in {record['seconds']} s; "
              + "; ".join(gpu_steps.brief(r) for r in record["results"]), flush=True)
        if step.name == "env" and record["status"] != "ok":
            summary["state"] = "stopped: the environment is wrong"
            write_out(out, summary, logs)
            print(gpu_steps.first_error(logs / "env.log", record["status"], record["limit_s"]), file=sys.stderr)
            return 2
        write_out(out, summary, logs)
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    summary["state"] = "done"
    write_out(out, summary, logs)
    print(f"== done in {summary['elapsed_s']} s: {out}/summary.md", flush=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in summary["steps"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
