"""User-facing errors.

A :class:`QtuneError` is a mistake the user can fix (a bad recipe, a missing file, a missing
optional dependency). The CLI prints its message on one line and exits with ``exit_code``;
everything else is a bug: it keeps its traceback, under which one line (:data:`REPORT_BUGS`) says
so and where to report it, and exits with 1.
"""


# The last line under a traceback (qtune.cli.main): a traceback is a bug of qtune's own, never the user's input.
REPORT_BUGS = ("please report it at qtune's issue tracker with the whole traceback, the command you ran and "
               "`qtune --version`, `pip freeze | grep -iE 'torch|transformers|peft|bitsandbytes'`")


class QtuneError(Exception):
    """A user mistake: printed as ``error: <message>`` without a traceback."""

    exit_code = 2

    def __init__(self, message: str, *, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines or [message]


class Interrupted(QtuneError):
    """Training stopped on SIGINT/SIGTERM after checkpointing; the CLI adds how to resume."""

    def __init__(self, message: str, *, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class RecipeError(QtuneError):
    """A recipe that does not validate; ``lines`` holds one ``field.path: problem`` per error."""


def missing_dependency(what: str, package: str, extra: str | None = None) -> QtuneError:
    hint = f"pip install 'qtune[{extra}]'" if extra else f"pip install {package}"
    return QtuneError(f"{what} needs the optional dependency '{package}': {hint}")
