"""Export time and fidelity time, separately, per format: this checkout against an older revision, in one run.

    python scripts/bench_fidelity.py RUN --format gguf gptq [--old-rev main] [-- EXPORT FLAGS...]

Each (revision, format) is one ``qtune export RUN --format F`` in a fresh process, written under a
temporary ``--out-root``. The child wraps the fidelity class's methods of its revision (``Scorer`` here,
``_Fidelity`` before it) with a timer, so ``fidelity s`` is the time spent constructing it and scoring
models, and ``export s`` is the rest of the command's wall time (merge, quantization, conversion, files).
This checkout runs every format twice: ``new (first)`` with no stored reference (it is deleted first), and
``new (later)``, which reuses the reference scores the first stored. The old revision is extracted with
``git archive`` into a temporary folder and imported from there.

Printed: each row's wall, export and fidelity seconds, fidelity's share, the figures of every exported
model (perplexity, eval loss and their delta against the merged reference), the old/new ratios measured in
this run, the largest relative difference of the figures between old and new, and the load average before
and after (on a shared machine the absolute seconds move with the load; the ratios much less).
Export flags after ``--`` go to both revisions (e.g. ``-- --calib-samples 16 --fidelity-tokens 1024``);
``--new-flags`` go to this checkout only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(src: str, run: str, fmt: str, out: str, flags: list[str]) -> None:
    """One export from the checkout ``src``, fidelity timed; prints one JSON line."""
    sys.path.insert(0, src)
    import qtune.export.pipeline as pipeline

    spent = [0.0]
    cls = None
    try:
        from qtune.export.scoring import Scorer as cls  # noqa: N813
    except ImportError:
        cls = getattr(pipeline, "_Fidelity")

    def timed(fn):
        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return inner

    cls.__init__, cls.of = timed(cls.__init__), timed(cls.of)
    from qtune.cli import main

    t0 = time.perf_counter()
    rc = main(["export", run, "--format", fmt, "--out-root", out, *flags])
    wall = time.perf_counter() - t0
    figures = {}
    for f in sorted(Path(out).glob("*/fidelity.json")):
        fid = json.loads(f.read_text())
        for name, entry in fid.get("exports", {f.parent.name: fid}).items():
            figures[name] = {"perplexity": entry["export"]["perplexity"], "eval_loss": entry["export"]["eval_loss"],
                             "ref_perplexity": entry["merged"]["perplexity"], "ref_eval_loss": entry["merged"]["eval_loss"],
                             "delta": entry["delta"]}
    print("BENCH " + json.dumps({"rc": rc, "wall": wall, "fidelity": spent[0], "figures": figures, "src": src}), flush=True)


def one(src: Path, run: str, fmt: str, flags: list[str], log) -> dict:
    out = tempfile.mkdtemp(prefix=f"bench-fidelity-{fmt}-")
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", str(src), run, fmt, out, "--", *flags]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=src)
    log.write(p.stdout + p.stderr)
    shutil.rmtree(out, ignore_errors=True)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"{fmt} from {src} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[6:])


def old_checkout(rev: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="qtune-old-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def report(rows: list[tuple[str, str, dict]]) -> None:
    print(f"{'format':6} {'path':12} {'wall s':>8} {'export s':>9} {'fidelity s':>10} {'share':>6}  figures "
          "(perplexity, eval loss, delta vs merged)")
    for fmt, path, r in rows:
        export = r["wall"] - r["fidelity"]
        print(f"{fmt:6} {path:12} {r['wall']:8.1f} {export:9.1f} {r['fidelity']:10.1f} {r['fidelity'] / r['wall']:6.0%}")
        for name, f in r["figures"].items():
            print(f"{'':28}{name}: ppl {f['perplexity']:.6f} (ref {f['ref_perplexity']:.6f}, Δ {f['delta']['perplexity']:+.6f}), "
                  f"loss {f['eval_loss']:.6f} (ref {f['ref_eval_loss']:.6f}, Δ {f['delta']['eval_loss']:+.6f})")


def agreement(a: dict, b: dict) -> float:
    """Largest relative difference of any figure between two runs of the same format."""
    worst = 0.0
    for name, f in a["figures"].items():
        g = b["figures"].get(name)
        if g is None:
            continue
        for k in ("perplexity", "eval_loss", "ref_perplexity", "ref_eval_loss"):
            worst = max(worst, abs(f[k] - g[k]) / abs(g[k]))
    return worst


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        src, run, fmt, out = sys.argv[2:6]
        return child(src, run, fmt, out, sys.argv[7:])
    argv, flags = (sys.argv[1:], []) if "--" not in sys.argv else (sys.argv[1 : sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1 :])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--format", nargs="+", default=["gguf", "gptq"])
    ap.add_argument("--old-rev", default="main", help="the revision timed as the old path (default main); 'none' skips it")
    ap.add_argument("--new-flags", nargs="*", default=[], help="export flags for this checkout only")
    ap.add_argument("--log", default="bench_fidelity.log", help="every child's output (default ./bench_fidelity.log)")
    args = ap.parse_args(argv)
    from qtune import rundir

    run = str(Path(args.run).resolve())
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; export flags {flags}")
    old = old_checkout(args.old_rev) if args.old_rev != "none" else None
    rows = []
    with open(args.log, "w") as log:
        for fmt in args.format:
            shutil.rmtree(Path(run) / rundir.FIDELITY_REFERENCE, ignore_errors=True)
            if old is not None:
                rows.append((fmt, "old", one(old, run, fmt, flags, log)))
            rows.append((fmt, "new (first)", one(REPO, run, fmt, flags + args.new_flags, log)))
            rows.append((fmt, "new (later)", one(REPO, run, fmt, flags + args.new_flags, log)))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    report(rows)
    by = {(f, p): r for f, p, r in rows}
    for fmt in args.format:
        o = by.get((fmt, "old"))
        for path in ("new (first)", "new (later)"):
            n = by[(fmt, path)]
            if o is not None:
                print(f"{fmt} old/{path}: wall {o['wall'] / n['wall']:.2f}x, fidelity {o['fidelity'] / n['fidelity']:.2f}x; "
                      f"figures differ by at most {agreement(n, o):.2e} relative")
        print(f"{fmt}: reused reference equals the first: max relative difference "
              f"{agreement(by[(fmt, 'new (later)')], by[(fmt, 'new (first)')]):.2e}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
