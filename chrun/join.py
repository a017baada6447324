"""``--join`` peer groups: one peer creates the container, the others join it.

The group meets on an *abstract* Unix socket named after a hash of the user,
the Slurm job, the node and the tag (:func:`chrun.joinconf.socket_name`).  An
abstract name is no file: it vanishes with the last descriptor, so a crashed
group leaves nothing behind and never blocks a later one.

* The first peer to ``bind`` the name is the **creator**.  Before it makes any
  namespace it forks a **holder** (double fork, so no zombie is left behind)
  that keeps the listening socket.  Once the container is ready the creator
  sends the holder descriptors of its user and mount namespaces, then execs
  its command at once: a creator whose command ends immediately never strands
  its peers, since the holder, not the creator, serves them.
* Every other peer **connects**, checks with ``SO_PEERCRED`` that the holder
  runs as its own user, receives the two namespace descriptors
  (``SCM_RIGHTS``) and ``setns``-es into them.  Descriptors, not PIDs: no
  PID-reuse race is possible.
* The holder checks each joiner's credentials the same way, serves
  ``count - 1`` joiners and exits; if the group does not fill within the
  timeout it warns once and exits.  If the creator dies before handing over,
  the holder exits and every waiting joiner fails with one clear line.

:func:`attach` (``--join-pid``) joins the namespaces of any running process of
the same user through a pidfd.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Optional

from . import errors, syscalls as sc
from .errors import ChError, info
from .joinconf import JoinConfig, socket_name

#: Names tried when another user squats ours (each skipped one is warned about).
NAME_ATTEMPTS = 8


class Creator:
    """The peer that bound the group's socket: it builds the container."""

    def __init__(self, cfg: JoinConfig, listener: socket.socket, name: bytes):
        self.cfg = cfg
        self.listener = listener
        self.name = name
        self.channel: Optional[socket.socket] = None  # to the holder
        self.holder_pid = 0

    def start_holder(self) -> None:
        """Fork the holder, which waits for our namespaces and serves the peers."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        errors.flush_std()
        pid = os.fork()
        if pid == 0:  # intermediate child: fork the holder and leave at once
            try:
                ours.close()
                if os.fork() == 0:
                    _holder_main(self.cfg, self.listener, theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.listener.close()
        os.waitpid(pid, 0)
        self.channel = ours
        # The holder introduces itself, so -v can name it.
        hello = _recv_line(ours, time.monotonic() + 10)
        self.holder_pid = int(hello) if hello.isdigit() else 0

    def hand_over(self, fds: list) -> None:
        """Give the holder our namespaces (we are inside the container now): ``fds``,
        the user and mount namespaces opened while /proc was the host's (a --bind
        may cover /proc in the container); they are closed here."""
        assert self.channel is not None
        fds_ino = [sc.ns_inode_fd(fd) for fd in fds]
        try:
            # No tag here: joiners know it, and a long one (up to 4096 bytes) would
            # not fit the joiner's receive buffer.
            payload = _message(creator=os.getpid(), holder=self.holder_pid,
                               user_ns=sc.ns_inode_fd(fds[0]), mnt_ns=sc.ns_inode_fd(fds[1]))
            sc.send_fds(self.channel, payload, fds)
        except OSError as x:
            raise ChError(f"join: group {self.cfg.tag!r}: holder PID {self.holder_pid} gave up "
                          f"before the container was ready (set-up took longer than the join "
                          f"timeout of {self.cfg.timeout:g} s?): "
                          f"{os.strerror(x.errno or errno.EPIPE)}")
        finally:
            for fd in fds:
                os.close(fd)
            self.channel.close()
        info(f"join: created container for group {self.cfg.tag!r} ({self.cfg.count} peers, "
             f"count from {self.cfg.count_from}, tag from {self.cfg.tag_from}); "
             f"user ns {fds_ino[0]}, mnt ns {fds_ino[1]}; holder PID {self.holder_pid}")


class Joiner:
    """A peer connected to the group's holder, about to receive the namespaces."""

    def __init__(self, cfg: JoinConfig, conn: socket.socket, creator_pid: int):
        self.cfg = cfg
        self.conn = conn
        self.creator_pid = creator_pid  # the PID that bound the group's socket

    def enter(self, deadline: float) -> None:
        """Receive the group's namespaces and move into them."""
        what = f"join: group {self.cfg.tag!r}"
        left = deadline - time.monotonic()
        ready, _, _ = select.select([self.conn], [], [], max(left, 0))
        if not ready:
            self.conn.close()
            raise ChError(f"{what}: creator did not share its container within "
                          f"{self.cfg.timeout:g} s (group did not fill)")
        try:
            data, fds = sc.recv_fds(self.conn, 2)
        except OSError as x:
            data, fds = b"", []
            info(f"{what}: receive failed: {os.strerror(x.errno or 0)}")
        finally:
            self.conn.close()
        try:
            if not data or len(fds) != 2:
                reason = _reason(data) or ("its holder exited before sharing a container "
                                           "(creator failed or died, or group already full)")
                raise ChError(f"{what}: {reason}")
            try:
                meta = _fields(data)
            except ValueError:
                raise ChError(f"{what}: garbled message from holder ({len(data)} bytes)")
            sc.assert_single_threaded("can't join namespaces")
            sc.setns(fds[0], sc.CLONE_NEWUSER, f"user namespace of group {self.cfg.tag!r}")
            sc.setns(fds[1], sc.CLONE_NEWNS, f"mount namespace of group {self.cfg.tag!r}")
            fds_ino = [sc.ns_inode_fd(fd) for fd in fds]  # /proc may be covered inside
        finally:
            for fd in fds:
                os.close(fd)
        info(f"join: joined group {self.cfg.tag!r} created by PID {meta.get('creator')} "
             f"(holder PID {meta.get('holder')}); user ns {fds_ino[0]}, mnt ns {fds_ino[1]}")


def rendezvous(cfg: JoinConfig, uid: int):
    """Become the group's creator or one of its joiners.

    Returns a :class:`Creator` (which still has to build the container) or a
    :class:`Joiner` connected to the group's holder.
    """
    deadline = time.monotonic() + cfg.timeout
    for attempt in range(NAME_ATTEMPTS):
        name = socket_name(uid, cfg.key, attempt)
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.bind(name)
                s.listen(min(cfg.count, 4096))
                return Creator(cfg, s, name)
            except OSError as x:
                if x.errno != errno.EADDRINUSE:
                    s.close()
                    raise sc.fail("join: can't bind group socket", x.errno)
            try:
                s.connect(name)
            except OSError as x:
                s.close()
                if x.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise sc.fail("join: can't connect to group socket", x.errno)
                if time.monotonic() > deadline:
                    raise ChError(f"join: group {cfg.tag!r}: can't reach creator within "
                                  f"{cfg.timeout:g} s")
                time.sleep(0.001)  # its creator just left; the name is free again
                continue
            pid, peer_uid, _ = sc.peer_credentials(s)
            if peer_uid != os.geteuid():
                s.close()
                errors.warning(f"join: group socket for tag {cfg.tag!r} is held by UID "
                               f"{peer_uid} (PID {pid}), not you; trying another name")
                break
            return Joiner(cfg, s, pid)
    raise ChError(f"join: group {cfg.tag!r}: all {NAME_ATTEMPTS} socket names are held by other users")


def _message(**fields) -> bytes:
    """One message between peers: ``key=value`` lines (values have no newline)."""
    return "".join(f"{k}={str(v).replace(chr(10), ' ')}\n" for k, v in fields.items()).encode()


def _fields(data: bytes) -> dict:
    """The fields of a :func:`_message`; ValueError if it is not one."""
    out = {}
    for line in data.decode().splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(line)
        out[key] = value
    return out


def _reason(data: bytes) -> str:
    """The holder's explanation in a message without descriptors, if any."""
    try:
        return _fields(data).get("error", "")
    except ValueError:
        return ""


def _turn_away(listener: socket.socket, reason: str) -> None:
    """Tell every joiner already waiting in the backlog why there is no container."""
    listener.setblocking(False)
    payload = _message(error=reason)
    me = os.geteuid()
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                if sc.peer_credentials(conn)[1] == me:
                    conn.sendall(payload)
            except OSError:
                pass


def _recv_line(sock: socket.socket, deadline: float) -> str:
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        data = sock.recv(64)
    except OSError:
        data = b""
    sock.settimeout(None)
    return data.decode(errors="replace").strip()


def _holder_main(cfg: JoinConfig, listener: socket.socket, channel: socket.socket) -> None:
    """The holder process.  Never returns; the caller's ``finally`` does ``_exit``."""
    try:
        sc.set_process_name("ch-run-holder")  # ps/pgrep -x tell it from the peers
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        keep = {listener.fileno(), channel.fileno(), 2}
        for fd in _open_fds():
            if fd > 2 and fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        channel.sendall(f"{os.getpid()}\n".encode())
        _serve(cfg, listener, channel)
    except BaseException:  # never let Python's exit machinery run in here
        pass
    os._exit(0)


def _open_fds():
    try:
        return [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return []


def _serve(cfg: JoinConfig, listener: socket.socket, channel: socket.socket) -> None:
    deadline = time.monotonic() + cfg.timeout
    # 1. Wait for the creator's namespaces (EOF: the creator failed or died).
    ready, _, _ = select.select([channel], [], [], cfg.timeout)
    if not ready:
        why = f"creator did not finish its container within {cfg.timeout:g} s"
        errors.warning(f"join: group {cfg.tag!r}: {why}; giving up")
        _turn_away(listener, why)
        return
    try:
        data, fds = sc.recv_fds(channel, 2)
    except OSError:
        data, fds = b"", []
    channel.close()
    if not data or len(fds) != 2:
        _turn_away(listener, "creator failed or died before sharing its container")
        return
    # 2. Serve count - 1 joiners, each checked to be our own user.
    me = os.geteuid()
    joined = 1
    while joined < cfg.count:
        left = deadline - time.monotonic()
        if left <= 0:
            errors.warning(f"join: group {cfg.tag!r} did not fill: {joined} of {cfg.count} "
                           f"peers after {cfg.timeout:g} s (count too high, a peer died, or "
                           f"peers came after an earlier group with this tag was full)")
            return
        ready, _, _ = select.select([listener], [], [], left)
        if not ready:
            continue
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        with conn:
            pid, uid, _ = sc.peer_credentials(conn)
            if uid != me:
                continue  # a stranger gets nothing, not even an answer
            try:
                sc.send_fds(conn, data, fds)
                joined += 1
            except OSError:
                pass  # that peer died while connecting; wait for another
    # 3. Peers already queued beyond the count (count too low) fail clearly.
    _turn_away(listener, f"group already full ({cfg.count} peers): more peers than "
                         f"the count started with this tag")


def attach(pid: int) -> None:
    """``--join-pid``: enter the user and mount namespaces of running process ``pid``.

    Only a process of our own user, in a container whose user namespace is a
    child of ours (what ch-run makes), qualifies.  The pidfd pins the process:
    the checks below are about it, not about a later process with its PID.
    """
    what = f"--join-pid={pid}"
    try:
        pidfd = sc.pidfd_open(pid)
    except ChError as x:
        raise ChError(f"{what}: no such process ({x.message.rsplit(': ', 1)[-1]})")
    try:
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
            # Owner first: another user's /proc/PID/ns is unreadable (EACCES).
            if owner != os.geteuid():
                raise ChError(f"{what}: process belongs to UID {owner}, not to you")
            target_user = os.stat(f"/proc/{pid}/ns/user").st_ino
        except OSError as x:
            raise ChError(f"{what}: can't inspect process: {os.strerror(x.errno)}")
        if target_user == sc.ns_inode("/proc/self/ns/user"):
            raise ChError(f"{what}: process is not in a container (same user namespace as you)")
        if not sc.pidfd_alive(pidfd):
            raise ChError(f"{what}: process exited")
        sc.assert_single_threaded("can't join namespaces")
        sc.setns(pidfd, sc.CLONE_NEWUSER | sc.CLONE_NEWNS, f"namespaces of PID {pid}")
    finally:
        os.close(pidfd)
    info(f"join: attached to PID {pid}: user ns {sc.ns_inode('/proc/self/ns/user')}, "
         f"mnt ns {sc.ns_inode('/proc/self/ns/mnt')}")
