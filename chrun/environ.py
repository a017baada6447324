"""The command's environment: ``--set-env``, ``--unset-env`` and ``--env-no-expand``.

Charliecloud 0.31 semantics (facts from its man page and tests; our own code):

* The default adjustments come first (``TMPDIR`` unset, ``/bin`` in ``PATH``,
  ``HOME`` with the home bind: :func:`chrun.plan.container_env`), then every
  ``--set-env`` and ``--unset-env`` in command-line order, then ``CH_RUNNING``,
  which neither option can change.
* ``--set-env`` (no ``=``) reads the image's ``/ch/environment``;
  ``--set-env=ARG`` with ``=`` in ARG is one assignment ``NAME=VALUE``;
  without ``=`` ARG is a host file of assignments.
* A file holds one assignment per line; empty lines are skipped; nothing else
  is special (no comments, no escapes, no trimming).  A line without ``=`` or
  with an empty name is an error naming the file and the line number.
* A value wrapped in single quotes (``'...'``, at least two characters) loses
  them; double quotes are kept.
* Unless ``--env-no-expand`` is given (anywhere on the command line), a value
  is a colon-separated list of items; an item ``$NAME`` (or ``${NAME}``) is
  replaced by the variable's current value, and dropped with its colon when
  that is unset or empty.  Other items, empty ones included, are kept as
  they are.  Expansion sees the variables as set so far.
* ``--unset-env=GLOB`` removes every variable whose name matches GLOB
  (``fnmatch(3)`` with ``FNM_EXTMATCH``: ``!(A*|B*)`` works).

When things are read: host files while parsing the plan, before any namespace
exists (a bad file fails before anything is built); the image's
``/ch/environment`` inside the container, after ``pivot_root`` (as Charliecloud
does), so that it is the image the command runs in, binds and joined groups
included.  This module imports nothing beyond ``os`` and ``ctypes`` (loaded
already): after ``pivot_root`` the host's Python library is out of reach.
"""

from __future__ import annotations

import ctypes
import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ChError, UsageError, flush_std, info
from .plan import CH_RUNNING

#: Where ``--set-env`` without argument reads, inside the container.
IMAGE_ENV_FILE = "/ch/environment"

#: glibc's FNM_EXTMATCH (fnmatch.h): ksh-style extended patterns.
FNM_EXTMATCH = 1 << 5
FNM_NOMATCH = 1

_libc = ctypes.CDLL(None)
_libc.fnmatch.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int)
_libc.fnmatch.restype = ctypes.c_int


class EnvFileError(ChError):
    """A file given to --set-env cannot be read or has a bad line (exit 31)."""


# --- parsing --------------------------------------------------------------------

def parse_assignment(text: str) -> Tuple[str, str]:
    """``NAME=VALUE`` → (NAME, VALUE), single quotes around VALUE stripped.

    Raises :class:`ValueError` with a short reason.
    """
    name, eq, value = text.partition("=")
    if not eq:
        raise ValueError("no '=' between name and value")
    if name == "":
        raise ValueError("empty variable name")
    if "\0" in text:
        raise ValueError("contains a NUL byte")
    if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
        value = value[1:-1]
    return name, value


def parse_arg(text: str) -> Tuple[str, str]:
    """One ``--set-env=NAME=VALUE`` from the command line (usage error if bad)."""
    try:
        return parse_assignment(text)
    except ValueError as x:
        raise UsageError(f"--set-env: {text!r}: {x}")


def parse_text(data: bytes, path: str) -> Tuple[Tuple[str, str], ...]:
    """The assignments of file ``path`` whose content is ``data``."""
    out = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if raw == b"":
            continue
        try:
            out.append(parse_assignment(os.fsdecode(raw)))
        except ValueError as x:
            raise EnvFileError(f"--set-env: {path}:{number}: {x}")
    return tuple(out)


#: Largest environment file read (bytes): far more than execve(2) can pass on,
#: and a bound for files that never end (``/dev/zero``).
MAX_BYTES = 16 << 20
#: Longest value after expansion: execve(2) refuses longer strings (MAX_ARG_STRLEN).
MAX_VALUE = 128 << 10
#: Seconds a FIFO or pipe may stay silent (no writer, or a writer that writes
#: nothing and does not close) before reading it fails.
FIFO_WAIT = 10.0


def read_file(path: str, what: Optional[str] = None) -> Tuple[Tuple[str, str], ...]:
    """Read and parse an environment file (one error line naming it if that fails).

    Bounded in size (:data:`MAX_BYTES`) and, for a FIFO or pipe (``<(cmd)``), in
    silence (:data:`FIFO_WAIT`): opened non-blocking, it is read as data comes.
    """
    what = what or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            data = _read_bounded(fd, what)
        finally:
            os.close(fd)
    except OSError as x:
        raise EnvFileError(f"--set-env: can't read {what}: {os.strerror(x.errno)}")
    return parse_text(data, path)


def _read_bounded(fd: int, what: str) -> bytes:
    import errno   # built into CPython: no file to load (also after pivot_root)
    import select  # built in too
    import stat    # loaded already by os
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "")
    fifo = stat.S_ISFIFO(mode)
    if not fifo:
        os.set_blocking(fd, True)  # files, ttys, devices: read as usual
    # End of file is final, but for a named FIFO no writer has opened yet.
    eof_final = not fifo or _is_anonymous_pipe(fd)
    chunks: list = []
    size = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:  # a writer, nothing written yet
            chunk = None
        if chunk:
            size += len(chunk)
            if size > MAX_BYTES:
                raise EnvFileError(f"--set-env: can't read {what}: larger than "
                                   f"{MAX_BYTES >> 20} MiB")
            chunks.append(chunk)
            eof_final = True
            continue
        if chunk is not None and eof_final:
            return b"".join(chunks)
        if not select.select([fd], [], [], FIFO_WAIT)[0]:
            raise EnvFileError(f"--set-env: can't read {what}: FIFO: nothing written, "
                               f"and not closed, within {FIFO_WAIT:g} s")
        eof_final = True


def _is_anonymous_pipe(fd: int) -> bool:
    """True for a pipe (``<(cmd)``), False for a named FIFO (its writer may yet come)."""
    r, w = os.pipe()
    try:
        return os.fstat(r).st_dev == os.fstat(fd).st_dev
    finally:
        os.close(r)
        os.close(w)


# --- operations -------------------------------------------------------------------
#
# The command line gives a sequence of operations (chrun.plan.Options.env_ops):
#   ("set", None)      the image's /ch/environment
#   ("set", "N=V")     one assignment
#   ("set", "FILE")    a host file
#   ("unset", "GLOB")
# prepare() turns it into steps, reading host files:
#   ("vars", ((N, V), ...)), ("image",), ("unset", GLOB)


def check_ops(ops: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Usage errors of the operations, found without touching any file."""
    for kind, arg in ops:
        if kind == "unset":
            if not arg:
                raise UsageError("--unset-env: GLOB must not be empty")
            if "\0" in arg:
                raise UsageError("--unset-env: GLOB contains NUL")
        elif arg is not None and "=" in arg:
            parse_arg(arg)
        elif arg is not None and "\0" in arg:
            raise UsageError("--set-env: file name contains NUL")


def prepare(ops: Sequence[Tuple[str, Optional[str]]],
            read: Callable[[str], Tuple[Tuple[str, str], ...]] = read_file) -> tuple:
    """Steps from operations, host files read now with ``read`` (before any namespace)."""
    steps: list = []
    for kind, arg in ops:
        if kind == "unset":
            steps.append(("unset", arg))
        elif arg is None:
            steps.append(("image",))
        elif "=" in arg:
            steps.append(("vars", (parse_arg(arg),)))
        else:
            steps.append(("vars", read(arg)))
    return tuple(steps)


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$NAME`` / ``${NAME}`` items of the colon-separated ``value``."""
    items: List[str] = []
    for item in value.split(":"):
        if len(item) > 1 and item[0] == "$":
            name = item[1:]
            if len(name) > 2 and name[0] == "{" and name[-1] == "}":
                name = name[1:-1]
            item = env.get(name, "")
            if item == "":
                continue
        items.append(item)
    return ":".join(items)


def matches(glob: str, name: str) -> bool:
    """fnmatch(3) with FNM_EXTMATCH, as Charliecloud matches --unset-env."""
    return _libc.fnmatch(os.fsencode(glob), os.fsencode(name), FNM_EXTMATCH) == 0


#: Seconds that matching one extended pattern against all names may take.
GLOB_WAIT = 10.0


def matching(glob: str, names: List[str]) -> List[str]:
    """The ``names`` that ``glob`` matches, in a bounded time.

    glibc's matcher takes exponential time on some nested extended patterns
    (``+(+(a))b`` against a name of 25 ``a``: half a minute), so a pattern with
    ``(`` is matched in a child that is killed after :data:`GLOB_WAIT` seconds.
    """
    if "(" not in glob:
        return [n for n in names if matches(glob, n)]
    import select  # built into CPython: no file to load (also after pivot_root)
    import time    # built in too
    r, w = os.pipe()
    flush_std()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:
        try:
            os.close(r)
            hits = "".join(f"{i}\n" for i, n in enumerate(names) if matches(glob, n)) + "."
            data = hits.encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    deadline = time.monotonic() + GLOB_WAIT
    try:
        while not out.endswith(b"."):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, 9)  # our unreaped child: its PID is ours
                raise ChError(f"--unset-env: {glob}: matching took longer than "
                              f"{GLOB_WAIT:g} s")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                raise ChError(f"--unset-env: {glob}: matching failed")
            out += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return [names[int(i)] for i in out[:-1].split()]


def extglob_available() -> bool:
    """True if this C library's fnmatch(3) knows extended patterns."""
    try:
        return matches("!(a*)", "b") and not matches("!(a*)", "ab") and matches("@(x|y)", "y")
    except (AttributeError, OSError):  # pragma: no cover - not glibc
        return False


def apply(env: Mapping[str, str], steps: Sequence[tuple], expand_vars: bool = True,
          image_vars: Optional[Callable[[], Tuple[Tuple[str, str], ...]]] = None
          ) -> Dict[str, str]:
    """The environment after ``steps`` (pure, but for ``image_vars``, called for ``image``)."""
    out = dict(env)
    for step in steps:
        if step[0] == "unset":
            for name in matching(step[1], list(out)):
                del out[name]
                info(f"environment: unset {name}", 2)
            continue
        if step[0] == "image":
            if image_vars is None:  # pragma: no cover - callers always pass it
                raise AssertionError("--set-env without argument needs the image's file")
            pairs = image_vars()
        else:
            pairs = step[1]
        for name, value in pairs:
            out[name] = expand(value, out) if expand_vars else value
            if expand_vars and len(out[name]) > MAX_VALUE:  # A=$A:$A doubles it each line
                raise ChError(f"--set-env: {name}: value longer than {MAX_VALUE >> 10} KiB "
                              "after expansion (more than execve(2) passes on)")
            info(f"environment: {name}={out[name]}")
    out["CH_RUNNING"] = CH_RUNNING
    return out


def image_vars() -> Tuple[Tuple[str, str], ...]:
    """The image's /ch/environment, read inside the container (after pivot_root)."""
    return read_file(IMAGE_ENV_FILE, f"the image's {IMAGE_ENV_FILE}")
