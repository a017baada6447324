"""--join against a hostile second local user (issue #11).

The attacker is the real user ``chrun-evil`` (ci/make-test-user.sh) with real
sockets (tests/squatter.py): bind without listening, listen and never accept,
a full backlog, squat then release the moment the group moves on, squat every
name, squat every name computable without the victim's key.  Root starts it
with runuser, so these tests need root; the victim group runs as root and as
the plain user chrun-test (via runuser): the unprivileged path is covered in
the root run.  Whatever the attacker does, the group must form one container
(or fail with one clear line when every name is taken), within the join
timeout bound, and the peers warn naming the attacker's UID.
"""

import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest

from joinkit import (CMA, EXIT_FAILURE, Group, clean_env, group_names, nsinfo, one_error,
                     verbose_facts, wait_for)

pytestmark = pytest.mark.container
EVIL = "chrun-evil"
VICTIM = "chrun-test"
SQUATTER = Path(__file__).with_name("squatter.py")
N = 4


def user_or_skip(name):
    if os.geteuid() != 0:
        pytest.skip(f"needs root (runs the attacker as {EVIL} with runuser)")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.skip(f"user {name} missing (ci/make-test-user.sh)")


@pytest.fixture(params=["root", VICTIM])
def victim(request, ch_run):
    """(uid, extra env, runuser user or None) of the group's owner; makes sure its key exists."""
    evil = user_or_skip(EVIL)
    if request.param == "root":
        return 0, {}, None, evil.pw_uid
    pw = user_or_skip(VICTIM)
    env = {"HOME": pw.pw_dir, "USER": VICTIM}
    py = Path(str(ch_run)).with_name("python")
    subprocess.run(["runuser", "-u", VICTIM, "--", "env", f"HOME={pw.pw_dir}", str(py), "-c",
                    "import os; from chrun import joinkey; "
                    "assert joinkey.load(os.environ)[1] is None"], check=True, cwd="/")
    return pw.pw_uid, env, VICTIM, evil.pw_uid


@pytest.fixture
def group(ch_run, tiny_image, request):
    with Group(ch_run, tiny_image, name=request.node.name[:16]) as g:
        yield g


def attack(group, mode, names, seconds=60):
    """Start the squatter as chrun-evil on NAMES; returns it once its sockets are in place."""
    p = group.spawn(None, user=EVIL, argv=["/usr/bin/python3", "-S", str(SQUATTER), mode,
                                           str(seconds), *[n.hex() for n in names]])
    assert p.readline().strip() == "ready", p.proc.stderr.read() if p.proc.poll() else ""
    return p


def stop(p):
    """SIGTERM (runuser passes it on to the squatter; SIGKILL would leave it running)."""
    p.kill(signal.SIGTERM)
    p.wait()


def peers(group, victim, n=N, cmd=(CMA, "nsinfo"), **kw):
    _uid, env, user, _evil = victim
    return group.spawn_many(n, list(cmd), count=n, opts=["-v"], env=env, user=user, **kw)


def names_of(group, victim):
    uid, env, _user, _evil = victim
    return group_names(uid, group.tag, clean_env(**env))


def one_container(ps):
    for p in ps:
        p.assert_ok(verbose=True)
    outs = {p.out for p in ps}
    assert len(outs) == 1, f"group split: {outs}\n" + "\n".join(p.err for p in ps)
    facts = [verbose_facts(p.err) for p in ps]
    assert sorted(f[0] for f in facts) == ["created"] + ["joined"] * (len(ps) - 1)
    return nsinfo(outs.pop())


def warned_about(ps, evil_uid):
    """At most one warning per peer, each naming the squatter; the creator's at least
    (a joiner that found the group at once need not have noticed a name bound silently)."""
    for p in ps:
        ws = p.warnings()
        assert len(ws) <= 1, ws
        for w in ws:
            assert f"UID {evil_uid}" in w and "met on another name" in w, w
        if verbose_facts(p.err)[0] == "created":
            assert ws, p.err


@pytest.mark.parametrize("mode", ["bind", "listen", "full"])
@pytest.mark.parametrize("how_many", [1, 3])
def test_squatted_first_names(group, victim, mode, how_many):
    """The first names are bound / listening / backlog-full as another user: the group
    forms on another name, each peer warns once naming the squatter's UID."""
    names = names_of(group, victim)
    evil = attack(group, mode, names[:how_many])
    ps = peers(group, victim)
    one_container(ps)
    warned_about(ps, victim[3])
    stop(evil)


@pytest.fixture
def long_group(ch_run, tiny_image, request):
    """A join timeout no loaded 2-core box reaches while peers are still arriving."""
    with Group(ch_run, tiny_image, timeout=20, name=request.node.name[:16]) as g:
        yield g


@pytest.mark.parametrize("mode", ["release", "toggle"])
def test_squat_then_release_never_splits(long_group, victim, mode):
    """The squatter lets the first name go the moment the group appears on another one
    (and, toggling, keeps grabbing and releasing it): peers started before, during and
    after that all end in one container."""
    group = long_group
    names = names_of(group, victim)
    evil = attack(group, mode, names)
    _uid, env, user, _e = victim
    early = group.spawn([CMA, "serve", "120"], count=2 * N, opts=["-v"], env=env, user=user)
    pid, addr = early.readline().split()
    assert evil.readline().strip() == "released"
    later = [group.spawn([CMA, "read", pid, addr], count=2 * N, opts=["-v"], env=env, user=user)
             for _ in range(2 * N - 1)]
    for p in later:
        p.assert_ok(verbose=True)
        assert p.out == "ok\n", f"not in the creator's container: {p.out}{p.err}"
        assert verbose_facts(p.err)[:2] == ("joined", int(pid)), p.err
    os.kill(int(pid), signal.SIGKILL)   # the command itself (under runuser for chrun-test)
    early.wait()
    assert verbose_facts(early.err)[0] == "created" and "did not fill" not in early.err
    stop(evil)


@pytest.mark.parametrize("mode", ["release", "toggle"])
def test_squat_released_while_peers_race(long_group, victim, mode):
    """All peers start at once; the squatter lets the first name go the moment any other
    name of the group is bound (a candidate's, maybe not yet committed), so peers scan
    while names change under them: still one container."""
    group = long_group
    names = names_of(group, victim)
    evil = attack(group, mode, names)
    ps = peers(group, victim, n=2 * N, cmd=("sh", "-c", f"{CMA} nsinfo; sleep 1"))
    one_container(ps)
    assert evil.readline().strip() == "released"
    stop(evil)


def test_every_name_squatted_is_one_clear_error(group, victim):
    names = names_of(group, victim)
    evil = attack(group, "listen", names)
    ps = peers(group, victim, n=2, cmd=("true",))
    for p in ps:
        assert p.wait().rc == EXIT_FAILURE, p.err
        one_error(p.err, f"all {len(names)} meeting names are held by other users",
                  f"UID {victim[3]}", verbose=True)
    stop(evil)


def test_every_bound_name_squatted_fails_within_the_bound(group, victim):
    """Bound without listening and full backlogs on every name: still one clear line,
    within the join timeout bound (no connect() waits without a bound)."""
    names = names_of(group, victim)
    evil = [attack(group, "full", names[:8]), attack(group, "bind", names[8:])]
    ps = peers(group, victim, n=2, cmd=("true",))
    for p in ps:
        assert p.wait().rc == EXIT_FAILURE, p.err
        one_error(p.err, "meeting names are held by other users", verbose=True)
    for e in evil:
        stop(e)


def test_predictable_names_squatted_change_nothing(group, victim):
    """Every name computable without the victim's key (the same tag, no secret) is taken:
    the group forms as if nothing happened, without a warning."""
    uid, env, _user, _evil = victim
    public = group_names(uid, group.tag, clean_env(**env), secret=b"")
    evil = attack(group, "listen", public)
    ps = peers(group, victim)
    one_container(ps)
    assert not [w for p in ps for w in p.warnings()]
    stop(evil)


HIJACK = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
s.connect(bytes.fromhex(sys.argv[1]))
print(f"data={len(s.recv(4096))}")
"""


def test_other_user_cannot_join_or_hijack(long_group, victim):
    """The attacker connects to the group's live holder (the name is in /proc/net/unix):
    it gets nothing at all; the group still fills."""
    group = long_group
    uid, env, user, _evil = victim
    names = names_of(group, victim)
    a = group.spawn([CMA, "nsinfo"], count=2, env=env, user=user)
    wait_for(lambda: "@" + names[0][1:].decode() in open("/proc/net/unix").read(),
             group.bound, "the group socket")
    thief = group.spawn(None, user=EVIL, argv=["/usr/bin/python3", "-S", "-c", HIJACK,
                                               names[0].hex()])
    assert thief.wait().out.strip() == "data=0", (thief.out, thief.err)
    b = group.spawn([CMA, "nsinfo"], count=2, env=env, user=user)
    a.assert_ok(), b.assert_ok()
    assert a.out == b.out
    assert not a.warnings() and not b.warnings()
