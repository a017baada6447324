"""Every system call ch-run makes to build or join a container.

One thin wrapper per call.  Each raises :class:`chrun.errors.ChError` with a
one-line message that names the failing path or value and the strerror, so
callers never see a bare ``OSError``.  Python 3.11 has no ``os.unshare`` or
``os.setns``; those (and ``mount``, ``pivot_root``, ``pidfd_open``, ``prctl``) go
through libc (:func:`_libc`), or the ``os`` function where the interpreter has it.

Namespace calls (``unshare(CLONE_NEWUSER)``, ``setns`` into a user or mount
namespace) fail with EINVAL in a multithreaded process: ch-run never starts a
thread, and :func:`assert_single_threaded` checks it before those calls.
"""

from __future__ import annotations

import _signal
import errno
import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Optional

from .errors import ChError

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 0x2

PR_SET_NO_NEW_PRIVS = 38
PR_SET_NAME = 15

MS_NOSYMFOLLOW = 0x100

# statvfs f_flag bits (ST_*) of the per-mount flags a read-only remount must
# keep, with the mount flag that keeps each one.  The kernel locks nosuid,
# nodev, noexec and the atime flags on a mount made in a more privileged
# namespace (a remount that changes them fails with EPERM); nosymfollow is
# not locked but a bind remount would drop it.
ST_NOSYMFOLLOW = 0x2000  # Linux 5.10; not in Python 3.11's os module
_KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (ST_NOSYMFOLLOW, MS_NOSYMFOLLOW),
)


# pidfd_open is 434 on every architecture; pivot_root is not.
_MACHINE = os.uname().machine
_SYS_PIDFD_OPEN = 434
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "riscv64": 41}.get(
    _MACHINE, 155)
_SYS_SETNS = {"x86_64": 308, "aarch64": 268, "ppc64le": 350, "riscv64": 268}.get(
    _MACHINE, 308)

_LIBC = None


def _libc():
    """The libc functions below, typed, made on first use (every peer needs some).

    Through :mod:`_ctypes`, the C half of :mod:`ctypes`, with just the C types these
    calls take: ``import ctypes`` loads five more modules (~25 file-system calls and
    ~1 ms at every start of every rank), for classes and helpers we do not use.
    """
    global _LIBC
    if _LIBC is None:
        import _ctypes

        class c_int(_ctypes._SimpleCData):
            _type_ = "i"

        class c_uint(_ctypes._SimpleCData):
            _type_ = "I"

        class c_long(_ctypes._SimpleCData):
            _type_ = "l"

        class c_ulong(_ctypes._SimpleCData):
            _type_ = "L"

        class c_char_p(_ctypes._SimpleCData):    # bytes or None (NULL)
            _type_ = "z"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        class Libc:
            _handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)

        def fn(name, restype, *argtypes):
            f = Function((name, Libc))
            f.restype, f.argtypes = restype, argtypes
            return f

        class L:
            mount = fn("mount", c_int, c_char_p, c_char_p, c_char_p, c_ulong, c_char_p)
            umount2 = fn("umount2", c_int, c_char_p, c_int)
            unshare = fn("unshare", c_int, c_int)
            prctl = fn("prctl", c_int, c_int, c_ulong, c_ulong, c_ulong, c_ulong)
            prctl_name = fn("prctl", c_int, c_int, c_char_p, c_ulong, c_ulong, c_ulong)
            setns = fn("syscall", c_long, c_long, c_int, c_int)
            pidfd_open = fn("syscall", c_long, c_long, c_int, c_uint)
            pidfd_send_signal = fn("syscall", c_long, c_long, c_int, c_int, c_char_p, c_uint)
            pivot_root = fn("syscall", c_long, c_long, c_char_p, c_char_p)
            get_errno = _ctypes.get_errno
        _LIBC = L
    return _LIBC


def load_libc() -> None:
    """Load the libc functions now, before a fork: the child (the holder) then has them."""
    _libc()


def fail(what: str, err: int) -> ChError:
    """The error for system call ``what`` that failed with errno ``err``."""
    return ChError(f"{what}: {os.strerror(err)}")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise fail(what, _libc().get_errno())
    return ret


def _b(path: Optional[str]) -> Optional[bytes]:
    return None if path is None else os.fsencode(path)


def thread_count() -> int:
    # os.open/os.read: no file object (whose fstat every peer would pay)
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
    except OSError:
        return 1
    for line in status.splitlines():
        if line.startswith(b"Threads:"):
            return int(line.split()[1])
    return 1


def assert_single_threaded(what: str) -> None:
    n = thread_count()
    if n != 1:
        raise ChError(f"{what}: process has {n} threads; namespaces need exactly 1")


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):
        try:
            os.unshare(flags)
        except OSError as x:
            raise fail("unshare(2) of user and mount namespaces", x.errno)
    else:
        _check(_libc().unshare(flags), "unshare(2) of user and mount namespaces")


def setns(fd: int, nstype: int, what: str) -> None:
    if hasattr(os, "setns"):
        try:
            os.setns(fd, nstype)
        except OSError as x:
            raise fail(f"setns(2) into {what}", x.errno)
    else:
        _check(_libc().setns(_SYS_SETNS, fd, nstype), f"setns(2) into {what}")


def pidfd_open(pid: int) -> int:
    if hasattr(os, "pidfd_open"):
        try:
            return os.pidfd_open(pid)
        except OSError as x:
            raise fail(f"pidfd_open(2) of PID {pid}", x.errno)
    return _check(_libc().pidfd_open(_SYS_PIDFD_OPEN, pid, 0), f"pidfd_open(2) of PID {pid}")


def pidfd_alive(pidfd: int) -> bool:
    """True if the process behind ``pidfd`` has not exited (signal 0)."""
    ret = _libc().pidfd_send_signal(424, pidfd, 0, None, 0)
    if ret == 0:
        return True
    return _libc().get_errno() not in (errno.ESRCH,)


def mount(src: Optional[str], target: str, fstype: Optional[str], flags: int,
          data: Optional[str], what: str) -> None:
    _check(_libc().mount(_b(src), _b(target), _b(fstype), flags, _b(data)), what)


def bind(src: str, target: str, what: str, recursive: bool = True) -> None:
    mount(src, target, None, MS_BIND | (MS_REC if recursive else 0), None, what)


def locked_flags(path: str) -> int:
    """Mount flags of the mount at ``path`` that a remount of it must keep.

    The atime mode is one of three, and a bind remount that names none keeps
    the default (relatime), so it is always given: ``noatime``, ``relatime``,
    or neither of those two in statvfs, which is ``strictatime``.
    """
    try:
        st = os.statvfs(path)
    except OSError as x:
        raise fail(f"statvfs(2) of {path}", x.errno)
    flags = sum(ms for st_bit, ms in _KEPT_FLAGS if st.f_flag & st_bit)
    if st.f_flag & os.ST_NOATIME:
        flags |= MS_NOATIME
    elif st.f_flag & os.ST_RELATIME:
        flags |= MS_RELATIME
    else:
        flags |= MS_STRICTATIME
    return flags


def remount_readonly(target: str, what: str) -> None:
    """Make bind mount ``target`` read-only, keeping its other per-mount flags."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | locked_flags(target)
    mount(None, target, None, flags, None, what)


def umount_detach(target: str, what: str) -> None:
    _check(_libc().umount2(_b(target), MNT_DETACH), what)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc().pivot_root(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)),
           f"pivot_root(2) into {new_root}")


def default_signals() -> None:
    """Give back the default SIGPIPE and SIGXFSZ handling that Python turned off.

    Through ``_signal``, the C half of :mod:`signal`: the module itself imports
    :mod:`enum`, which would cost every ch-run a few milliseconds.
    """
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_DFL)


#: Search path when the environment has no PATH (glibc's ``confstr(_CS_PATH)``).
DEFAULT_PATH = "/bin:/usr/bin"
#: Shell that runs an executable file the kernel does not recognise (ENOEXEC).
SHELL = "/bin/sh"
#: Errors after which execvp(3) tries the next directory of PATH (glibc skips a
#: directory too long for PATH_MAX, the kernel says ENAMETOOLONG for it).
_TRY_NEXT = frozenset((errno.EACCES, errno.ENOENT, errno.ESTALE, errno.ENOTDIR,
                       errno.ENODEV, errno.ETIMEDOUT, errno.ENAMETOOLONG))


def _exec_or_script(path: str, argv: list, env: dict, execve) -> None:
    """``execve`` ``path``; a file the kernel can't execute (ENOEXEC) runs under /bin/sh."""
    try:
        execve(path, argv, env)
    except OSError as x:
        if x.errno != errno.ENOEXEC:
            raise
    # As execvp(3) does: a file without "#!" is a shell script, $0 its path.
    execve(SHELL, [SHELL, path, *argv[1:]], env)


def execvpe(file: str, argv: list, env: dict, execve=os.execve) -> None:
    """``execvp(3)`` with ``env``: search ``env``'s PATH for ``file`` and exec it.

    Not :func:`os.execvpe`: it imports :mod:`warnings` on the way, and after
    ``pivot_root`` the host's Python library is gone.  The semantics are
    glibc's execvp: a ``file`` with a slash is not searched; PATH (default
    ``/bin:/usr/bin``) is tried in order, an empty entry meaning the current
    directory; a file the kernel can't execute (ENOEXEC, e.g. a script without
    ``#!``) is run by ``/bin/sh``; "not there" errors (ENOENT, ENOTDIR, ...)
    move on to the next entry, EACCES too but it is remembered and reported if
    no entry works; any other error is reported at once.  ``execve`` is
    replaceable for tests.  Returns only by raising OSError.
    """
    if file == "":
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), file)
    if "/" in file:
        _exec_or_script(file, argv, env, execve)
    denied = None
    path = env.get("PATH")
    for d in (DEFAULT_PATH if path is None else path).split(":"):
        candidate = f"{d}/{file}" if d else file  # empty entry: the current directory
        try:
            _exec_or_script(candidate, argv, env, execve)
        except OSError as x:
            if x.errno not in _TRY_NEXT:
                raise
            if x.errno == errno.EACCES:
                denied = x
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), file)


def no_new_privs() -> None:
    _check(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(2) PR_SET_NO_NEW_PRIVS")


def set_process_name(name: str) -> None:
    """The name ps and ``pgrep -x`` show (at most 15 bytes); best effort."""
    _libc().prctl_name(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def write_proc(path: str, text: str) -> None:
    """Write ``text`` in one ``write`` (as /proc map files require)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as x:
        raise fail(f"can't open {path}", x.errno)
    try:
        os.write(fd, text.encode())
    except OSError as x:
        raise fail(f"can't write {text.strip()!r} to {path}", x.errno)
    finally:
        os.close(fd)


def ns_inode(path: str) -> int:
    """Inode of a namespace file such as ``/proc/self/ns/user``."""
    try:
        return os.stat(path).st_ino
    except OSError as x:
        raise fail(f"can't stat {path}", x.errno)


def ns_inode_fd(fd: int) -> int:
    return os.fstat(fd).st_ino


# --- passing namespace handles over a Unix socket ---------------------------

def send_fds(sock, payload: bytes, fds: list) -> None:
    import _socket   # the C module: socket.py imports enum, selectors, collections, ...
    sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _ints(fds))])


def recv_fds(sock, maxfds: int) -> tuple:
    """Receive one message and up to ``maxfds`` descriptors (close-on-exec)."""
    import _socket
    data, anc, _flags, _addr = sock.recvmsg(4096, _socket.CMSG_SPACE(4 * maxfds),
                                            _socket.MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, raw in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(_from_ints(raw[:len(raw) - len(raw) % 4]))
    return data, fds


def peer_credentials(sock) -> tuple:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    import _socket
    return tuple(_from_ints(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)))


def _ints(values) -> bytes:
    """C ints in native byte order (what struct.pack("%di") gives, without struct)."""
    import sys
    return b"".join(v.to_bytes(4, sys.byteorder, signed=True) for v in values)


def _from_ints(raw: bytes) -> list:
    import sys
    return [int.from_bytes(raw[i:i + 4], sys.byteorder, signed=True)
            for i in range(0, len(raw), 4)]


def close_fds_except(keep: set) -> None:
    """Close every open descriptor of this process but ``keep`` (forked helpers use it)."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def recv_line(sock, deadline: float) -> str:
    """Up to 64 bytes from ``sock`` before ``deadline`` (monotonic), stripped ('' on EOF or error)."""
    import time  # built into CPython: no file to load
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        data = sock.recv(64)
    except OSError:
        data = b""
    sock.settimeout(None)
    return data.decode(errors="replace").strip()
