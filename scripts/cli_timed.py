"""Several qtune commands in one process, each timed: ``RESULT`` per command with its exit status, seconds and the
last line it printed.

    python scripts/cli_timed.py "generate RUN --max-new-tokens 16" "eval RUN --max-tokens 512"
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
import time


class Tee(io.StringIO):
    """Keeps what is written and passes it on."""

    def __init__(self, through):
        super().__init__()
        self.through = through

    def write(self, s: str) -> int:
        self.through.write(s)
        return super().write(s)


def main() -> None:
    from qtune.cli import main as qtune

    failed = 0
    for command in sys.argv[1:]:
        out = Tee(sys.stdout)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            try:
                rc = qtune(shlex.split(command))
            except SystemExit as e:
                rc = e.code
            except Exception as e:  # noqa: BLE001 - reported as the command's result; the next one still runs
                print(f"error: {type(e).__name__}: {e}")
                rc = 1
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        print("RESULT " + json.dumps({"cmd": command.split()[0], "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
                                      "last": lines[-1][-200:] if lines else ""}), flush=True)
        failed |= rc != 0
    raise SystemExit(failed)


if __name__ == "__main__":
    main()
