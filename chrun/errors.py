"""Exit codes and the one-line messages ch-run prints on stderr.

Every message has the form ``ch-run[PID]: LEVEL: WHAT``; errors are raised as
:class:`ChError` and turned into a message and an exit code in one place
(:func:`chrun.cli.main`), so that nothing else ever calls ``sys.exit``.
"""

from __future__ import annotations

import os
import sys

#: ch-run's own failures (cannot create the container, join failed, ...).
EXIT_FAILURE = 31
#: The command could not be executed (not found, not executable).
EXIT_EXEC = 49
#: Usage errors: unknown option, missing or malformed argument.
EXIT_USAGE = 64

PROGRAM = "ch-run"

#: 0 = errors and warnings only; 1 = -v; 2 = -vv.
verbosity = 0


class ChError(Exception):
    """A failure to report in one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(ChError):
    """Bad command line or configuration: exit code 64."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_USAGE)


def _emit(level: str, text: str) -> None:
    # One write per message: lines from peers of a group do not interleave.
    line = f"{PROGRAM}[{os.getpid()}]: {level}{text}\n"
    try:
        os.write(2, line.encode(errors="backslashreplace"))
    except OSError:
        pass


def error(text: str) -> None:
    _emit("error: ", text)


def warning(text: str) -> None:
    _emit("warning: ", text)


def info(text: str, level: int = 1) -> None:
    """Print ``text`` if the verbosity is at least ``level`` (1 = -v, 2 = -vv)."""
    if verbosity >= level:
        _emit("", text)


def set_program(name: str) -> None:
    global PROGRAM
    PROGRAM = name


def flush_std() -> None:
    """Flush Python's stdout and stderr (before a fork); None when started with it closed."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
