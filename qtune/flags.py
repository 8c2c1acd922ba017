"""Readers of the command line's numeric and size flags, one per kind, used by every command that takes one.

Each is an ``argparse`` type: a value it refuses ends as argparse's one ``error:`` line naming the flag
(``argument --window: must be a whole number of at least 1 (given '-5')``), exit status 2, before
anything is loaded. What a recipe also holds (export settings) is checked by the recipe schema instead.
"""

from __future__ import annotations

import argparse
import math

INT64 = 2**63  # seeds and counts beyond it overflow torch and numpy


def whole(minimum: int, what: str = ""):
    """A whole number ``>= minimum`` (and below 2**63); ``what`` says what a special value means."""

    def read(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or not minimum <= n < INT64:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}{what} (given {text!r})")
        return n

    read.__name__ = f"whole number >= {minimum}"
    return read


def real(minimum: float, maximum: float = math.inf):
    """A finite number in ``[minimum, maximum]``."""

    def read(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and minimum <= x <= maximum):
            top = "" if maximum == math.inf else f" and at most {maximum:g}"
            raise argparse.ArgumentTypeError(f"must be a number of at least {minimum:g}{top} (given {text!r})")
        return x

    read.__name__ = "number"
    return read


def size(text: str) -> str:
    """A memory size (``24GiB``); kept as text, read again by :func:`qtune.plan.budget.parse_size`."""
    from qtune.errors import QtuneError
    from qtune.plan.budget import parse_size

    try:
        parse_size(text)
    except QtuneError as e:
        raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None
    return text
