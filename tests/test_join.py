"""--join (issue #3): peers of a group share one user + mount namespace.

Real ch-run processes in real namespaces; every test checks exit codes, the
one-line message shape, the join-timeout bound and that nothing is left
behind (see joinkit.Group).  Runs as root and as a plain user.
"""

import os
import re

import pytest

from conftest import run
from joinkit import (CMA, EXIT_USAGE, PTRACE, SHORT, Group, check_lines, clean_env,
                     host_ns, new_tag, nsinfo, one_error, other_user_or_skip, verbose_facts)

pytestmark = pytest.mark.container


@pytest.fixture
def group(ch_run, tiny_image, request):
    with Group(ch_run, tiny_image, name=request.node.name[:20]) as g:
        yield g


def serve(group, **kw):
    """A peer running `cma-probe serve`; returns (peer, pid, addr)."""
    p = group.spawn([CMA, "serve", "120"], **kw)
    pid, addr = p.readline().split()
    return p, pid, addr


@pytest.mark.parametrize("n", [2, 4])
def test_peers_share_namespaces(group, n):
    peers = group.spawn_many(n, [CMA, "nsinfo"], count=n, opts=["-v"])
    for p in peers:
        p.assert_ok(verbose=True)
    ns = {nsinfo(p.out) for p in peers}
    assert len(ns) == 1, f"peers in different namespaces: {ns}"
    (user, mnt), = ns
    assert user not in host_ns() and mnt not in host_ns()
    # -v: exactly one creator, n-1 joiners naming it, all with the same identities
    facts = [verbose_facts(p.err) for p in peers]
    creators = [f for f in facts if f and f[0] == "created"]
    assert len(creators) == 1, [p.err for p in peers]
    creator_pid = creators[0][1]
    assert creator_pid in [p.pid for p in peers]
    for f in facts:
        assert f is not None and f[2:] == (user, mnt)
        if f[0] == "joined":
            assert f[1] == creator_pid
    assert sum(f[0] == "joined" for f in facts) == n - 1


def test_verbose_says_who_and_where(group):
    a = group.spawn([CMA, "nsinfo"], count=2, opts=["-v"])
    b = group.spawn([CMA, "nsinfo"], count=2, opts=["-v"])
    la, lb = a.assert_ok(verbose=True), b.assert_ok(verbose=True)
    text = "\n".join(la + lb)
    assert re.search(rf"created container for group '{group.tag}' \(2 peers, count from "
                     r"--join-ct, tag from --join-tag\)", text)
    assert re.search(rf"joined group '{group.tag}' created by PID \d+ \(holder PID \d+\)", text)
    assert re.search(r"this process: PID \d+ \(others can join it with --join-pid=\d+\)", text)


def test_cma_between_joined_peers(group):
    server, pid, addr = serve(group, count=2)
    reader = group.spawn([CMA, "read", pid, addr], count=2)
    reader.assert_ok()
    assert reader.out == "ok\n"
    server.kill()
    server.wait()
    assert server.rc == -9 and check_lines(server.err) == []


def test_ptrace_between_joined_peers(group):
    server, pid, addr = serve(group, count=2)
    tracer = group.spawn([PTRACE, pid, addr], count=2)
    tracer.assert_ok()
    assert tracer.out == "ok\n"
    server.kill()
    server.wait()


@pytest.mark.parametrize("probe", ["cma", "ptrace"])
def test_cma_and_ptrace_fail_between_separate_containers(group, probe):
    server, pid, addr = serve(group, count=1)
    cmd = [CMA, "read", pid, addr] if probe == "cma" else [PTRACE, pid, addr]
    other = group.spawn(cmd, count=1, tag=new_tag("other"))
    other.wait()
    assert other.rc == 1 and other.out.startswith("errno 1 "), (other.out, other.err)
    check_lines(other.err)
    server.kill()
    server.wait()


def test_short_creator_then_peers(group):
    """The creator's command ends at once; joiners started after that still get its container."""
    first = group.spawn(["true"], count=3, opts=["-v"])
    # Wait for the creator process itself, not for EOF on its stderr (the holder shares it).
    first.proc.wait(timeout=group.bound)
    assert first.proc.returncode == 0
    late = group.spawn_many(2, [CMA, "nsinfo"], count=3, opts=["-v"])
    for p in late:
        p.assert_ok(verbose=True)
        assert verbose_facts(p.err)[:2] == ("joined", first.pid)
    assert len({p.out for p in late}) == 1
    first.assert_ok(verbose=True)


def test_short_joiner_then_peers(group):
    a = group.spawn([CMA, "nsinfo"], count=3)
    b = group.spawn(["true"], count=3)
    b.proc.wait(timeout=group.bound)
    c = group.spawn([CMA, "nsinfo"], count=3)
    for p in (a, b, c):
        p.assert_ok()
    assert a.out == c.out


def test_group_that_never_fills(group):
    """Count 3, two peers: both run in one container; one warning; done within the bound."""
    peers = group.spawn_many(2, [CMA, "nsinfo"], count=3)
    for p in peers:
        assert p.wait().rc == 0, p.err
    assert peers[0].out == peers[1].out
    warns = [w for p in peers for w in p.warnings()]
    assert len(warns) == 1 and "did not fill: 2 of 3 peers" in warns[0], warns
    assert all(": error: " not in p.err for p in peers)


def test_lone_peer_of_a_group_warns(group):
    p = group.spawn([CMA, "nsinfo"], count=2)
    assert p.wait().rc == 0
    w, = p.warnings()
    assert f"group '{group.tag}' did not fill: 1 of 2 peers after {SHORT:g} s" in w


def test_count_one_is_a_plain_container(group):
    p = group.spawn([CMA, "nsinfo"], count=1, opts=["-v"])
    p.assert_ok(verbose=True)
    assert verbose_facts(p.err) is None and "holder" not in p.err


# --- defaults from the environment -------------------------------------------

@pytest.mark.parametrize("var,value,count", [
    ("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 2),
    ("SLURM_STEP_TASKS_PER_NODE", "2(x3)", 2),
    ("SLURM_CPUS_ON_NODE", "2", 2),
])
def test_count_from_variable(group, var, value, count):
    peers = group.spawn_many(count, [CMA, "nsinfo"], opts=["-j", "-v"], env={var: value})
    for p in peers:
        p.assert_ok(verbose=True)
        assert f"({count} peers, count from ${var}," in p.err or "joined group" in p.err
    assert len({p.out for p in peers}) == 1


def test_slurm_tasks_per_node_by_node_id(group):
    """SLURM_STEP_TASKS_PER_NODE=3,1: node 0 groups 3 peers, node 1 runs 1 alone."""
    env0 = {"SLURM_STEP_TASKS_PER_NODE": "3,1", "SLURM_NODEID": "0"}
    env1 = {"SLURM_STEP_TASKS_PER_NODE": "3,1", "SLURM_NODEID": "1"}
    node0 = [group.spawn([CMA, "nsinfo"], opts=["-j", "-v"], env=env0) for _ in range(3)]
    node1 = group.spawn([CMA, "nsinfo"], opts=["-j", "-v"], env=env1)
    for p in (*node0, node1):
        p.assert_ok(verbose=True)
    assert len({p.out for p in node0}) == 1
    assert "(3 peers, count from $SLURM_STEP_TASKS_PER_NODE" in "".join(p.err for p in node0)
    assert verbose_facts(node1.err) is None   # a group of one is a plain container
    assert not [w for p in (*node0, node1) for w in p.warnings()]


def test_tag_from_slurm_step_id(group):
    env = {"SLURM_STEP_ID": group.tag, "SLURM_JOB_ID": "77"}
    peers = group.spawn_many(2, [CMA, "nsinfo"], count=2, tag=False, opts=["-v"], env=env)
    for p in peers:
        p.assert_ok(verbose=True)
    assert len({p.out for p in peers}) == 1
    assert f"group '{group.tag}' (2 peers, count from --join-ct, tag from $SLURM_STEP_ID)" in \
        "".join(p.err for p in peers)


def test_tag_from_parent_pid(group):
    """Without --join-tag or SLURM_STEP_ID, peers with one parent form one group."""
    ch = f"{group.ch_run} --join-ct=2 --join-timeout={group.timeout:g} -v {group.image} -- {CMA}"
    script = f"{ch} nsinfo & {ch} nsinfo & wait"
    p = group.spawn(None, argv=["sh", "-c", script + f" # {group.tag}"])
    p.assert_ok(verbose=True)
    outs = p.out.splitlines()
    assert len(outs) == 2 and outs[0] == outs[1], p.out
    assert "tag from parent PID" in p.err


@pytest.mark.parametrize("var", ["OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE",
                                 "SLURM_CPUS_ON_NODE"])
@pytest.mark.parametrize("value", ["0", "-1", "a", "", "99999999999999999999"])
def test_bad_count_variable_is_usage_error(group, var, value):
    p = group.spawn(["true"], opts=["-j"], env={var: value})
    assert p.wait().rc == EXIT_USAGE
    one_error(p.err, f"${var}")


@pytest.mark.parametrize("value", ["0", "-1", "a", "", "1a", "2(x3)", " 2", "4294967298",
                                   "99999999999999999999999999"])
def test_bad_count_option_is_usage_error(group, value):
    p = group.spawn(["true"], count=value)
    assert p.wait().rc == EXIT_USAGE
    one_error(p.err, "--join-ct")


def test_option_beats_variables(group):
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": "5", "SLURM_STEP_ID": "9"}
    peers = group.spawn_many(2, [CMA, "nsinfo"], count=2, opts=["-v"], env=env)
    for p in peers:
        p.assert_ok(verbose=True)
    assert f"'{group.tag}' (2 peers, count from --join-ct, tag from --join-tag)" in \
        "".join(p.err for p in peers)


def test_empty_tag_is_usage_error(group):
    p = group.spawn(["true"], count=2, tag="")
    assert p.wait().rc == EXIT_USAGE
    one_error(p.err, "tag")
    q = group.spawn(["true"], count=2, tag=False, env={"SLURM_STEP_ID": ""})
    assert q.wait().rc == EXIT_USAGE
    one_error(q.err, "SLURM_STEP_ID")


def test_no_count_anywhere_is_usage_error(group):
    p = group.spawn(["true"], opts=["-j"])
    assert p.wait().rc == EXIT_USAGE
    one_error(p.err, "--join-ct")


# --- groups that must never meet ------------------------------------------------

def test_slurm_jobs_with_equal_step_ids_never_meet(group):
    jobs = {}
    for job in ("1001", "1002"):
        env = {"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_STEP_TASKS_PER_NODE": "2"}
        jobs[job] = group.spawn_many(2, [CMA, "nsinfo"], opts=["-j"], tag=False, env=env)
    outs = {}
    for job, peers in jobs.items():
        for p in peers:
            p.assert_ok()
            assert not p.warnings()
        assert len({p.out for p in peers}) == 1, job
        outs[job] = peers[0].out
    assert outs["1001"] != outs["1002"]


def test_different_tags_never_meet(group):
    a = group.spawn_many(2, [CMA, "nsinfo"], count=2)
    b = group.spawn_many(2, [CMA, "nsinfo"], count=2, tag=group.tag + "x")
    for p in (*a, *b):
        p.assert_ok()
        assert not p.warnings()
    assert a[0].out == a[1].out and b[0].out == b[1].out and a[0].out != b[0].out


def test_users_with_equal_tags_never_meet(group):
    other_user_or_skip()
    mine = group.spawn_many(2, [CMA, "nsinfo"], count=2)
    theirs = group.spawn_many(2, [CMA, "nsinfo"], count=2, user="chrun-test",
                              env={"HOME": "/home/chrun-test"})
    for p in (*mine, *theirs):
        p.assert_ok()
        assert not p.warnings()
    assert mine[0].out == mine[1].out and theirs[0].out == theirs[1].out
    assert mine[0].out != theirs[0].out
