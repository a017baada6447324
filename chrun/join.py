"""``--join`` peer groups: one peer creates the container, the others join it.

Meeting names
    A group meets on one of :data:`chrun.joinconf.NAMES` *abstract* Unix socket
    names, each a hash of a per-user secret key (:mod:`chrun.joinkey`), the
    group key (UID, host, Slurm job and node, tag) and its index.  Another user
    can neither compute them nor reuse one it has seen: the hash of one name
    says nothing about the next, nor about another group's.  An abstract name is
    no file: it vanishes with the last descriptor, so a crashed group leaves
    nothing behind.

Roles
    The peer that claims a name and *commits* (below) is the **creator**.  It
    forks a **holder** (double fork: no zombie) that keeps the listening socket,
    builds the container, hands the holder descriptors of its user and mount
    namespaces and what it built (:func:`container_facts`), then execs.  The
    holder greets every connecting peer of our UID at once (``hello``), and once
    it has the descriptors gives them (``SCM_RIGHTS``) with the facts to each;
    it exits when the group is full or its timeout has passed.  A **joiner**
    checks the facts against its own plan (exit 31 naming the first difference)
    and ``setns``-es into the descriptors: no PID is ever used.

Finding the group (:func:`rendezvous`), bounded by the join deadline
    1. *Scan* every name with a non-blocking ``connect``.  A listener of our UID
       (``SO_PEERCRED``): join it.  A listener of another UID, or a name bound by
       another UID (``sock_diag`` tells the owner of a name that does not
       answer or whose backlog is full): squatted, skip it.  A name whose owner
       can't be learnt counts as squatted after :data:`GRACE` seconds.
    2. No listener of ours anywhere: ``bind`` + ``listen`` the lowest free name,
       becoming a *candidate*.
    3. The candidate *re-scans* every other name.  A listener of ours at a lower
       index: defer (close ours, join it).  At a higher index: wait for its
       first word: a ``hello`` means it committed (defer to it); ``moved`` or
       end of file means it gave way to us (or died).  Then *commit*: it is the creator.
    A candidate that defers refuses new connections (``shutdown``) and tells
    the peers queued at it ``moved``: they start over.  End of file without a
    word means the creator died: those peers fail with one line.  Why one group cannot split, whatever a squatter
    binds or releases when: of two candidates that both commit, the one that
    listened later re-scanned after the other listened, so it saw it; it
    deferred if it was higher, or waited and read the other's ``hello`` if
    lower.  Waits only go from a lower index to a higher one: no deadlock.

Every wait (connect, a candidate's verdict, the holder's answer) is bounded
by the join deadline; a peer that meets squatters warns once, naming their UIDs.
Standard streams may be closed: descriptors 0-2 are filled with close-on-exec
``/dev/null`` first, so no socket of ours is ever one of them.

:func:`attach` (``--join-pid``) joins the namespaces of any running process of
the same user through a pidfd.
"""

from __future__ import annotations

import errno
import os
import select
import time
# The C module, not socket.py: that one imports enum, selectors, collections, ...
# (26 file-system calls and ~1 ms per peer, paid by every rank of a node at once).
import _socket as socket
TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (see chrun.plan.record)
    from typing import Dict, List, Mapping, Optional

from . import errors, syscalls as sc
from .errors import ChError, info
from .joinconf import JoinConfig, socket_names

#: Seconds a name that is bound but does not answer, owner unknown, is waited for
#: before it counts as squatted (the owner is known at once where sock_diag works).
GRACE = 0.5
#: Listen backlog: never full with our own peers (the kernel caps it at somaxconn).
BACKLOG = 4096
#: Largest message between peers (facts with many binds); larger ones are refused.
MESSAGE_MAX = 1 << 20

# Outcomes of a probe.
OWN, OTHER, REFUSED, BUSY, ALIEN = "own", "other", "refused", "busy", "alien"


#: claim(): the name was just bound by a peer of ours (or an owner still unknown).
_WAIT = object()


class _Restart(Exception):
    """The candidate we queued at deferred or died before committing: start over."""


# --- what the container is, for joiners to compare -----------------------------

#: Order and wording of the facts a joiner compares (extend here: keep it cheap,
#: no password-database lookups; joiners compute this too).
FACT_LABELS = (("image", "image"), ("uid", "UID (-u)"), ("gid", "GID (-g)"),
               ("write", "read-write (-w)"), ("tmp", "/tmp (-t)"),
               ("home", "home (--no-home)"), ("binds", "binds (-b)"),
               ("passwd", "/etc/passwd (--no-passwd)"))


def container_facts(plan, real_image: str,
                    sources: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """What every peer of a group must agree on, as a plain dict of strings.

    The creator sends its own to each joiner; a joiner compares with
    :func:`first_difference`.  Per-peer things (``-c``, the command, its
    environment) are not in it.  ``sources``: real paths of bind sources where
    known (else the given path, made absolute).
    """
    sources = sources or {}

    def real(src: str) -> str:
        if src in sources:
            return sources[src]
        return os.path.normpath(src if src.startswith("/") else os.path.join(os.getcwd(), src))

    binds: List[str] = []
    home, tmp = "none", "host"
    for m in plan.mounts:
        if m.kind == "tmpfs" and m.dst == "/tmp":
            tmp = "private"
        elif m.kind == "bind" and m.user:
            binds.append(f"{real(m.src)}:{m.dst}")
        elif m.kind == "bind" and m.src is not None and (m.why == "host home"
                                                         or m.dst.startswith("/home/")):
            home = f"{real(m.src)}:{m.dst}"
    passwd = "generated" if any(m.dst == "/etc/passwd" for m in plan.mounts) else "image's"
    return {"image": real_image, "uid": str(plan.uid), "gid": str(plan.gid),
            "write": "yes" if plan.writable else "no", "tmp": tmp, "home": home,
            "binds": "\n".join(binds) or "none", "passwd": passwd}


def first_difference(mine: Mapping[str, str], group: Mapping[str, str]) -> Optional[str]:
    """``'image: /a here, /b in the group'`` for the first fact that differs, else None."""
    labels = dict(FACT_LABELS)
    order = [k for k, _ in FACT_LABELS] + sorted(set(mine) | set(group) - set(labels))
    for key in order:
        a, b = mine.get(key, "none"), group.get(key, "none")
        if a != b:
            return (f"{labels.get(key, key)}: {a.replace(chr(10), ' ')} here, "
                    f"{b.replace(chr(10), ' ')} in the group")
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append("\n" if value[i + 1] == "n" else value[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# --- the two roles ----------------------------------------------------------------

class Creator:
    """The peer that committed to a name: it builds the container."""

    def __init__(self, cfg: JoinConfig, listener: socket.socket, name: bytes,
                 facts: Optional[Dict[str, str]] = None):
        self.cfg = cfg
        self.listener = listener
        self.name = name
        self.facts = facts or {}
        self.channel: Optional[socket.socket] = None  # to the holder
        self.holder_pid = 0

    def start_holder(self) -> None:
        """Fork the holder, which greets peers, waits for our namespaces and serves them."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        errors.flush_std()
        try:
            pid = os.fork()
        except OSError as x:
            ours.close(), theirs.close(), self.listener.close()
            raise _fork_failed(x.errno)
        if pid == 0:  # intermediate child: fork the holder and leave at once
            code = 0
            try:
                ours.close()
                if os.fork() == 0:
                    _holder_main(self.cfg, self.listener, theirs)
            except OSError as x:
                code = x.errno or errno.EAGAIN
            finally:
                os._exit(code)
        theirs.close()
        self.listener.close()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            ours.close()
            raise _fork_failed(code if code > 0 else errno.EINTR)
        self.channel = ours
        # The holder introduces itself, so -v can name it.
        hello = sc.recv_line(ours, time.monotonic() + 10)
        self.holder_pid = int(hello) if hello.isascii() and hello.isdigit() else 0

    def hand_over(self, fds: list) -> None:
        """Give the holder our namespaces and what we built (we are inside the container
        now): ``fds``, the user and mount namespaces opened while /proc was the host's (a
        --bind may cover /proc in the container); they are closed here."""
        assert self.channel is not None
        fds_ino = [sc.ns_inode_fd(fd) for fd in fds]
        try:
            # No tag here: joiners know it.
            payload = _message(creator=os.getpid(), holder=self.holder_pid,
                               user_ns=fds_ino[0], mnt_ns=fds_ino[1])
            payload += "".join(f"fact.{k}={_escape(v)}\n" for k, v in self.facts.items()).encode()
            payload += b"end=1\n"
            if len(payload) > MESSAGE_MAX:
                raise ChError(f"join: group {self.cfg.tag!r}: description of the container "
                              f"too large ({len(payload)} bytes)")
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


def _fork_failed(err: int) -> ChError:
    hint = " (too many processes: see ulimit -u)" if err == errno.EAGAIN else ""
    return ChError(f"join: can't start the group's holder process: fork: "
                   f"{os.strerror(err)}{hint}")


class Joiner:
    """A peer that received the group's namespaces from its holder."""

    def __init__(self, cfg: JoinConfig, fields: Dict[str, str], fds: List[int],
                 facts: Optional[Dict[str, str]] = None):
        self.cfg = cfg
        self.fields = fields
        self.fds = fds
        self.facts = facts
        self.creator_pid = fields.get("creator")

    def enter(self, deadline: Optional[float] = None) -> None:
        """Check the group's container is the one we asked for, then move into it."""
        what = f"join: group {self.cfg.tag!r}"
        try:
            if self.facts is not None:
                group = {k[5:]: _unescape(v) for k, v in self.fields.items()
                         if k.startswith("fact.")}
                diff = first_difference(self.facts, group)
                if diff is not None:
                    raise ChError(f"{what}: this peer asked for another container than the "
                                  f"group's (created by PID {self.creator_pid}): {diff}")
            sc.assert_single_threaded("can't join namespaces")
            sc.setns(self.fds[0], sc.CLONE_NEWUSER, f"user namespace of group {self.cfg.tag!r}")
            sc.setns(self.fds[1], sc.CLONE_NEWNS, f"mount namespace of group {self.cfg.tag!r}")
            fds_ino = [sc.ns_inode_fd(fd) for fd in self.fds]  # /proc may be covered inside
        finally:
            for fd in self.fds:
                os.close(fd)
        info(f"join: joined group {self.cfg.tag!r} created by PID {self.creator_pid} "
             f"(holder PID {self.fields.get('holder')}); user ns {fds_ino[0]}, "
             f"mnt ns {fds_ino[1]}")


# --- finding the group -------------------------------------------------------------

def reserve_std_fds() -> None:
    """Fill closed descriptors 0, 1, 2 with close-on-exec /dev/null.

    Our sockets then never land on them (a holder's dup2 over 0 would close its
    listener; messages to 2 would go into a socket), and the command still
    starts with them closed, as it was asked to.
    """
    for fd in (0, 1, 2):
        try:
            os.get_inheritable(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)  # lowest free: this one


def _probe(name: bytes):
    """Non-blocking connect: (OWN, socket), (OTHER, uid), (REFUSED|BUSY|ALIEN, None)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
                      | socket.SOCK_NONBLOCK)
    try:
        s.connect(name)
    except OSError as x:
        s.close()
        if x.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return REFUSED, None       # free, or bound without listening
        if x.errno == errno.EAGAIN:
            return BUSY, None          # a listener with a full backlog
        if x.errno == errno.EPROTOTYPE:
            return ALIEN, None         # bound by a socket of another type: not ours
        raise sc.fail("join: can't connect to group socket", x.errno or 0)
    uid = sc.peer_credentials(s)[1]
    if uid == os.geteuid():
        return OWN, s
    s.close()
    return OTHER, uid


def name_owners() -> Optional[Dict[bytes, int]]:
    """Owner UID of every abstract Unix socket name (sock_diag), or None if unavailable.

    Only asked when a name does not answer: the owner of a socket that is bound
    but not listening, or listening with a full backlog, is otherwise unknown.
    """
    le = "little"
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 4)
    except OSError:
        return None
    try:
        s.settimeout(2)
        # unix_diag_req: AF_UNIX, all states, UDIAG_SHOW_NAME | UDIAG_SHOW_UID
        req = (bytes([socket.AF_UNIX, 0, 0, 0]) + (0xFFFFFFFF).to_bytes(4, le)
               + bytes(4) + (0x01 | 0x40).to_bytes(4, le) + b"\xff" * 8)
        # nlmsghdr: SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP
        s.sendto((16 + len(req)).to_bytes(4, le) + (20).to_bytes(2, le)
                 + (0x301).to_bytes(2, le) + (1).to_bytes(4, le) + bytes(4) + req, (0, 0))
        out: Dict[bytes, int] = {}
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length = int.from_bytes(data[off:off + 4], le)
                kind = int.from_bytes(data[off + 4:off + 6], le)
                if kind in (2, 3) or length < 16:    # NLMSG_ERROR, NLMSG_DONE
                    return out if kind == 3 else None
                msg, a, name, uid = data[off + 16:off + length], 16, None, None
                while a + 4 <= len(msg):
                    alen = int.from_bytes(msg[a:a + 2], le)
                    atype = int.from_bytes(msg[a + 2:a + 4], le)
                    if alen < 4:
                        break
                    if atype == 0:                   # UNIX_DIAG_NAME
                        name = msg[a + 4:a + alen]
                    elif atype == 7:                 # UNIX_DIAG_UID (Linux >= 5.3)
                        uid = int.from_bytes(msg[a + 4:a + 8], le)
                    a += (alen + 3) & ~3
                if name is not None and uid is not None:
                    out[name] = uid
                off += (length + 3) & ~3
    except OSError:
        return None
    finally:
        s.close()


class _Search:
    """One peer's search for its group (see the module docstring)."""

    def __init__(self, cfg: JoinConfig, names: List[bytes], facts: Optional[Dict[str, str]]):
        self.cfg, self.names, self.facts = cfg, names, facts
        self.me = os.geteuid()
        self.deadline = time.monotonic() + cfg.timeout
        self.what = f"join: group {cfg.tag!r}"
        self.squatted: Dict[int, Optional[int]] = {}   # this pass: index -> other UID or None
        self.seen: Dict[int, Optional[int]] = {}       # every pass so far (for the warning)
        self.unanswered: Dict[int, float] = {}         # index -> first seen, owner unknown
        self.owners: Optional[Dict[bytes, int]] = None
        self.owners_at = -1.0

    def owner(self, i: int) -> Optional[int]:
        now = time.monotonic()
        if now - self.owners_at > 0.01:
            self.owners, self.owners_at = name_owners(), now
        return None if self.owners is None else self.owners.get(self.names[i])

    def silent(self, i: int) -> bool:
        """Name i is bound but does not answer: is it ours (worth another try)?"""
        uid = self.owner(i)
        if uid == self.me:
            return True                 # a peer of ours between bind and listen, or busy
        if uid is not None:
            self.squatted[i] = uid
            return False
        first = self.unanswered.setdefault(i, time.monotonic())
        if time.monotonic() - first < GRACE:
            return True
        self.squatted[i] = None
        return False

    def run(self):
        pause = 0.001
        while True:
            if time.monotonic() > self.deadline:
                raise ChError(f"{self.what}: can't reach its creator within "
                              f"{self.cfg.timeout:g} s{self.held_by()}")
            try:
                peer = self.one_pass()
            except _Restart:
                peer = None
            if peer is not None:
                return peer
            if len(self.squatted) == len(self.names):
                raise ChError(f"{self.what}: all {len(self.names)} meeting names are held by "
                              f"other users{self.held_by()}")
            # Another pass soon, but many peers must not spin while the one that just
            # bound a name (maybe descheduled) gets to listen on it.
            time.sleep(min(pause, max(self.deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.032)

    def held_by(self) -> str:
        held = {**self.seen, **self.squatted}
        if not held:
            return ""
        uids = sorted({("UID %d" % u) if u is not None else "an unknown UID"
                       for u in held.values()})
        return f" ({len(held)} of {len(self.names)} names held by {', '.join(uids)})"

    def one_pass(self):
        self.seen.update(self.squatted)
        self.squatted = {}          # a squatter may have let go since: look again
        free = []
        for i, name in enumerate(self.names):
            kind, val = _probe(name)
            if kind == OWN:
                return self.join(val)
            if kind == OTHER:
                self.squatted[i] = val
            elif kind == REFUSED:
                free.append(i)
            elif kind == BUSY:
                self.silent(i)
            else:                                   # ALIEN: never one of ours
                self.squatted[i] = self.owner(i)
        for i in free:
            peer = self.claim(i)
            if peer is _WAIT:       # a lower name is ours or undecided: no higher claim yet
                return None
            if peer is not None:
                return peer
        return None

    def claim(self, i: int):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(self.names[i])
        except OSError as x:
            s.close()
            if x.errno != errno.EADDRINUSE:
                raise sc.fail("join: can't bind group socket", x.errno or 0)
            kind, val = _probe(self.names[i])       # bound since our scan: by whom?
            if kind == OWN:
                return self.join(val)
            if kind == OTHER:
                self.squatted[i] = val
                return None
            return _WAIT if self.silent(i) else None
        s.listen(BACKLOG)
        self.squatted.pop(i, None)
        return self.rescan(i, s)

    def rescan(self, i: int, listener: socket.socket):
        """We are a candidate on name i: defer to a lower one, or to a committed higher one."""
        for k, name in enumerate(self.names):
            if k == i:
                continue
            kind, val = _probe(name)
            while kind == BUSY and self.owner(k) == self.me and time.monotonic() < self.deadline:
                time.sleep(0.001)                  # ours, backlog full: it will drain
                kind, val = _probe(name)
            if kind != OWN:
                continue
            first = b""
            if k > i:
                first = _first_bytes(val, self.deadline)
                if not first.startswith(b"hello="):  # it gave way to us (or died)
                    val.close()
                    continue
            _give_way(listener)                     # our queue starts over
            return self.join(val, first)
        return Creator(self.cfg, listener, self.names[i], self.facts)

    def join(self, conn: socket.socket, buffered: bytes = b""):
        """Wait for the holder's answer on ``conn``: namespaces, an error, or a restart."""
        data, fds, state = _read_message(conn, self.deadline, buffered, self.cfg.timeout)
        conn.close()
        if state == "done" and len(fds) == 2:
            try:
                fields = _fields(data)
            except ValueError:
                fields = None
            if fields is not None and "user_ns" in fields:
                return Joiner(self.cfg, fields, fds, self.facts)
        for fd in fds:
            os.close(fd)
        if state == "restart":
            raise _Restart()
        if state == "timeout":
            raise ChError(f"{self.what}: creator did not share its container within "
                          f"{self.cfg.timeout:g} s (group did not fill)")
        reason = _reason(data) or ("its holder exited before sharing a container "
                                   "(creator failed or died, or group already full)")
        raise ChError(f"{self.what}: {reason}")


def rendezvous(cfg: JoinConfig, uid: int, facts: Optional[Dict[str, str]] = None,
               env: Optional[Mapping[str, str]] = None):
    """Become the group's creator or one of its joiners.

    Returns a :class:`Creator` (which still has to build the container) or a
    :class:`Joiner` holding the group's namespace descriptors.  ``facts``: this
    peer's :func:`container_facts`, sent by a creator and checked by a joiner.
    """
    from . import joinkey
    reserve_std_fds()
    secret, problem = joinkey.load(os.environ if env is None else env)
    search = _Search(cfg, socket_names(uid, cfg.key, secret), facts)
    peer = search.run()
    if search.seen or search.squatted:
        errors.warning(f"{search.what}: meeting names taken by other users{search.held_by()}; "
                       f"met on another name")
    if problem is not None and isinstance(peer, Creator):
        errors.warning(f"join: no private key for the group's meeting names ({problem}): "
                       f"using names other users can predict (they can deny the group, "
                       f"not join it)")
    return peer


def _accept(listener: socket.socket) -> socket.socket:
    """``listener.accept()`` for a :mod:`_socket` socket: the connection, blocking."""
    fd, _ = listener._accept()
    return socket.socket(fileno=fd)


def _give_way(listener: socket.socket) -> None:
    """A candidate defers: refuse new connections, tell the queued ones to start over."""
    try:
        listener.shutdown(socket.SHUT_RD)   # connect() now gets ECONNREFUSED
    except OSError:
        pass
    listener.setblocking(False)
    while True:
        try:
            conn = _accept(listener)
        except OSError:
            break
        try:
            conn.sendall(b"moved=1\n")
        except OSError:
            pass
        conn.close()
    listener.close()


# --- messages ------------------------------------------------------------------------

def _message(**fields) -> bytes:
    """One message between peers: ``key=value`` lines (values have no newline)."""
    return "".join(f"{k}={str(v).replace(chr(10), ' ')}\n" for k, v in fields.items()).encode()


def _fields(data: bytes) -> dict:
    """The fields of a :func:`_message`; ValueError if it is not one."""
    out = {}
    for line in data.decode(errors="surrogateescape").splitlines():
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


def _first_bytes(conn: socket.socket, deadline: float) -> bytes:
    """The first line a listener of ours says (b"": it went away without a word)."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        ready, _, _ = select.select([conn], [], [], left)
        if not ready:
            continue
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


def _read_message(conn: socket.socket, deadline: float, buffered: bytes = b"",
                  timeout: float = 0.0):
    """Read the holder's words until ``end=1`` or ``error=``: (data, fds, state).

    state: ``done``; ``error`` (data has the reason, or nothing: it died);
    ``restart`` (``moved``: a candidate that gave way to another); ``timeout``.
    Once greeted, a holder answers within its own
    timeout, so from then on we wait for that (plus a little) past ``deadline``.
    """
    _s = socket
    data, fds = buffered, []
    if data:
        deadline = max(deadline, time.monotonic() + timeout + 2)
    while True:
        lines = data.split(b"\n")
        if b"end=1" in lines[:-1]:
            body = b"".join(l + b"\n" for l in lines[:-1] if not l.startswith(b"hello="))
            return body, fds, "done"
        if lines[0] == b"moved=1" and len(lines) > 1:
            return b"", fds, "restart"
        for line in lines[:-1]:
            if line.startswith(b"error="):
                for fd in fds:
                    os.close(fd)
                return line + b"\n", [], "error"
        if len(data) > MESSAGE_MAX:
            return b"", fds, "error"
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", fds, "timeout"
        ready, _, _ = select.select([conn], [], [], left)
        if not ready:
            continue
        try:
            chunk, anc, _flags, _addr = conn.recvmsg(1 << 16, _s.CMSG_SPACE(8),
                                                     _s.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            continue
        except OSError:
            chunk, anc = b"", []
        for level, kind, raw in anc:
            if level == _s.SOL_SOCKET and kind == _s.SCM_RIGHTS:
                fds.extend(int.from_bytes(raw[j:j + 4], "little", signed=True)
                           for j in range(0, len(raw) - len(raw) % 4, 4))
        if not chunk:
            return b"", fds, "error"
        if not data:
            deadline = max(deadline, time.monotonic() + timeout + 2)
        data += chunk


# --- the holder ----------------------------------------------------------------------

def _send_all(conns: list, payload: bytes) -> None:
    for c in conns:
        try:
            c.sendall(payload)
        except OSError:
            pass
        c.close()


def _turn_away(listener: socket.socket, reason: str, waiting: list = ()) -> None:
    """Tell every joiner greeted or still queued why there is no container for it."""
    payload = _message(error=reason)
    _send_all(list(waiting), payload)
    listener.setblocking(False)
    me = os.geteuid()
    while True:
        try:
            conn = _accept(listener)
        except OSError:
            return
        try:
            if sc.peer_credentials(conn)[1] == me:
                conn.sendall(payload)
        except OSError:
            pass
        finally:
            conn.close()


def _holder_main(cfg: JoinConfig, listener: socket.socket, channel: socket.socket) -> None:
    """The holder process.  Never returns; the caller's ``finally`` does ``_exit``."""
    try:
        sc.set_process_name("ch-run-holder")  # ps/pgrep -x tell it from the peers
        os.chdir("/")
        # 0-2 are the peer's streams or reserve_std_fds' /dev/null, never our sockets.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            if fd not in (listener.fileno(), channel.fileno()):
                os.dup2(devnull, fd)
        os.close(devnull)
        sc.close_fds_except({listener.fileno(), channel.fileno(), 0, 1, 2})
        channel.sendall(f"{os.getpid()}\n".encode())
        _serve(cfg, listener, channel)
    except BaseException:  # never let Python's exit machinery run in here
        pass
    os._exit(0)


def _serve(cfg: JoinConfig, listener: socket.socket, channel: socket.socket) -> None:
    """Greet peers at once, give them the namespaces once we have them, then leave."""
    deadline = time.monotonic() + cfg.timeout
    me = os.geteuid()
    hello = f"hello={os.getpid()}\n".encode()
    waiting: list = []          # greeted peers waiting for the container
    payload, fds = b"", []      # the creator's message and namespace descriptors
    joined = 1
    listener.setblocking(False)
    while joined < cfg.count:
        left = deadline - time.monotonic()
        if left <= 0:
            if not fds:
                why = f"creator did not finish its container within {cfg.timeout:g} s"
                errors.warning(f"join: group {cfg.tag!r}: {why}; giving up")
                _turn_away(listener, why, waiting)
            else:
                errors.warning(f"join: group {cfg.tag!r} did not fill: {joined} of {cfg.count} "
                               f"peers after {cfg.timeout:g} s (count too high, a peer died, or "
                               f"peers came after an earlier group with this tag was full)")
            return
        ready, _, _ = select.select([listener] + ([] if fds else [channel]), [], [], left)
        if channel in ready and not fds:
            data, got, state = _read_message(channel, deadline)
            channel.close()
            if state != "done" or len(got) != 2:
                for fd in got:
                    os.close(fd)
                _turn_away(listener, "creator failed or died before sharing its container",
                           waiting)
                return
            payload, fds = data, got
            while waiting and joined < cfg.count:
                if _give(waiting.pop(0), payload, fds):
                    joined += 1
            continue
        if listener not in ready:
            continue
        try:
            conn = _accept(listener)
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            continue
        except OSError:   # not a listening socket any more: never spin on it
            _turn_away(listener, "holder lost its socket", waiting)
            return
        try:
            if sc.peer_credentials(conn)[1] != me:
                conn.close()      # a stranger gets nothing, not even an answer
                continue
            conn.setblocking(True)
            conn.sendall(hello)
        except OSError:
            conn.close()
            continue
        if not fds:
            waiting.append(conn)
        elif _give(conn, payload, fds):
            joined += 1
    # Peers greeted or queued beyond the count (count too low) fail clearly.
    _turn_away(listener, f"group already full ({cfg.count} peers): more peers than "
                         f"the count started with this tag", waiting)


def _give(conn: socket.socket, payload: bytes, fds: list) -> bool:
    try:
        sc.send_fds(conn, payload, fds)
        return True
    except OSError:
        return False  # that peer died while waiting; wait for another
    finally:
        conn.close()


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
