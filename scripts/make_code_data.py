"""Build data/python-repl/: a code task from the interactive examples of the Python 3.11 library docs.

Each example is one ``>>>`` session of the standard library reference, reStructuredText sources
as shipped in Debian 12's ``python3.11-doc`` package (``usr/share/doc/python3.11/html/_sources/
library/``), under the PSF license (copied beside the data as LICENSE.rst.txt). A row asks for the
session's output: the user gives the code (prompts stripped), the assistant answers with the
session as the interpreter shows it, outputs included::

    user:      What does this print in the Python 3.11 REPL? Show the session.
               ```python
               sorted({3: 'c', 1: 'a'})
               ```
    assistant: ```pycon
               >>> sorted({3: 'c', 1: 'a'})
               [1, 3]
               ```

Only sessions that print something are kept. The split is by source file (every tenth file in
name order is held out), so no eval session shares a page with a training session. The bundled
perplexity text (data/python-docs/, the tutorial) shares no page with it either. Reproduce with::

    python scripts/make_code_data.py                    # apt-get download + dpkg-deb -x into a temp dir
    python scripts/make_code_data.py --from /tmp/pydoc  # an already extracted package root
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "python3.11-doc"
SOURCES = "usr/share/doc/python3.11/html/_sources"
LICENSE = "license.rst.txt"
OUT = Path(__file__).resolve().parent.parent / "data" / "python-repl"
PROMPT = "What does this print in the Python 3.11 REPL? Show the session.\n\n```python\n{code}\n```"
MAX_LINES, MAX_CHARS = 24, 1200  # longer sessions are mostly tracebacks and big reprs
HOLD_OUT_EVERY = 10


def extract(workdir: Path) -> Path:
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True)
    (deb,) = glob.glob(str(workdir / f"{PACKAGE}_*.deb"))
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    return root


def sessions(text: str) -> list[list[str]]:
    """Every run of lines that starts with ``>>>`` and goes on, at one indentation, to a blank line."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)>>> ", lines[i])
        if not m:
            i += 1
            continue
        indent, block = m.group(1), []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i][len(indent):])
            i += 1
        out.append(block)
    return out


def to_row(block: list[str]) -> dict | None:
    code = [line[4:] for line in block if line.startswith((">>> ", "... ")) or line in (">>>", "...")]
    printed = [line for line in block if not line.startswith((">>>", "..."))]
    session = "\n".join(block)
    if not printed or len(block) > MAX_LINES or len(session) > MAX_CHARS:
        return None
    return {"messages": [
        {"role": "user", "content": PROMPT.format(code="\n".join(code))},
        {"role": "assistant", "content": f"```pycon\n{session}\n```"},
    ]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="root", type=Path, help="an extracted python3.11-doc package root")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or extract(Path(tmp))
        src = root / SOURCES
        files = sorted((src / "library").glob("*.rst.txt"))
        splits: dict[str, list[dict]] = {"train": [], "eval": []}
        for k, f in enumerate(files):
            rows = [r for r in map(to_row, sessions(f.read_text(encoding="utf-8"))) if r]
            splits["eval" if k % HOLD_OUT_EVERY == 0 else "train"].extend(rows)
        OUT.mkdir(parents=True, exist_ok=True)
        for name, rows in splits.items():
            with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as out:
                out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            print(f"{name}: {len(rows)} sessions")
        shutil.copyfile(src / LICENSE, OUT / "LICENSE.rst.txt")


if __name__ == "__main__":
    main()
