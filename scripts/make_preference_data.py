"""Build data/python-repl-prefs/: preference rows made mechanically from data/python-repl/ (no human labels).

For every session of data/python-repl/{train,eval}.jsonl (a Python 3.11 docs example: the user gives code, the
assistant shows the REPL session with its outputs, as the docs print them):

* ``prompt``   the user's message, unchanged;
* ``chosen``   the assistant's session, unchanged (the output the docs show);
* ``rejected`` the same session with its *last output block* (the lines after the last ``>>>``/``...`` input)
               replaced by the last output block of the nearest following session in the same file whose last
               output differs: the right code echoed, a wrong result printed. Sessions whose last input prints
               nothing are skipped.

So the preference says "the output the docs show beats another example's output": it is a correctness
preference built from real data, not a human judgement of quality. ``pairs-*.jsonl`` hold ``{prompt, chosen,
rejected}`` (message lists: rendered by the model's chat template), ``unpaired-*.jsonl`` the same material as
``{prompt, completion, label}`` for KTO (each pair gives a true and a false row). Deterministic: no randomness, so
running it again rewrites the same bytes::

    python scripts/make_preference_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
SOURCE, OUT = DATA / "python-repl", DATA / "python-repl-prefs"
INPUT = (">>> ", "... ", ">>>", "...")


def split_last_output(session: str) -> tuple[str, str, str] | None:
    """(head, last output block, tail) of a ```pycon session; None when the last input prints nothing."""
    lines = session.split("\n")
    if len(lines) < 3 or not lines[0].startswith("```") or lines[-1] != "```":
        return None
    body = lines[1:-1]
    last_input = max((i for i, line in enumerate(body) if line.startswith(INPUT)), default=None)
    if last_input is None or last_input == len(body) - 1:
        return None
    head = "\n".join([lines[0], *body[: last_input + 1]])
    return head, "\n".join(body[last_input + 1:]), lines[-1]


def pairs_of(rows: list[dict]) -> list[dict]:
    parts = [split_last_output(r["messages"][-1]["content"]) for r in rows]
    out = []
    for i, (row, part) in enumerate(zip(rows, parts)):
        if part is None:
            continue
        head, output, tail = part
        n = len(rows)
        other = next((parts[j][1] for j in ((i + k) % n for k in range(1, n))
                      if parts[j] is not None and parts[j][1].strip() != output.strip()), None)
        if other is None:
            continue
        prompt = [m for m in row["messages"][:-1]]
        out.append({"prompt": prompt,
                    "chosen": [{"role": "assistant", "content": row["messages"][-1]["content"]}],
                    "rejected": [{"role": "assistant", "content": f"{head}\n{other}\n{tail}"}]})
    return out


def unpaired_of(pairs: list[dict]) -> list[dict]:
    return [row for p in pairs for row in (
        {"prompt": p["prompt"], "completion": p["chosen"], "label": True},
        {"prompt": p["prompt"], "completion": p["rejected"], "label": False})]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in (SOURCE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        pairs = pairs_of(rows)
        write(OUT / f"pairs-{split}.jsonl", pairs)
        write(OUT / f"unpaired-{split}.jsonl", unpaired_of(pairs))
        print(f"{split}: {len(rows)} sessions -> {len(pairs)} pairs")


if __name__ == "__main__":
    main()
