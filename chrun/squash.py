"""SquashFS images: ``ch-run IMG.sqfs -- CMD``, served by the ``squashfuse`` program.

This module is the alternative source of two steps of :mod:`chrun.container`:
step 1 (:func:`check`: a regular file whose first bytes are ``hsqs`` is an
archive) and step 4 (:class:`Server`: the archive, not a bind of a directory,
becomes ``/newroot``).  Only a container's creator mounts; peers of a
``--join`` group enter its mount namespace and so share its one mount.

How the mount lives and ends, with no process of ours left in between:

1. Before any namespace exists, :meth:`Server.start` forks twice, so the
   server is a child of nobody in the container's process tree.  The server
   starts its own session (a job's Ctrl-C or a launcher's process-group kill
   does not reach it), keeps only a socket to ch-run and a pipe for its
   stderr, and waits.  It stays in the host's user and mount namespaces: it
   only reads the archive (as you) and the FUSE descriptor, and a process in
   the container's mount namespace would keep that namespace, and so its own
   mount, alive for ever.
2. In its new namespaces ch-run opens ``/dev/fuse`` (the kernel wants the
   mount made in the user namespace that opened it) and mounts it itself:
   ``mount(2)`` of type ``fuse.squashfuse``, ``fd=N``, read-only.
3. ch-run sends the descriptor to the waiting server, which execs
   ``squashfuse -o fsname=ARCHIVE -f /dev/fd/A /dev/fd/N`` (libfuse 3 serves a
   descriptor that is already mounted; ``A`` is the archive as step 1 opened
   it, so a path replaced meanwhile or naming ch-run's own descriptors does not
   matter; ``fsname`` only shows ``ps`` the path), closes its own copy, and
   stats the mount's root.  The stat waits for squashfuse's FUSE INIT reply, or
   fails as soon as squashfuse exits (the connection is aborted when the last
   descriptor goes); then squashfuse's own message, read from the pipe, becomes
   ch-run's one error line.  A squashfuse that neither answers nor exits is
   killed after :data:`WAIT` seconds (the stat runs in a child, which a
   SIGKILL frees).  So ch-run knows the mount works before it execs the command.
4. When the container's last process exits, its mount namespace goes, the
   kernel unmounts the archive and aborts the FUSE connection, squashfuse's
   read fails and it exits.  Nothing to clean up, also after a SIGKILL.  In a
   ``--join`` group the holder's namespace descriptors keep the namespace
   (and the mount) until every peer is in it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import time

from . import errors, syscalls as sc
from .errors import ChError, UsageError, info
from .plan import record

#: First bytes of a SquashFS archive (little-endian ``0x73717368``).
MAGIC = b"hsqs"
#: The FUSE server: the first of these in ch-run's ``PATH`` (in each directory the
#: low-level ``squashfuse_ll`` first: same package, several times faster on many files).
SQUASHFUSE = "squashfuse"
PROGRAMS = ("squashfuse_ll", SQUASHFUSE)
FUSE_DEV = "/dev/fuse"
#: Seconds to wait for the server's greeting, its FUSE INIT reply, and its exit
#: after a failure.
WAIT = 10.0
#: prctl(2): signal for the calling process when its parent dies.
PR_SET_PDEATHSIG = 1


class Archive(record("Archive", ("path",), "", mount_dir=None, fd=-1)):
    """A SquashFS image: ``path`` (absolute, as given: symlinks kept, so ``ps`` shows
    what the user named), ``mount_dir`` (``-m``: real host path, or None) and ``fd``,
    the archive opened once by :func:`check` (close-on-exec): squashfuse serves
    that very file (as ``/dev/fd/N``), whatever the path names by then, and a path
    such as ``/dev/stdin`` means ch-run's file, not the server's."""

    __slots__ = ()

    def __str__(self) -> str:
        return self.path


def is_archive(path: str) -> bool:
    """True if ``path`` starts with the SquashFS magic (False if it can't be read)."""
    try:
        return _magic(path) == MAGIC
    except OSError:
        return False


def _magic(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        return os.pread(fd, len(MAGIC), 0)
    finally:
        os.close(fd)


def check(path: str, writable: bool = False, mount_dir: str | None = None) -> Archive:
    """Step 1 for a regular file: it must be a readable SquashFS archive."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as x:
        raise ChError(f"can't use image: {path}: {os.strerror(x.errno)}")
    try:
        magic = os.pread(fd, len(MAGIC), 0) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError as x:
        os.close(fd)
        raise ChError(f"can't use image: {path}: {os.strerror(x.errno)}")
    if magic != MAGIC:
        os.close(fd)
        raise ChError(f"can't use image: {path}: neither a directory nor a SquashFS archive")
    try:
        return _checked(path, fd, writable, mount_dir)
    except BaseException:
        os.close(fd)
        raise


def _checked(path: str, fd: int, writable: bool, mount_dir: str | None) -> Archive:
    if writable:
        raise UsageError(f"--write: {path} is a SquashFS image, which is read-only")
    real_dir = None
    if mount_dir is not None:
        real_dir = os.path.realpath(mount_dir)
        try:
            if not stat.S_ISDIR(os.stat(real_dir).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "")
        except OSError as x:
            raise ChError(f"--mount: {mount_dir}: {os.strerror(x.errno)}")
    return Archive(path=os.path.abspath(path), mount_dir=real_dir, fd=fd)


def find_program(names: tuple = PROGRAMS, path: str | None = None) -> str | None:
    """Absolute path of the first executable of ``names`` in ``path`` (default ``$PATH``).

    Directories are tried in order, each for every name in turn; None if none is found.
    Relative entries (an empty one is the working directory) are skipped: the server
    is ch-run's own helper, and the working directory may be another user's ``/tmp``.
    """
    if path is None:
        path = os.environ.get("PATH", "/usr/bin:/bin")
    for d in path.split(":"):
        if not d.startswith("/"):
            continue
        for name in names:
            candidate = os.path.join(d, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return os.path.abspath(candidate)
    return None


def fuse_problem(dev: str = FUSE_DEV) -> str | None:
    """Why ``dev`` can't be used (one phrase), or None if we may open it read-write."""
    if not os.path.exists(dev):
        return f"{dev}: {os.strerror(errno.ENOENT)} (FUSE kernel module not loaded?)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return (f"{dev}: {os.strerror(errno.EACCES)} (FUSE needs it mode 0666, as "
                f"distributions ship it: chmod 0666 {dev})")
    return None


def available() -> bool:
    """Can this ch-run mount SquashFS images here? (``--feature=squash``)"""
    return find_program() is not None and fuse_problem() is None


class Server:
    """One archive's FUSE server, from before the namespaces to ch-run's exec."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.channel = None      # socket to the waiting server, until it has the fd
        self.err_pipe = -1       # read end of the server's stderr
        self.pid = 0
        self.program = SQUASHFUSE  # the server's name, for messages
        self.mounted: list = []  # where we mounted (for abort)
        self.pidfd = -1          # the server's pidfd, to kill it if it hangs

    def _fail(self, why: str) -> ChError:
        return ChError(f"can't mount SquashFS image {self.archive.path}: {why}")

    def start(self) -> None:
        """Before the namespaces: fork the server, which waits for the FUSE descriptor."""
        import socket
        exe = find_program()
        if exe is None:
            raise self._fail(f"{SQUASHFUSE} not found in PATH (install package squashfuse)")
        self.program = os.path.basename(exe)
        problem = fuse_problem()
        if problem is not None:
            raise self._fail(f"FUSE not usable: {problem}")
        opened: list = []
        try:  # ulimit -n or -u may be tight
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            opened += [ours, theirs]
            rfd, wfd = os.pipe()
            opened += [rfd, wfd]
            errors.flush_std()
            pid = os.fork()
        except OSError as x:
            for f in opened:
                f.close() if hasattr(f, "close") else os.close(f)
            raise self._fail(f"can't start FUSE server process: {os.strerror(x.errno)}")
        if pid == 0:  # intermediate child: fork the server and leave at once
            try:
                ours.close()
                os.close(rfd)
                if os.fork() == 0:
                    _server_main(theirs, wfd, exe, self.archive)
            finally:
                os._exit(0)
        theirs.close()
        os.close(wfd)
        os.waitpid(pid, 0)
        self.channel, self.err_pipe = ours, rfd
        hello = sc.recv_line(ours, time.monotonic() + WAIT)
        if not hello.isdigit():
            self.abort()
            raise self._fail("FUSE server process did not start")
        self.pid = int(hello)
        try:  # the server waits for our descriptor, so this PID is still its own
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:  # pragma: no cover - kernels before 5.3
            self.pidfd = -1

    def _kill(self) -> None:
        """SIGKILL the server (through its pidfd: never another process with its PID)."""
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def mount(self, target: str, uid: int, gid: int, host: str) -> None:
        """Step 4 (in the new namespaces): mount the archive on ``target``, start squashfuse.

        ``host`` is where the host's root is now (``/dev/fuse`` and ``-m`` are under it).
        """
        where = target if self.archive.mount_dir is None else host + self.archive.mount_dir
        try:
            fd = os.open(host + FUSE_DEV, os.O_RDWR | os.O_CLOEXEC)
        except OSError as x:
            raise self._fail(f"FUSE not usable: can't open {FUSE_DEV}: {os.strerror(x.errno)}")
        try:
            sc.mount(self.archive.path, where, "fuse." + SQUASHFUSE,
                     sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
                     f"fd={fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
                     f"can't mount SquashFS image {self.archive.path}: mount(2) of FUSE")
            self.mounted.append(where)
            try:
                sc.send_fds(self.channel, b"fd\n", [fd])
            except OSError as x:
                raise self._fail(f"FUSE server PID {self.pid} is gone ({os.strerror(x.errno)})")
        finally:
            os.close(fd)  # the server's copy is the only one: if it dies, the mount fails
        self.channel.close()
        self.channel = None
        try:
            err = _stat_within(where, time.monotonic() + WAIT)  # waits for FUSE INIT
        except OSError as x:  # no descriptor or process left for the waiting child
            raise self._fail(f"can't wait for {self.program}: {os.strerror(x.errno)}")
        if err is not None:
            if err == errno.ETIMEDOUT:  # alive but silent: killing it aborts the connection
                self._kill()
            said = _last_line(self.abort())
            if err == errno.ETIMEDOUT:
                raise self._fail(f"{self.program} PID {self.pid} did not answer "
                                 f"within {WAIT:g} s (killed)")
            raise self._fail(f"{self.program}: {said}" if said else
                             f"{self.program} exited: {os.strerror(err)}")
        if where != target:
            sc.bind(where, target, f"can't bind SquashFS mount {where[len(host):]} on the new root")
            self.mounted.append(target)
        info(f"SquashFS image {self.archive.path} mounted read-only"
             f"{' at ' + self.archive.mount_dir if self.archive.mount_dir else ''}; "
             f"{self.program} PID {self.pid}")

    def done(self) -> None:
        """The container is built: let go of the server (it lives as long as the mount)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        if self.err_pipe >= 0:
            os.close(self.err_pipe)
            self.err_pipe = -1

    def abort(self) -> bytes:
        """ch-run failed before its exec: make the server go, wait until it has gone.

        Returns what the server wrote on its stderr.
        """
        said = b""
        if self.channel is not None:  # a server still waiting exits on EOF
            self.channel.close()
            self.channel = None
        still_mounted = False
        for where in reversed(self.mounted):  # unmounting aborts the FUSE connection
            try:
                sc.umount_detach(where, "")
            except ChError:  # e.g. gone with the staging root: ends with our namespace
                still_mounted = True
        self.mounted = []
        if still_mounted:
            self.done()  # the server ends when we exit (with our mount namespace)
        if self.err_pipe >= 0:
            said = _drain(self.err_pipe, time.monotonic() + WAIT)  # EOF: the server has exited
        self.done()
        return said


def _server_main(channel, errfd: int, exe: str, archive: Archive) -> None:
    """The server, until it execs squashfuse.  Never returns; the caller ``_exit``s.

    squashfuse gets the archive as ``/dev/fd/N`` (the file :func:`check` opened);
    ``-o fsname=PATH`` names it as given, so ``ps`` shows what it serves.
    """
    try:
        os.setsid()
        sc.set_process_name("ch-run-squash")
        # ch-run may have been started with 0, 1 or 2 closed, and then our two
        # descriptors may be among them: move them away before taking 0-2 over.
        errfd = _above_stdio(errfd)
        archive_fd = _above_stdio(archive.fd)
        if channel.fileno() <= 2:
            moved = _above_stdio(channel.fileno())
            os.close(channel.detach())
            channel = type(channel)(fileno=moved)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(errfd, 2)
        sc.close_fds_except({0, 1, 2, channel.fileno(), archive_fd})
        os.chdir("/")  # hold no directory of the host busy
        channel.sendall(f"{os.getpid()}\n".encode())
        _data, fds = sc.recv_fds(channel, 1)
        if len(fds) != 1:
            return  # ch-run failed before mounting: nothing to serve
        os.set_inheritable(fds[0], True)
        os.set_inheritable(archive_fd, True)
        channel.close()
        os.execv(exe, [exe, "-o", "fsname=" + _fuse_opt_escape(archive.path), "-f",
                       f"/dev/fd/{archive_fd}", f"/dev/fd/{fds[0]}"])
    except OSError as x:
        try:
            os.write(2, f"can't execute {exe}: {os.strerror(x.errno or 0)}\n".encode())
        except OSError:
            pass
    except BaseException:  # never let Python's exit machinery run in here
        pass


def _stat_within(path: str, deadline: float):
    """``stat(path)`` with a time bound: None if it worked, else an errno value
    (``ETIMEDOUT`` if it did not return by ``deadline``).

    A FUSE server that neither answers nor exits blocks ``stat`` of its mount
    for ever, so a short-lived child does the waiting.  It dies with ch-run
    (``PR_SET_PDEATHSIG``), and on time-out it is killed and reaped: the kernel
    lets a ``SIGKILL`` end a wait for FUSE INIT.
    """
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    errors.flush_std()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        raise
    if pid == 0:
        code = 255
        try:
            os.close(rfd)
            sc._libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # ch-run died before that
                os._exit(0)
            try:
                os.stat(path)
                code = 0
            except OSError as x:
                code = x.errno or errno.EIO
            os.write(wfd, bytes([min(code, 254)]))
        finally:
            os._exit(0)
    os.close(wfd)
    ready, answer = False, b""
    try:
        ready = bool(select.select([rfd], [], [], max(deadline - time.monotonic(), 0))[0])
        answer = os.read(rfd, 1) if ready else b""
    finally:
        os.close(rfd)
        if not answer:
            try:
                os.kill(pid, signal.SIGKILL)  # our child, not yet reaped: its PID is ours
            except OSError:
                pass
        os.waitpid(pid, 0)
    if not ready:
        return errno.ETIMEDOUT
    return answer[0] or None if answer else errno.EIO


def _fuse_opt_escape(text: str) -> str:
    """``text`` as one value in a libfuse ``-o`` list (``\\`` and ``,`` escaped)."""
    return text.replace("\\", "\\\\").replace(",", "\\,")


def _above_stdio(fd: int) -> int:
    """A copy of ``fd`` numbered above 2 (``fd`` itself if it is)."""
    low = []
    while fd <= 2:
        low.append(fd)
        fd = os.dup(fd)
    for extra in low[1:]:  # our own copies; the original's owner closes it
        os.close(extra)
    return fd


def _drain(fd: int, deadline: float) -> bytes:
    """Everything written to pipe ``fd`` until EOF (its writers are gone) or ``deadline``."""
    out = b""
    while len(out) < 65536:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""
