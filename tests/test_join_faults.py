"""--join under faults (issue #7): kills at each stage, wrong counts, many peers, odd options.

Slow stages are made with strace's syscall delay injection on one peer (a
real process, really stopped inside that system call), never with a hook in
ch-run.  Whatever happens, every peer must run or fail with one clear line
within the join-timeout bound, and nothing may be left (joinkit.Group).
"""

import os
import time

import pytest

from joinkit import (CMA, EXIT_FAILURE, EXIT_USAGE, SHORT, Group, check_lines, delayed,
                     group_sockets, clean_env, marked_processes, nsinfo, one_error,
                     verbose_facts, wait_for)

pytestmark = pytest.mark.container
HOLD = 60   # seconds a strace-delayed system call blocks (the peer is killed long before)


@pytest.fixture
def group(ch_run, tiny_image, request):
    with Group(ch_run, tiny_image, name=request.node.name[:20]) as g:
        yield g


@pytest.fixture
def slow_group(ch_run, tiny_image, request):
    """Join timeout long enough for a delayed peer to be seen mid-stage, then killed."""
    with Group(ch_run, tiny_image, timeout=10, name=request.node.name[:20]) as g:
        yield g


def pid_of(peer):
    """PID of ch-run itself under a strace wrapper, from its first -v line."""
    line = peer.proc.stderr.readline()
    assert line.startswith("ch-run["), line
    return int(line[len("ch-run["):line.index("]")])


def kill_traced(peer, pid):
    """SIGKILL ch-run under a strace wrapper, then the wrapper: strace sits out the rest
    of the injected delay with its tracee stopped at exit (PTRACE_EVENT_EXIT, before the
    tracee's descriptors are closed) until strace itself is gone."""
    os.kill(pid, 9)
    peer.kill()
    peer.wait()


def socket_bound(group):
    names = group_sockets(os.geteuid(), group.tag, clean_env())
    return lambda: any(n in open("/proc/net/unix").read() for n in names)


def in_new_userns(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return False


def later_group_works(group, n=2):
    """A fresh group with the same tag forms one container, without warnings."""
    peers = group.spawn_many(n, [CMA, "nsinfo"], count=n, opts=["-v"])
    for p in peers:
        p.assert_ok(verbose=True)
        assert not p.warnings(), p.err
    assert len({p.out for p in peers}) == 1
    assert sorted(verbose_facts(p.err)[0] for p in peers) == ["created"] + ["joined"] * (n - 1)


def ran_or_failed_clearly(p):
    """The contract's promise for a peer whose group broke."""
    p.wait()
    if p.rc == 0:
        check_lines(p.err, verbose=True)
    else:
        assert p.rc == EXIT_FAILURE, (p.rc, p.err)
        one_error(p.err, "join")


# --- the creator dies ---------------------------------------------------------

@pytest.mark.parametrize("stage,syscall", [
    ("before its holder exists", "clone"),
    ("before namespaces", "unshare"),
    ("during set-up", "pivot_root"),
])
def test_creator_killed(slow_group, stage, syscall):
    g = slow_group
    creator = g.spawn(["true"], count=3, opts=["-v"], wrapper=delayed(syscall, HOLD))
    cpid = pid_of(creator)
    wait_for(socket_bound(g), g.bound, "the group socket")
    if syscall == "pivot_root":
        wait_for(lambda: in_new_userns(cpid), g.bound, "the creator's namespaces")
    elif syscall == "unshare":
        wait_for(lambda: len(marked_processes(g.mark)) >= 3, g.bound, "the holder")
    joiners = g.spawn_many(2, [CMA, "nsinfo"], count=3)
    time.sleep(1)   # let them queue on the group socket (either way the checks hold)
    kill_traced(creator, cpid)
    for j in joiners:
        ran_or_failed_clearly(j)
    if syscall != "clone":    # the holder existed: it tells every queued joiner
        for j in joiners:
            if j.rc:
                one_error(j.err, "creator failed or died before sharing its container")
    later_group_works(g)


def test_creator_slower_than_timeout(group):
    """Set-up takes longer than the join timeout: everyone fails with a clear line."""
    creator = group.spawn(["true"], count=2, wrapper=delayed("pivot_root", SHORT + 2))
    wait_for(socket_bound(group), group.bound, "the group socket")
    joiner = group.spawn(["true"], count=2)
    assert creator.wait().rc == EXIT_FAILURE
    one_error(creator.err, "gave up before the container was ready")
    assert joiner.wait().rc == EXIT_FAILURE
    one_error(joiner.err, f"within {SHORT:g} s")


def test_creator_killed_after_setup_before_peers_joined(slow_group):
    """The creator dies after handing over: a peer started later still gets its container."""
    g = slow_group
    creator = g.spawn([CMA, "serve", "120"], count=3, opts=["-v"])
    pid, _addr = creator.readline().split()
    creator.kill()
    creator.proc.wait()
    late = g.spawn([CMA, "nsinfo"], count=3, opts=["-v"])
    late.assert_ok(verbose=True)
    assert verbose_facts(late.err)[:2] == ("joined", int(pid))
    creator.wait()   # stderr ends when the holder gives up on peer 3
    w, = creator.warnings()
    assert "did not fill: 2 of 3 peers" in w
    later_group_works(g)


# --- a joiner dies --------------------------------------------------------------

@pytest.mark.parametrize("syscall", ["recvmsg", "setns"])
def test_joiner_killed_mid_join(slow_group, syscall):
    """A joiner is killed inside the join (waiting for the descriptors, or holding them
    before setns): the group still forms with the peers that remain."""
    g = slow_group
    creator = g.spawn([CMA, "serve", "120"], count=3, opts=["-v"])
    cpid, _ = creator.readline().split()
    victim = g.spawn(["true"], count=3, opts=["-v"], wrapper=delayed(syscall, HOLD))
    vpid = pid_of(victim)
    # Traced for SYSCALL only: a tracing stop means it is inside that call.
    wait_for(lambda: _state(vpid) == "t", g.bound, f"the victim in {syscall}")
    kill_traced(victim, vpid)
    last = g.spawn([CMA, "nsinfo"], count=3, opts=["-v"])
    last.assert_ok(verbose=True)
    assert verbose_facts(last.err)[:2] == ("joined", int(cpid))
    creator.kill()
    creator.wait()
    check_lines(creator.err, verbose=True)


def _state(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def test_joiner_killed_while_waiting_for_creator(slow_group):
    """A queued joiner dies while the creator is still setting up: the next one takes its place."""
    g = slow_group
    creator = g.spawn([CMA, "serve", "120"], count=2, opts=["-v"], wrapper=delayed("pivot_root", 2))
    cpid = pid_of(creator)
    wait_for(lambda: in_new_userns(cpid), g.bound, "the creator's namespaces")
    victim = g.spawn(["true"], count=2)
    time.sleep(0.5)
    victim.kill()
    victim.wait()
    last = g.spawn([CMA, "nsinfo"], count=2, opts=["-v"])
    last.assert_ok(verbose=True)
    assert verbose_facts(last.err)[:2] == ("joined", cpid)
    creator.readline()
    os.kill(cpid, 9)    # the command itself, not its strace wrapper
    creator.wait()
    assert not creator.warnings()


def test_whole_group_killed(group):
    """All peers SIGKILLed before the group filled: the holder goes within the bound,
    and a later group with the same tag is not blocked."""
    peers = [group.spawn([CMA, "serve", "120"], count=4) for _ in range(3)]
    for p in peers:
        p.readline()
    for p in peers:
        p.kill()
    for p in peers:
        p.wait()
        assert p.rc == -9
    warns = [w for p in peers for w in p.warnings()]
    assert len(warns) == 1 and "did not fill: 3 of 4 peers" in warns[0]
    group.wait_gone(lambda: marked_processes(group.mark), "holder")
    later_group_works(group)


# --- wrong counts ---------------------------------------------------------------

def test_count_too_high_late_peer_within_timeout(slow_group):
    g = slow_group
    a = g.spawn([CMA, "serve", "120"], count=2, opts=["-v"])
    pid, addr = a.readline().split()
    time.sleep(2)   # a real window: the peer comes long after the creator
    b = g.spawn([CMA, "read", pid, addr], count=2, opts=["-v"])
    b.assert_ok(verbose=True)
    assert b.out == "ok\n"
    a.kill()
    a.wait()
    assert not a.warnings()


def test_peer_after_timeout_runs_alone_with_warning(group):
    a = group.spawn(["true"], count=2)
    a.wait()   # returns when the holder gave up
    w, = a.warnings()
    assert "did not fill: 1 of 2" in w
    b = group.spawn(["true"], count=2, opts=["-v"])
    b.wait()
    assert b.rc == 0
    assert verbose_facts(b.err)[0] == "created"
    w, = b.warnings()
    assert "did not fill: 1 of 2" in w


def test_count_too_low(group):
    """Three peers, count 2: two share a container; the extra one either fails with
    one clear line (it queued while the group filled) or runs in a container of its
    own and is warned about (it came later) - never silently."""
    peers = [group.spawn([CMA, "serve", "120"], count=2, opts=["-v"]) for _ in range(3)]
    # "PID ADDR" from a peer that runs; EOF from one turned away
    running = [p for p in peers if p.proc.stdout.readline()]
    ns = {p.pid: nsinfo(group.spawn(None, argv=[group.ch_run, f"--join-pid={p.pid}",
                                                group.image, CMA, "nsinfo"]).wait().out)
          for p in running}
    for p in running:
        p.kill()
    for p in peers:
        p.wait()
    shared = [pid for pid, n in ns.items() if list(ns.values()).count(n) == 2]
    assert len(shared) == 2, ns
    extra, = [p for p in peers if p.pid not in shared]
    warns = [w for p in peers for w in p.warnings()]
    if extra.rc == EXIT_FAILURE:   # turned away; or queued just as the holder left
        e = one_error(extra.err, verbose=True)
        assert "group already full (2 peers)" in e or "group already full)" in e, e
        assert not warns
    else:
        assert extra.rc == -9 and len(warns) == 1 and warns[0] in extra.err
        assert "did not fill: 1 of 2" in warns[0] and "earlier group with this tag was full" \
            in warns[0]


def test_count_too_low_sequential(group):
    """Count 2, peers one after another: the third runs alone and is warned about."""
    peers = []
    for _ in range(3):
        peers.append(group.spawn(["true"], count=2, opts=["-v"]))
        assert peers[-1].proc.wait(timeout=group.bound) == 0   # the process, not its holder
    assert [verbose_facts(p.wait().err)[0] for p in peers] == ["created", "joined", "created"]
    assert [len(p.warnings()) for p in peers] == [0, 0, 1]
    assert "did not fill: 1 of 2" in peers[2].warnings()[0]


# --- many peers ---------------------------------------------------------------

def test_64_peers_at_once(ch_run, tiny_image):
    with Group(ch_run, tiny_image, timeout=60, name="64") as g:
        t0 = time.monotonic()
        peers = g.spawn_many(64, [CMA, "nsinfo"], count=64)
        for p in peers:
            p.assert_ok()
            assert not p.warnings(), p.err
        took = time.monotonic() - t0
        assert len({p.out for p in peers}) == 1
        print(f"64 peers joined and ran in {took:.1f} s")   # shown with -s (no assertion)


# --- options ------------------------------------------------------------------

@pytest.mark.parametrize("value", [str(2**31), str(2**63), str(2**64 + 2), "1" + "0" * 40])
def test_overflowing_count(group, value):
    p = group.spawn(["true"], count=value)
    assert p.wait().rc == EXIT_USAGE
    one_error(p.err, "--join-ct")


@pytest.mark.parametrize("tag", ["a\nb", "\n", "x\ry", "t" * 4097])
def test_bad_tags(group, tag):
    p = group.spawn(["true"], count=2, tag=tag)
    assert p.wait().rc == EXIT_USAGE
    one_error(p.err, "tag")


@pytest.mark.parametrize("kind", ["long", "odd"])
def test_odd_but_valid_tags(ch_run, tiny_image, kind):
    tag = ("t" * 4000 if kind == "long" else "-- a/b ünï $x") + os.urandom(4).hex()
    with Group(ch_run, tiny_image, tag=tag) as g:
        peers = g.spawn_many(2, [CMA, "nsinfo"], count=2)
        for p in peers:
            p.assert_ok()
            assert not p.warnings()
        assert peers[0].out == peers[1].out


def test_peer_whose_command_fails_after_joining(group):
    """`IMG -- -- true` runs the command "--" (cannot execute: 49); its peer is unharmed."""
    bad = group.spawn(["--", "true"], count=2)
    good = group.spawn([CMA, "nsinfo"], count=2)
    assert bad.wait().rc == 49
    one_error(bad.err, "--")
    good.assert_ok()
    assert not good.warnings()


def test_join_options_after_newroot_are_the_command(group):
    p = group.spawn(None, argv=[group.ch_run, group.image, "--join-ct=2",
                                f"--join-tag={group.tag}", "true"])
    assert p.wait().rc == 49
    one_error(p.err, "--join-ct=2")


def test_double_dash_before_newroot(group):
    p = group.spawn(None, argv=[group.ch_run, "--join-ct=1", f"--join-tag={group.tag}", "--",
                                group.image, "--", CMA, "nsinfo"])
    p.assert_ok()
    nsinfo(p.out)
