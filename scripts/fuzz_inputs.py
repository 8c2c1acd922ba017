"""Fuzz every command's inputs (tests/fuzz_cases.py) and print the tally: cases, how each ended, tracebacks by class.

The CI slice (tests/test_fuzz_inputs.py) runs the first cases of seed 0; this runs as many as asked:

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 5 python scripts/fuzz_inputs.py --cases 600 [--seed 0] [--only 17] [-v]

Every case runs ``qtune.cli.main`` in this process on a tiny random Llama (SmolLM2's tokenizer). Exit status:
0 when every case ended as it must, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz_cases import KINDS, Workspace, generate, run_case  # noqa: E402


def tiny_model(out: Path) -> Path:
    from tests.conftest import tiny_llama

    from qtune.models.packaged import materialize

    tiny_llama().save_pretrained(out, safe_serialization=True)
    for f in materialize("smollm2-135m-instruct").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, nargs="+", help="run only these case numbers")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case and its stderr's last line")
    ap.add_argument("--show", action="store_true", help="print the whole stderr of each case that ended badly")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qtune-fuzz-"))
    ws = Workspace(root, tiny_model(root / "model"))
    ended, tracebacks, bad = collections.Counter(), collections.Counter(), []
    t0 = time.perf_counter()
    for i in args.only or range(args.cases):
        d = root / f"case-{i}"
        case = generate(args.seed, i, ws, d)
        o = run_case(case, d, ws)
        ended[(case.kind, "ok" if not o.problems else "bad", o.code)] += 1
        if o.traceback:
            tracebacks[o.traceback] += 1
        if o.problems or args.verbose:
            last = (o.err.strip().splitlines() or [""])[-1][:200]
            print(f"[{i}] {case.kind}: {case.label[:90]} -> {o.code} {'; '.join(o.problems) or 'ok'} | {last}", flush=True)
        if o.problems:
            bad.append(i)
            if args.show:
                print("    argv: " + " ".join(case.argv) + "\n    " + o.err.strip().replace("\n", "\n    "))
        shutil.rmtree(d, ignore_errors=True)
    n = len(args.only or range(args.cases))
    print(f"\n{n} cases (seed {args.seed}) in {time.perf_counter() - t0:.0f}s; {n - len(bad)} ended well, {len(bad)} did not")
    for kind in KINDS:
        row = {k[1:]: v for k, v in ended.items() if k[0] == kind}
        print(f"  {kind:9s} " + ", ".join(f"{ok} exit {code}: {v}" for (ok, code), v in sorted(row.items(), key=str)))
    print("tracebacks by class: " + (", ".join(f"{c} x{v}" for c, v in tracebacks.most_common()) or "none"))
    if bad:
        print("rerun: --only " + " ".join(map(str, bad)))
    shutil.rmtree(root, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
