"""Helpers for the --join / --join-pid tests (real processes, real namespaces).

A :class:`Group` starts ``ch-run`` peers (all marked with a unique
``CHRUN_TEST_MARK`` in their environment, which the holder and the command
inherit), waits for them, and checks what the contract promises for every
test: exit codes, one-line messages, the time bound (join timeout only) and
that nothing is left behind: no marked process (holder, peer, command), no
zombie child, no group socket in /proc/net/unix, no new /dev/shm or temp
entries.
"""

import os
import pwd
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from chrun import joinconf

#: Every error or warning is exactly one line of this shape.
MSG = re.compile(r"^ch-run\[\d+\]: (error|warning): .+$")
#: With -v, lines without a level are allowed too.
VERBOSE_MSG = re.compile(r"^ch-run\[\d+\]: .+$")
#: Seconds beyond the join timeout that start-up may take on a loaded 2-core box.
SLACK = 25.0
#: Join timeout for tests where a group is meant not to fill.
SHORT = 3.0
CMA = "/usr/local/bin/cma-probe"
PTRACE = "/usr/local/bin/ptrace-probe"
OTHER_USER = "chrun-test"
EXIT_FAILURE, EXIT_USAGE = 31, 64

_SHM_IGNORE = re.compile(r"vader|ompi|open_mpi|mpich|psm|pmix|sm_segment|shm-col|hwloc|ucx|knem|xpmem")


def new_tag(name=""):
    return f"jt-{name}-{uuid.uuid4().hex[:12]}"


def clean_env(**extra):
    """Our environment without launcher variables that would change the defaults."""
    drop = ("SLURM_", "OMPI_", "PMI", "PMIX_", "MPI_", "CH_RUN_", "CHRUN_TEST_MARK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def check_lines(err, verbose=False):
    """Every stderr line (strace's own noise aside) is a well-formed ch-run line."""
    shape = VERBOSE_MSG if verbose else MSG
    lines = [l for l in err.splitlines() if l and not l.startswith("strace: ")]
    bad = [l for l in lines if not shape.match(l)]
    assert not bad, f"malformed stderr lines: {bad!r}\nall stderr:\n{err}"
    return lines


def one_error(err, *words, verbose=False):
    """stderr has exactly one error line (containing each of WORDS); return it."""
    lines = check_lines(err, verbose)
    errs = [l for l in lines if ": error: " in l]
    assert len(errs) == 1, f"expected one error line, got:\n{err}"
    for w in words:
        assert w in errs[0], f"{w!r} not in {errs[0]!r}"
    return errs[0]


def other_user_or_skip():
    if os.geteuid() != 0:
        pytest.skip("needs root (starts a peer as another user with runuser)")
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"user {OTHER_USER} missing (ci/make-test-user.sh)")


def user_env(uid):
    """HOME of user UID (the key lives there), for computing its group's names."""
    if uid == os.geteuid():
        return dict(os.environ)
    return {"HOME": pwd.getpwuid(uid).pw_dir}


def group_names(uid, tag, env, secret=None):
    """The group's meeting names (bytes, with the leading NUL), as its peers compute them.

    ``secret``: the user's key (default: read it, as root may for any user); b"" for
    the names anyone can compute (no key).
    """
    from chrun import joinkey
    key = joinconf.group_key(uid, tag, env, socket.gethostname())
    if secret is None:
        path = joinkey.key_path(user_env(uid))
        try:
            secret = open(path, "rb").read().strip() if path else b""
        except OSError:
            secret = b""
    return joinconf.socket_names(uid, key, secret)


def group_sockets(uid, tag, env):
    return [n[1:].decode() for n in group_names(uid, tag, env)]


def _proc_ids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def marked_processes(mark):
    """PIDs of live (non-zombie) processes whose environment carries MARK."""
    needle = f"CHRUN_TEST_MARK={mark}".encode() + b"\0"
    out = []
    for pid in _proc_ids():
        if needle in _read(f"/proc/{pid}/environ"):
            stat = _read(f"/proc/{pid}/stat")
            if stat and stat.rsplit(b")", 1)[-1].split()[0] != b"Z":
                out.append(pid)
    return out


def processes_with(text):
    """PIDs of our live processes whose command line contains TEXT."""
    me, needle, out = os.geteuid(), text.encode(), []
    for pid in _proc_ids():
        try:
            if os.stat(f"/proc/{pid}").st_uid != me:
                continue
        except OSError:
            continue
        if needle in _read(f"/proc/{pid}/cmdline") and pid != os.getpid():
            out.append(pid)
    return out


def zombie_children():
    me, out = str(os.getpid()).encode(), []
    for pid in _proc_ids():
        fields = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()
        if len(fields) > 1 and fields[0] == b"Z" and fields[1] == me:
            out.append(pid)
    return out


def _shm_entries(uid):
    out = set()
    for e in Path("/dev/shm").iterdir():
        try:
            if e.lstat().st_uid == uid and not _SHM_IGNORE.search(e.name):
                out.add(e.name)
        except OSError:
            pass
    return out


def _tmp_entries(tag):
    """Our temp entries named like ch-run's (other test runs may share /tmp)."""
    ours = re.compile(r"^(chrun|ch-run|ch_run|join)|" + re.escape(tag.lower()))
    out = set()
    for d in {"/tmp", tempfile.gettempdir()}:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            try:
                if ours.search(n.lower()) and os.lstat(f"{d}/{n}").st_uid == os.geteuid():
                    out.add(f"{d}/{n}")
            except OSError:
                pass
    return out


class Peer:
    def __init__(self, group, argv, env, user=None):
        self.group, self.argv = group, argv
        self.t0 = time.monotonic()
        if user is not None:   # e.g. chrun-test, started by root; runuser keeps env
            argv = ["runuser", "-u", user, "--", *argv]
        self.proc = subprocess.Popen([os.fspath(a) for a in argv], env=env, cwd="/",
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.rc = self.out = self.err = None
        self.elapsed = None

    def readline(self, timeout=None):
        """One line of stdout, while the peer runs (e.g. cma-probe serve's PID ADDR)."""
        timeout = self.group.bound if timeout is None else timeout
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"peer {self.argv} printed nothing within {timeout} s"
        return self.proc.stdout.readline()

    def kill(self, sig=signal.SIGKILL):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout=None):
        if self.rc is None:
            timeout = self.group.bound if timeout is None else timeout
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.group.kill_all()
                out, err = self.proc.communicate()
                pytest.fail(f"peer {self.argv} still running after {timeout:g} s\n{err}")
            self.rc, self.out, self.err = self.proc.returncode, out, err
            self.elapsed = time.monotonic() - self.t0
        return self

    def assert_ok(self, verbose=False):
        self.wait()
        assert self.rc == 0, f"peer failed ({self.rc}): {self.argv}\n{self.out}\n{self.err}"
        return check_lines(self.err, verbose)

    def warnings(self):
        return [l for l in check_lines(self.wait().err, True) if ": warning: " in l]


class Group:
    """Peers of one test; ``with Group(...) as g`` checks for leftovers at the end."""

    def __init__(self, ch_run, image, tag=None, timeout=SHORT, name=""):
        self.ch_run, self.image = ch_run, image
        self.tag = tag or new_tag(name)
        self.timeout = timeout
        self.bound = timeout + SLACK
        self.mark = uuid.uuid4().hex
        self.peers = []
        self.envs = []
        self.uid = os.geteuid()
        self.shm_before = _shm_entries(self.uid)
        self.tmp_before = _tmp_entries(self.tag)
        self.t0 = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is not None:   # failing already: just don't leave processes behind
            self.kill_all()
            for p in self.peers:
                try:
                    p.proc.communicate(timeout=self.bound)
                except subprocess.TimeoutExpired:
                    pass
            for pid in marked_processes(self.mark):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            return False
        self.assert_clean()
        return False

    def kill_all(self):
        """SIGKILL every process of this group: peers, wrappers, commands, holders."""
        for pid in marked_processes(self.mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for p in self.peers:
            if p.proc.poll() is None:
                p.kill()

    def env(self, **extra):
        return clean_env(CHRUN_TEST_MARK=self.mark, **extra)

    def argv(self, cmd, count=None, tag=True, opts=()):
        a = [self.ch_run]
        if count is not None:
            a.append(f"--join-ct={count}")
        if tag is True:
            a.append(f"--join-tag={self.tag}")
        elif isinstance(tag, str):
            a.append(f"--join-tag={tag}")
        a += [f"--join-timeout={self.timeout:g}", *opts, self.image, "--", *cmd]
        return a

    def spawn(self, cmd, count=None, tag=True, opts=(), env=None, user=None, wrapper=(),
              argv=None):
        """Start one peer: ``ch-run --join-ct=COUNT --join-tag=TAG OPTS IMAGE -- CMD``."""
        env = self.env(**(env or {}))
        argv = argv if argv is not None else self.argv(cmd, count, tag, opts)
        p = Peer(self, [*wrapper, *argv], env, user)
        self.peers.append(p)
        self.envs.append(env)
        return p

    def spawn_many(self, n, cmd, count=None, **kw):
        return [self.spawn(cmd, count, **kw) for _ in range(n)]

    def wait_all(self):
        for p in self.peers:
            p.wait()
        return self.peers

    def wait_gone(self, pids_fn, what):
        deadline = self.t0 + self.bound
        while (left := pids_fn()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, (f"{what} still there {time.monotonic() - self.t0:.1f} s after the "
                          f"group started (join timeout {self.timeout:g} s): "
                          + "; ".join(_read(f"/proc/{p}/cmdline").replace(b"\0", b" ").decode(
                              errors="replace") for p in left))

    def assert_clean(self):
        """All peers done within the bound, nothing at all left behind."""
        self.wait_all()
        for p in self.peers:
            assert p.elapsed <= self.bound, (
                f"peer took {p.elapsed:.1f} s (join timeout {self.timeout:g} s): {p.argv}")
        self.wait_gone(lambda: marked_processes(self.mark), "marked processes (holder?)")
        self.wait_gone(lambda: processes_with(self.tag), f"processes with tag {self.tag!r}")
        assert not zombie_children(), f"zombie children: {zombie_children()}"
        names = {n for env in self.envs or [clean_env()]
                 for uid in {self.uid, *self._peer_uids()}
                 for n in group_sockets(uid, self.tag, env)}
        unix = Path("/proc/net/unix").read_text()
        assert not [n for n in names if n in unix], "group socket still bound"
        new_shm = _shm_entries(self.uid) - self.shm_before
        assert not new_shm, f"new /dev/shm entries: {sorted(new_shm)}"
        new_tmp = _tmp_entries(self.tag) - self.tmp_before
        assert not new_tmp, f"new temp entries: {sorted(new_tmp)}"

    def _peer_uids(self):
        uids = set()
        if os.geteuid() == 0:
            try:
                uids.add(pwd.getpwnam(OTHER_USER).pw_uid)
            except KeyError:
                pass
        return uids


def verbose_facts(err):
    """From -v output: ('created'|'joined', creator PID, user ns, mnt ns) or None."""
    m = re.search(r"^ch-run\[(\d+)\]: join: created container for group .*; user ns (\d+), "
                  r"mnt ns (\d+); holder PID (\d+)$", err, re.M)
    if m:
        return ("created", int(m.group(1)), int(m.group(2)), int(m.group(3)))
    m = re.search(r"^ch-run\[\d+\]: join: joined group .* created by PID (\d+) \(holder PID "
                  r"\d+\); user ns (\d+), mnt ns (\d+)$", err, re.M)
    if m:
        return ("joined", int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return None


def nsinfo(out):
    m = re.fullmatch(r"user:(\d+) mnt:(\d+)\n", out)
    assert m, f"nsinfo printed {out!r}"
    return int(m.group(1)), int(m.group(2))


def host_ns():
    return os.stat("/proc/self/ns/user").st_ino, os.stat("/proc/self/ns/mnt").st_ino


def delayed(syscall, seconds, when=1):
    """strace wrapper delaying the WHEN-th SYSCALL of the wrapped process by SECONDS."""
    return ["strace", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
            "-e", f"inject={syscall}:delay_enter={int(seconds * 1e6)}:when={when}"]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
