"""The static probes in the tiny image work on the bare host, and can fail."""

import os
import shutil
import struct
import subprocess

import pytest

from conftest import run

PROBES = ("cma-probe", "ptrace-probe")


@pytest.fixture(scope="module")
def probe(tiny_image):
    """probe(NAME) -> host path of a probe binary inside the image."""
    return lambda name: tiny_image / "usr" / "local" / "bin" / name


def _is_static_elf(path):
    """True if PATH is an ELF64 executable without a PT_INTERP (dynamic loader)."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types   # PT_INTERP


class Server:
    """A running `cma-probe serve` (optionally wrapped, e.g. by unshare)."""

    def __init__(self, cma, wrapper=()):
        self.proc = subprocess.Popen([*wrapper, cma, "serve", "120"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert len(line) == 2, f"serve printed {line!r}"
        self.pid, self.addr = line

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def server(probe):
    s = Server(probe("cma-probe"))
    yield s
    s.close()


@pytest.mark.parametrize("name", PROBES)
def test_probe_in_image(probe, name):
    path = probe(name)
    assert path.is_file() and os.access(path, os.X_OK), f"{path} missing"
    assert _is_static_elf(path), f"{path} is not a static ELF executable"


def test_busybox_image_layout(tiny_image):
    for d in ("dev", "proc", "sys", "tmp", "home", "etc", "root", "usr/local/bin", "mnt/0", "mnt/9"):
        assert (tiny_image / d).is_dir(), d
    for f in ("etc/passwd", "etc/group", "etc/hosts", "etc/resolv.conf"):
        assert (tiny_image / f).is_file(), f
    assert os.readlink(tiny_image / "bin" / "sh") == "busybox"


def test_cma_read_child(probe, server):
    assert int(server.pid) == server.proc.pid
    r = run([probe("cma-probe"), "read", server.pid, server.addr])
    assert (r.returncode, r.stdout) == (0, "ok\n"), r


def test_cma_read_bad_address(probe, server):
    r = run([probe("cma-probe"), "read", server.pid, "0x1000"])
    assert r.returncode == 1 and r.stdout.startswith("errno 14 "), r   # EFAULT


def test_cma_read_wrong_data(probe, server):
    addr = hex(int(server.addr, 16) + 1)   # readable but the pattern is shifted
    r = run([probe("cma-probe"), "read", server.pid, addr])
    assert r.returncode == 1 and r.stdout.startswith("mismatch"), r


def test_ptrace_child(probe, server):
    r = run([probe("ptrace-probe"), server.pid, server.addr])
    assert (r.returncode, r.stdout) == (0, "ok\n"), r
    assert server.proc.poll() is None, "target died after detach"
    r = run([probe("cma-probe"), "read", server.pid, server.addr])
    assert r.stdout == "ok\n", r


def test_usage_errors(probe):
    for args in ([probe("cma-probe")], [probe("cma-probe"), "read", "1"],
                 [probe("cma-probe"), "read", "x", "0"], [probe("ptrace-probe"), "1"]):
        assert run(args).returncode == 2, args


def test_nsinfo_matches_host(probe):
    r = run([probe("cma-probe"), "nsinfo"])
    ino = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in ("user", "mnt")}
    assert r.stdout == f"user:{ino['user']} mnt:{ino['mnt']}\n", r


# Sibling user namespaces are what --join exists to avoid: CMA and ptrace fail
# between them, and work within one. This checks the probes tell the two apart.
needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")


@needs_unshare
@pytest.mark.parametrize("name", PROBES)
def test_sibling_user_namespaces_eperm(probe, name):
    s = Server(probe("cma-probe"), wrapper=("unshare", "-Ur"))
    try:
        args = ["read", s.pid, s.addr] if name == "cma-probe" else [s.pid, s.addr]
        r = run(["unshare", "-Ur", probe(name), *args])
        assert r.returncode == 1 and r.stdout.startswith("errno 1 "), r   # EPERM
    finally:
        s.close()


@needs_unshare
def test_same_user_namespace_ok(probe, tmp_path):
    cma, ptr = probe("cma-probe"), probe("ptrace-probe")
    script = (f'{cma} serve 60 > "$1" & while [ ! -s "$1" ]; do sleep 0.05; done; '
              f'read pid addr < "$1"; {cma} read $pid $addr; {ptr} $pid $addr; kill $pid')
    r = run(["unshare", "-Ur", "sh", "-c", script, "sh", tmp_path / "serve.out"])
    assert r.stdout == "ok\nok\n", r
