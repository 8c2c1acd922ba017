"""Cold vs cached data load on the chitchat-dataset package (~7k conversations, ~130k utterances).

Each conversation becomes one chat example: consecutive messages alternate speakers, the first
speaker is the user, the second the assistant (a speaker's several utterances in a row are joined
with newlines). Both loads run ``build_datasets`` with the SmolLM2 tokenizer in this process: the
first tokenizes and writes the cache (fresh, in a temporary QTUNE_CACHE), the second reads it.

    PYTHONPATH=. nice -n 10 python scripts/bench_data_cache.py [--max-length 512]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def chitchat_to_jsonl(out: Path) -> tuple[int, int]:
    import chitchat_dataset

    raw = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text())
    conversations = utterances = 0
    with out.open("w", encoding="utf-8") as f:
        for conv in raw.values():
            turns = conv["messages"]
            if len(turns) < 2:
                continue
            messages = [
                {"role": "user" if i % 2 == 0 else "assistant", "content": "\n".join(u["text"] for u in turn)}
                for i, turn in enumerate(turns)
            ]
            utterances += sum(len(turn) for turn in turns)
            conversations += 1
            f.write(json.dumps({"messages": messages}) + "\n")
    return conversations, utterances


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from qtune.models.packaged import materialize

    tokenizer = AutoTokenizer.from_pretrained(materialize("smollm2-135m-instruct"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["QTUNE_CACHE"] = str(Path(tmp) / "cache")  # a fresh data cache; the model was materialized above
        from qtune.data.dataset import build_datasets
        from qtune.recipe.schema import DataSection

        path = Path(tmp) / "chitchat.jsonl"
        conversations, utterances = chitchat_to_jsonl(path)
        turns = sum(len(json.loads(line)["messages"]) for line in path.open())
        print(f"chitchat: {conversations} conversations, {turns} turns, {utterances} utterances "
              f"({path.stat().st_size / 2**20:.1f} MiB jsonl)")
        data = DataSection(train=[str(path)], format="chat", max_length=args.max_length, eval_fraction=0.02)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            out = build_datasets(data, tokenizer, seed=0)
            times.append(time.perf_counter() - t0)
            s = out.stats
            print(f"cache {s['cache']}: {times[-1]:.2f}s, {s['train']['rows']} train / {s['eval']['rows']} eval rows, "
                  f"{s['train']['tokens']} tokens, {s['train']['truncated']} truncated, {s['train']['dropped_too_long']} dropped")
        print(f"cold {times[0]:.2f}s / cached {times[1]:.2f}s = {times[0] / times[1]:.1f}x")


if __name__ == "__main__":
    main()
