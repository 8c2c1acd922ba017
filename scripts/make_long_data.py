"""Chat rows long enough to fill ``data.max_length``: the recipe's real shape for ``qtune plan --measure``.

``qtune plan --measure`` steps on the recipe's longest training rows; the bundled chatterbot rows are a few dozen
tokens, so the 7B recipe's 4 x 1024 was never the shape measured. Each row here is a question of half ``--tokens`` and an answer
of ``--tokens`` - 32 tokens of seeded random words (counted with the given tokenizer), so every row is cut from the
left to exactly ``max_length`` = ``--tokens`` with its answer whole, and the measured batch is micro_batch_size x
max_length.

    python scripts/make_long_data.py OUT_DIR --tokenizer .gpu/tiny --tokens 1024     # OUT_DIR/{train,eval}.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = ("the model reads every token once and the adapter learns what the frozen base cannot say about rows "
         "weights memory kernels steps batches layers").split()


def answer(tokenizer, tokens: int, rng: random.Random) -> str:
    words: list[str] = []
    while len(tokenizer(" ".join(words))["input_ids"]) < tokens:
        words += [rng.choice(WORDS) for _ in range(max(tokens // 4, 16))]
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", required=True, help="a checkpoint folder with the recipe's tokenizer")
    ap.add_argument("--tokens", type=int, default=1024, help="the recipe's data.max_length")
    ap.add_argument("--rows", type=int, default=16)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rng = random.Random(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", args.rows), ("eval", max(args.rows // 4, 2))):
        # question + answer overrun max_length (= --tokens), the answer alone fits: data.truncation "left" cuts the
        # question and keeps the row, exactly max_length long
        rows = [{"messages": [{"role": "user", "content": answer(tokenizer, args.tokens // 2, rng)},
                              {"role": "assistant", "content": answer(tokenizer, args.tokens - 32, rng)}]} for i in range(n)]
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{args.out}: {args.rows} train rows cut to {args.tokens} tokens")


if __name__ == "__main__":
    main()
