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


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """``text`` made safe to print as one line of a message.

    Characters that are not printable (control characters such as newline, C1
    controls, the Unicode line separators, ...) become escapes (``\\n``,
    ``\\t``, ``\\r``, else ``\\xNN``, ``\\uNNNN``), so that a newline in a path
    cannot split a message or forge a second ``ch-run[PID]: error:`` line.
    Bytes that were not valid UTF-8 (kept by Python as surrogates, ``\\udcff``)
    are shown as the byte, ``\\xff``.  Backslashes are left alone.
    """
    if text.isprintable():  # the common case: nothing to escape
        return text
    out = []
    for c in text:
        o = ord(c)
        if c.isprintable():
            out.append(c)
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif 0xDC80 <= o <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


def _emit(level: str, text: str) -> None:
    # One line and one write per message: lines from peers of a group do not
    # interleave, and nothing in ``text`` can start a line of its own.
    line = f"{PROGRAM}[{os.getpid()}]: {level}{one_line(text)}\n"
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
