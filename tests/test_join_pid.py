"""--join-pid=PID (issue #8): enter the container of a running process of ours (pidfd)."""

import os
import subprocess

import pytest

from joinkit import (CMA, EXIT_FAILURE, EXIT_USAGE, PTRACE, Group, marked_processes, new_tag,
                     one_error, other_user_or_skip)

pytestmark = pytest.mark.container


@pytest.fixture
def group(ch_run, tiny_image, request):
    with Group(ch_run, tiny_image, name=request.node.name[:20]) as g:
        yield g


def attach(group, pid, cmd, **kw):
    return group.spawn(None, argv=[group.ch_run, f"--join-pid={pid}", group.image, "--", *cmd],
                       **kw)


@pytest.mark.parametrize("probe", ["cma", "ptrace"])
def test_attach_to_joined_peer(group, probe):
    """A joined group spins; a later --join-pid reads its memory / traces it."""
    a = group.spawn([CMA, "serve", "120"], count=2, opts=["-v"])
    b = group.spawn([CMA, "nsinfo"], count=2, opts=["-v"])
    pid, addr = a.readline().split()
    b.assert_ok(verbose=True)
    # the group filled long ago: its holder is gone, only the spinning peer is left
    group.wait_gone(lambda: [p for p in marked_processes(group.mark) if p != int(pid)],
                    "holder")
    cmd = [CMA, "read", pid, addr] if probe == "cma" else [PTRACE, pid, addr]
    c = attach(group, pid, cmd)
    c.assert_ok()
    assert c.out == "ok\n"
    # the same from a separate, non-joined container fails
    d = group.spawn(cmd, count=1, tag=new_tag("sep"))
    d.wait()
    assert d.rc == 1 and d.out.startswith("errno 1 "), d.out
    a.kill()
    a.wait()


def test_attach_shares_namespaces_and_says_so(group):
    a = group.spawn([CMA, "serve", "120"], count=1)
    pid, _ = a.readline().split()
    c = group.spawn(None, argv=[group.ch_run, "-v", f"--join-pid={pid}", group.image, "--",
                                CMA, "nsinfo"])
    lines = c.assert_ok(verbose=True)
    assert any(f"attached to PID {pid}" in l for l in lines)
    user = os.stat(f"/proc/{pid}/ns/user").st_ino
    mnt = os.stat(f"/proc/{pid}/ns/mnt").st_ino
    assert c.out == f"user:{user} mnt:{mnt}\n"
    a.kill()
    a.wait()


def test_pid_printed_by_verbose_is_attachable(group):
    a = group.spawn([CMA, "serve", "120"], count=1, opts=["-v"])
    a.readline()
    import re
    # -v names the PID to use; the command exec'd in place, so it is the command's
    pid = re.search(r"--join-pid=(\d+)\)", a.proc.stderr.readline() + a.proc.stderr.readline()
                    + a.proc.stderr.readline() + a.proc.stderr.readline())
    assert pid, "no --join-pid hint in -v output"
    c = attach(group, pid.group(1), [CMA, "nsinfo"])
    c.assert_ok()
    a.kill()
    a.wait()


def test_gone(group):
    p = subprocess.Popen(["true"])
    p.wait()
    c = attach(group, p.pid, ["true"])
    assert c.wait().rc == EXIT_FAILURE
    one_error(c.err, f"--join-pid={p.pid}")


def test_not_in_a_container(group):
    p = subprocess.Popen(["sleep", "60"])
    try:
        c = attach(group, p.pid, ["true"])
        assert c.wait().rc == EXIT_FAILURE
        one_error(c.err, f"--join-pid={p.pid}", "not in a container")
    finally:
        p.kill()
        p.wait()


def test_not_yours(group):
    if os.geteuid() == 0:
        other_user_or_skip()
        a = group.spawn([CMA, "serve", "120"], count=1, user="chrun-test")
        target, _ = a.readline().split()
    else:
        a, target = None, "1"   # init: root's
    c = attach(group, target, ["true"])
    assert c.wait().rc == EXIT_FAILURE
    one_error(c.err, f"--join-pid={target}", "not to you")
    if a is not None:
        os.kill(int(target), 9)
        a.wait()


@pytest.mark.parametrize("value", ["", "0", "-1", "abc", "1.5", "99999999999"])
def test_bad_pid_is_usage_error(group, value):
    c = group.spawn(None, argv=[group.ch_run, f"--join-pid={value}", group.image, "true"])
    assert c.wait().rc == EXIT_USAGE
    one_error(c.err, "--join-pid")
