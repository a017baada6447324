"""The per-user secret that makes ``--join`` meeting names unguessable.

A group's abstract socket names are derived from this key (see
:func:`chrun.joinconf.socket_names`), so another user can neither compute them
in advance nor squat them by prediction (default tags are PIDs and Slurm IDs,
both public).  The key is 32 random bytes, written once as 64 hex digits to

    ``$HOME/.cache/chrun/join-key``   (directory 0700, file 0600)

created race-free: the bytes go to a private temporary file (``O_EXCL``, 0600)
that is hard-linked to the final name; when two peers race, the second link
fails and both read the winner's key, so a key is never seen half-written.
Reading it costs one ``open``, ``fstat``, ``read`` and ``close`` per peer (and a
``stat`` of its directory): no storm on a shared home.  It is used only if it
is a regular file owned by you, readable by nobody else, in a directory that is
yours and writable by nobody else.

When there is no usable key (``$HOME`` unset or not absolute, a read-only home,
a file with the wrong owner or mode), :func:`load` returns an empty secret and
the reason: the group still forms, on names derived from public facts only, and
the creator warns once (other users could then predict the names and deny the
group, never join it).  Peers of one group must see the same key: they do when
they share ``$HOME`` (on one node, or a shared home across nodes).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Mapping, Optional, Tuple

KEY_DIR = ".cache/chrun"
KEY_NAME = "join-key"
KEY_HEX = 64           # 32 random bytes as hex text


class _Unusable(Exception):
    """A key that exists but must not be used (reason in the message)."""


def key_path(env: Mapping[str, str]) -> Optional[str]:
    home = env.get("HOME", "")
    if not home.startswith("/") or "\0" in home:
        return None
    return f"{home.rstrip('/')}/{KEY_DIR}/{KEY_NAME}"


def _check_dir(path: str, st) -> None:
    if st.st_uid != os.geteuid():
        raise _Unusable(f"{path}: owned by UID {st.st_uid}, not you")
    if st.st_mode & 0o022:
        raise _Unusable(f"{path}: writable by others (mode {st.st_mode & 0o7777:o})")


def _read(path: str) -> bytes:
    d = path.rsplit("/", 1)[0]
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise _Unusable(f"{path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise _Unusable(f"{path}: owned by UID {st.st_uid}, not you")
        if st.st_mode & 0o077:
            raise _Unusable(f"{path}: readable by others (mode {st.st_mode & 0o7777:o})")
        data = os.read(fd, KEY_HEX + 1).strip()
    finally:
        os.close(fd)
    _check_dir(d, os.stat(d))
    if len(data) != KEY_HEX:
        raise _Unusable(f"{path}: not a key ({len(data)} bytes; delete it to get a new one)")
    return data


def _create(path: str) -> bytes:
    d = path.rsplit("/", 1)[0]
    os.makedirs(d, mode=0o700, exist_ok=True)
    _check_dir(d, os.stat(d))
    tmp = f"{d}/.{KEY_NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            os.write(fd, os.urandom(KEY_HEX // 2).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another peer won the race: use its key
    finally:
        os.unlink(tmp)
    return _read(path)


def load(env: Mapping[str, str]) -> Tuple[bytes, Optional[str]]:
    """(secret, None), or (b"", why there is none); never raises."""
    path = key_path(env)
    if path is None:
        return b"", "$HOME is not set to an absolute path"
    try:
        try:
            return _read(path), None
        except FileNotFoundError:
            return _create(path), None
    except _Unusable as x:
        return b"", str(x)
    except OSError as x:
        return b"", f"{x.filename or path}: {os.strerror(x.errno or 0)}"
