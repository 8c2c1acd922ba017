"""``--json``: stdout carries one JSON object and nothing else, whoever else wants to print.

Scripts pipe ``qtune eval MODEL --json`` into ``json.load``, so a single stray line breaks them, and the
libraries that load models print plenty of them: gptqmodel writes a banner and INFO lines to stdout when it
is imported and when it loads a GPTQ/AWQ export; other libraries print from C (``printf``, ``write(1, ...)``),
through logging handlers or tqdm bars that bound ``sys.stdout`` when they were imported, or from child
processes (``qtune report`` measures in spawned ones, :func:`qtune.report.build.run_isolated`). Patching
each of them is a race with their next release, so the redirect is made where they all end up:

- while the command runs, the process's file descriptor 1 is a duplicate of descriptor 2 (``os.dup2``): C
  code, Python objects that hold the original ``sys.stdout``, and children (which inherit descriptor 1)
  all write to stderr; ``sys.stdout`` itself is ``sys.stderr`` too, for a stdout that is not descriptor 1
  (an embedding program's, a test's capture);
- before the switch and before the switch back, Python's and C's stdio buffers are flushed, so nothing
  written during the command sits in a buffer and leaves later through the restored descriptor;
- then descriptor 1 and ``sys.stdout`` are restored and the object is written, once.

Library output is therefore kept, on stderr, where qtune's own progress lines go and where
:mod:`qtune.noise` already thins it. A ``--json`` command returns its object instead of printing it;
:func:`run_json` is the only place that writes it (the CLI calls it for every command given ``--json``).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

STDOUT_FD = 1
STDERR_FD = 2


def _flush_stdio() -> None:
    """Flush Python's standard streams and every C ``FILE*`` buffer (``fflush(NULL)``)."""
    for stream in {id(s): s for s in (sys.stdout, sys.__stdout__, sys.stderr, sys.__stderr__) if s is not None}.values():
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or detached stream has nothing to flush
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C runtime to ask (not a POSIX libc)
        pass


@contextmanager
def stdout_to_stderr():
    """Within the block, everything written to stdout (descriptor 1 or ``sys.stdout``) goes to stderr."""
    _flush_stdio()
    saved_fd = os.dup(STDOUT_FD)
    saved_stdout = sys.stdout
    os.dup2(STDERR_FD, STDOUT_FD)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        _flush_stdio()
        sys.stdout = saved_stdout
        os.dup2(saved_fd, STDOUT_FD)
        os.close(saved_fd)


def run_json(command, args) -> int:
    """Run ``command(args)``, which returns a JSON-serialisable dict, with stdout sent to stderr; then print the dict."""
    with stdout_to_stderr():
        obj = command(args)
    assert isinstance(obj, dict), f"a --json command returns its object, {command.__name__} returned {type(obj).__name__}"
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()
    return 0
