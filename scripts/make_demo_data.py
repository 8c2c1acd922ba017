"""Rebuild data/chatterbot/ from the installed chatterbot-corpus package (BSD-3).

Each English conversation becomes one chat-messages JSONL row, turns alternating user/assistant
(a trailing unanswered user turn is dropped). Rows are split into train and eval by a hash of the
conversation's first question, so every answer to one question lands on the same side.

    python scripts/make_demo_data.py            # writes data/chatterbot/{train,eval}.jsonl
"""

import hashlib
import json
from pathlib import Path

import yaml
import chatterbot_corpus

EVAL_PERCENT = 10


def main() -> None:
    corpus = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    out_dir = Path(__file__).resolve().parent.parent / "data" / "chatterbot"
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "eval": []}
    for path in sorted(corpus.glob("*.yml")):
        for conv in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            turns = [str(t).strip() for t in conv]
            turns = turns[: len(turns) // 2 * 2]
            if not turns or not all(turns):
                continue
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
            bucket = int(hashlib.sha256(turns[0].lower().encode()).hexdigest(), 16) % 100
            split = "eval" if bucket < EVAL_PERCENT else "train"
            splits[split].append({"messages": messages, "category": path.stem})
    for split, rows in splits.items():
        with (out_dir / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(split, len(rows))


if __name__ == "__main__":
    main()
