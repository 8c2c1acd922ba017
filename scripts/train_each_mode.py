"""``qtune train`` end to end through each training mode, one after the other in this process (imports paid once).

Each mode is the same recipe and overrides plus the mode's switches, written to ROOT/MODE; printed per mode as a
``RESULT`` line: exit status, seconds, and the run's summary (eval loss before/after, tokens/s, peak memory, the
kernels that ran). The same seed and data go through every mode, so the eval losses should agree (bf16 on CUDA).

    python scripts/train_each_mode.py ROOT [--tiny] -- RECIPE OVERRIDES...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODES = {  # name -> the recipe switches that select it
    "bitsandbytes": ["train.kernels=bitsandbytes"],
    "triton": ["train.kernels=triton"],
    "blocks": ["train.kernels=blocks"],
    "fast": ["train.kernels=blocks", "train.frozen_dtype=compute", "train.cross_entropy=liger", "train.rope=liger",
             "train.rms_norm=liger"],
    "compile": ["train.kernels=bitsandbytes", "train.compile=layers"],
    "offload_packed": ["train.kernels=bitsandbytes", "train.offload_activations=true", "data.packing=true"],
}
# On CPU (--tiny): liger's RMSNorm kernel does not run under Triton's interpreter (qtune.kernels.dispatch), and
# compiling the layers is minutes of C++ on 2 cores (tests/train/test_compile.py covers it).
TINY_CHANGES = {"fast": {"train.rms_norm=liger": "train.rms_norm=torch"}, "compile": None}
KEYS = ("eval_loss_before", "eval_loss_after", "tokens_per_s", "peak_memory_bytes", "peak_memory_kind", "kernels",
        "device")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("recipe_and_overrides", nargs="+")
    args = ap.parse_args()
    from qtune.cli import main as qtune

    failed = 0
    for mode in args.modes:
        switches = MODES[mode]
        if args.tiny and mode in TINY_CHANGES:
            change = TINY_CHANGES[mode]
            if change is None:
                print("RESULT " + json.dumps({"mode": mode, "skipped": "tiny: CPU compile takes minutes"}), flush=True)
                continue
            switches = [change.get(s, s) for s in switches]
        out = args.root / mode
        t0 = time.perf_counter()
        try:
            rc = qtune(["train", "--overwrite", *args.recipe_and_overrides, *switches, f"train.output_dir={out}"])
        except SystemExit as e:
            rc = e.code
        except Exception as e:  # noqa: BLE001 - one mode's failure is its result; the next mode still runs
            print(f"error: {mode}: {type(e).__name__}: {e}", flush=True)
            rc = 1
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
        print("RESULT " + json.dumps({"mode": mode, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
                                      **{k: summary[k] for k in KEYS if k in summary}}), flush=True)
        failed |= rc != 0
    raise SystemExit(failed)


if __name__ == "__main__":
    main()
