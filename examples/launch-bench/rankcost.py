#!/usr/bin/env python3
"""What each rank of a ``--join`` group costs at launch, counted with ``strace -f``.

    examples/launch-bench/rankcost.py [--peers N] [--ch-run PATH] IMG

Starts N peers of one group at once (``CH-RUN --join-ct=N --join-tag=T IMG -- true``)
under ``strace -f -ff`` and counts, per peer, from its own ``execve`` to the
``execve`` of the command (the holder process a creator forks counts as the
creator's):

* **file-system calls**: the open/stat/access/readlink/getdents family
  (:data:`FS_CALLS`), each a metadata operation that on a shared install is a
  round trip to a parallel or network file system;
* **NSS lookups**: opens of ``/etc/passwd``, ``/etc/group``, ``/etc/nsswitch.conf``
  or a ``libnss_*`` library, and connects to the nscd socket (with LDAP or
  sssd, each lookup is a network round trip);
* **image path references**: calls, other than the peer's own ``execve``, whose
  arguments name the image (as given, or its real path).

The peer that made the namespaces (``unshare``) is the creator, the ones that
entered them (``setns``) are joiners.  Works for any ch-run that takes
``--join-ct``/``--join-tag`` (ours and Charliecloud's).  Used by
``examples/launch-bench/run`` (the ``rankcost`` table) and ``tests/test_cost.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Dict, List, Optional

#: System calls counted as file-system calls (path lookups and directory reads).
FS_CALLS = frozenset("""open openat openat2 creat stat lstat fstat newfstatat fstatat64 statx
    access faccessat faccessat2 readlink readlinkat getdents getdents64 statfs fstatfs""".split())
#: Traced: the file class, directory reads, and what tells the process tree and the roles.
TRACE = "%file,getdents,getdents64,statfs,fstatfs,fstat,connect,clone,clone3,fork,vfork,unshare,setns"
NSS_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
_LINE = re.compile(r"^(?:\d+\.\d+ )?(\w+)\((.*)")
_RET = re.compile(r"\)\s+=\s+(-?\d+)")


class RankCost:
    """The counts of one peer (and the processes it forked before exec'ing)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.role = "other"            # creator, joiner, single, other
        self.fs_calls = 0
        self.nss: List[str] = []
        self.image_refs: List[str] = []
        self.calls: Dict[str, int] = {}

    def row(self) -> dict:
        return dict(pid=self.pid, role=self.role, fs_calls=self.fs_calls,
                    nss_lookups=len(self.nss), image_refs=len(self.image_refs))

    def __repr__(self) -> str:
        return (f"RankCost({self.role} pid {self.pid}: {self.fs_calls} fs calls, "
                f"{len(self.nss)} NSS {self.nss}, {len(self.image_refs)} image refs)")


def _is_nss(name: str, args: str) -> Optional[str]:
    if name in ("open", "openat", "openat2", "stat", "newfstatat", "statx", "access",
                "faccessat", "faccessat2"):
        for f in NSS_FILES:
            if f'"{f}"' in args:
                return f
        m = re.search(r'"([^"]*/libnss_[^"]*)"', args)
        if m:
            return m[1]
    if name == "connect" and "nscd" in args:
        return "nscd socket"
    return None


def analyse(files: Dict[int, List[str]], roots: List[int], image_names: List[str]) -> List[RankCost]:
    """Per-rank counts from ``strace -ff`` output (``files``: PID → lines).

    ``roots`` are the PIDs of the peers (each started by exec'ing ch-run)."""
    children: Dict[int, List[int]] = {}
    for pid, lines in files.items():
        for line in lines:
            m = _LINE.match(line)
            if m and m[1] in ("clone", "clone3", "fork", "vfork"):
                r = _RET.search(line)
                if r and int(r[1]) > 0:
                    children.setdefault(pid, []).append(int(r[1]))
    out = []
    for root in roots:
        cost = RankCost(root)
        made = joined = False
        todo, first = [root], True
        while todo:
            pid = todo.pop()
            started = not first       # a forked child starts counting at once
            for line in files.get(pid, []):
                m = _LINE.match(line)
                if not m:
                    continue
                name, args = m[1], m[2]
                if name == "execve" and line.rstrip().endswith("= 0"):
                    # The peer's own exec starts it (and a trampoline's exec of the
                    # interpreter continues it); any other is the command: from there on
                    # it is not ch-run's cost.
                    if not started:
                        started = True
                        continue
                    if _starts_interpreter(line):
                        continue
                    break
                if not started:
                    continue
                if name == "unshare" and "CLONE_NEWUSER" in args:
                    made = True
                if name == "setns":
                    joined = True
                cost.calls[name] = cost.calls.get(name, 0) + 1
                if name in FS_CALLS:
                    cost.fs_calls += 1
                nss = _is_nss(name, args)
                if nss:
                    cost.nss.append(nss)
                if any(f'"{n}' in args for n in image_names):
                    cost.image_refs.append(line.strip()[:160])
            first = False
            todo += children.get(pid, [])
        cost.role = "creator" if made else "joiner" if joined else "single"
        out.append(cost)
    return out


def _starts_interpreter(line: str) -> bool:
    """An execve that is still ch-run starting (e.g. a shell trampoline exec'ing Python)."""
    return bool(re.search(r'execve\("[^"]*python[0-9.]*"', line))


def measure(ch_run: str, image: str, peers: int = 4, env: Optional[dict] = None,
            command: tuple = ("true",), strace: str = "strace",
            timeout: float = 60, prefix: tuple = ()) -> List[RankCost]:
    """Run ``peers`` peers of one group under ``strace -f`` and count per rank.

    Charliecloud 0.31 strands its joiners when the creator's command ends at once
    (a known upstream bug): give it e.g. ``command=("sleep", "1")``."""
    tag = f"rankcost-{uuid.uuid4().hex[:10]}"
    argv = [ch_run, *prefix, f"--join-ct={peers}", f"--join-tag={tag}", image, "--", *command]
    env = dict(os.environ if env is None else env)
    env.setdefault("USER", _user())      # Charliecloud's ch-run insists on $USER
    tmp = tempfile.mkdtemp(prefix="rankcost.")
    try:
        prefix = os.path.join(tmp, "t")
        # the launcher: one python process starting every peer at once, then waiting
        starter = ("import subprocess,sys; a=sys.argv[2:]; n=int(sys.argv[1]); "
                   "ps=[subprocess.Popen(a) for _ in range(n)]; "
                   "sys.exit(max(p.wait() for p in ps))")
        r = subprocess.run([strace, "-f", "-ff", "-qq", "-s", "256", "-e", f"trace={TRACE}",
                            "-o", prefix, sys.executable, "-c", starter, str(peers), *argv],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=env, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"peers failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        files: Dict[int, List[str]] = {}
        for p in Path(tmp).iterdir():
            files[int(p.name.rsplit(".", 1)[1])] = p.read_text(errors="replace").splitlines()
        roots = sorted(pid for pid, lines in files.items()
                       if any(l.startswith(f'execve("{ch_run}"') for l in lines))
        names = sorted({image, os.path.realpath(image)}, key=len, reverse=True)
        return analyse(files, roots, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def summary(costs: List[RankCost]) -> Dict[str, dict]:
    """Worst (largest) figures per role: {role: {fs_calls, nss_lookups, image_refs, n}}."""
    out: Dict[str, dict] = {}
    for c in costs:
        s = out.setdefault(c.role, dict(n=0, fs_calls=0, nss_lookups=0, image_refs=0))
        s["n"] += 1
        for k in ("fs_calls", "nss_lookups", "image_refs"):
            s[k] = max(s[k], c.row()[k])
    return out


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--ch-run", default=shutil.which("ch-run") or "ch-run")
    ap.add_argument("--hold", type=float, default=0,
                    help="peers run 'sleep HOLD' instead of 'true' (Charliecloud needs ~1)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list NSS and image calls")
    a = ap.parse_args()
    costs = measure(a.ch_run, a.image, a.peers,
                    command=("sleep", f"{a.hold:g}") if a.hold else ("true",))
    for c in costs:
        print(f"{c.role:8} pid {c.pid}: {c.fs_calls} fs calls, {len(c.nss)} NSS lookups, "
              f"{len(c.image_refs)} image path references")
        if a.verbose:
            for x in c.nss:
                print(f"    nss: {x}")
            for x in c.image_refs:
                print(f"    image: {x}")


if __name__ == "__main__":
    main()
