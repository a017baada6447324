"""--join robustness without an attacker (issue #11): closed standard streams, numbers
from the environment, joiners that asked for another container, a holder that can't
be forked, and the per-user key behind the meeting names.  Root and plain user.
"""

import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import run
from joinkit import (CMA, EXIT_FAILURE, EXIT_USAGE, Group, clean_env, nsinfo, one_error,
                     verbose_facts)

pytestmark = pytest.mark.container
CLOSE = {0: "<&-", 1: ">&-", 2: "2>&-"}


@pytest.fixture
def group(ch_run, tiny_image, request):
    with Group(ch_run, tiny_image, timeout=15, name=request.node.name[:16]) as g:
        yield g


def closing(fd):
    """Wrapper: run the peer with descriptor FD closed, as batch wrappers do."""
    return ["sh", "-c", f'exec "$@" {CLOSE[fd]}', "sh"]


# --- closed standard streams ------------------------------------------------------

@pytest.mark.parametrize("fds", [(0,), (1,), (2,), (0, 1, 2)], ids=lambda f: "closed-" + "".join(map(str, f)))
def test_closed_std_streams(group, tmp_path, fds):
    """Peers started with 0, 1 or 2 closed: every command runs, one container, the holder
    leaves (no process spins until the timeout: Group checks every process is gone)."""
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    n = 3
    cmd = ["sh", "-c", f"{CMA} nsinfo > /mnt/0/$$"]
    ps = [group.spawn(cmd, count=n, opts=["-b", f"{out}:/mnt/0"],
                      wrapper=closing(fds[i % len(fds)])) for i in range(n)]
    for p in ps:
        assert p.wait().rc == 0, p.err
        assert "Traceback" not in p.err and not p.warnings(), p.err
    results = {f.read_text() for f in out.iterdir()}
    assert len(list(out.iterdir())) == n
    assert len(results) == 1, f"split: {results}"
    nsinfo(results.pop())


@pytest.mark.parametrize("fd", [1, 2])
def test_closed_stream_plain_container(ch_run, tiny_image, fd):
    """Without --join too: the command runs (no traceback from flushing a closed stream)."""
    p = subprocess.run(["sh", "-c", f'exec "$@" {CLOSE[fd]}', "sh", str(ch_run),
                        str(tiny_image), "--", "true"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p


# --- numbers from the environment ----------------------------------------------------

@pytest.mark.parametrize("env,var", [
    ({"SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_NODEID": "\u00b2"}, "SLURM_NODEID"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_NODEID": "9" * 30}, "SLURM_NODEID"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NODEID": "x1"}, "SLURM_NODEID"),
    ({"SLURM_STEP_TASKS_PER_NODE": "\u00b2"}, "SLURM_STEP_TASKS_PER_NODE"),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "\u0662"}, "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ({"OMPI_COMM_WORLD_LOCAL_SIZE": "9" * 4000}, "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ({"SLURM_CPUS_ON_NODE": "2", "CH_RUN_JOIN_TIMEOUT": "1e3"}, "CH_RUN_JOIN_TIMEOUT"),
    ({"SLURM_CPUS_ON_NODE": "2", "CH_RUN_JOIN_TIMEOUT": "\u0661"}, "CH_RUN_JOIN_TIMEOUT"),
    ({"SLURM_CPUS_ON_NODE": "2", "CH_RUN_JOIN_TIMEOUT": "inf"}, "CH_RUN_JOIN_TIMEOUT"),
    ({"SLURM_CPUS_ON_NODE": "2", "CH_RUN_JOIN_TIMEOUT": "9" * 400}, "CH_RUN_JOIN_TIMEOUT"),
])
def test_bad_numbers_in_variables_are_usage_errors(group, env, var):
    argv = [group.ch_run, "-j", f"--join-tag={group.tag}", group.image, "--", "true"]
    p = group.spawn(None, argv=argv, env=env)
    assert p.wait().rc == EXIT_USAGE, p.err
    one_error(p.err, f"${var}")


@pytest.mark.parametrize("env,var", [
    ({"MPI_LOCALNRANKS": "2", "PMI_FD": "\u00b2"}, "PMI_FD"),
    ({"MPI_LOCALNRANKS": "2", "PMI_FD": "99999999999999999999"}, "PMI_FD"),
    ({"MPI_LOCALNRANKS": "\u00b2"}, "MPI_LOCALNRANKS"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_STEP_ID": "0", "SLURM_NODEID": "\u00b2"},
     "SLURM_NODEID"),
])
def test_bad_launcher_numbers_in_ch_mpirun(ch_run, tiny_image, env, var):
    mpirun = Path(str(ch_run)).with_name("ch-mpirun")
    p = run([mpirun, "--mode=env", tiny_image, "--", "true"], env=clean_env(**env))
    assert p.returncode == EXIT_USAGE, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and re.match(r"^ch-mpirun\[\d+\]: error: .*\$" + var, lines[0]), \
        p.stderr


def test_odd_but_valid_launcher_numbers(ch_run, tiny_image):
    """A huge OMPI_VERSION is no version, not a traceback."""
    mpirun = Path(str(ch_run)).with_name("ch-mpirun")
    env = clean_env(OMPI_COMM_WORLD_LOCAL_SIZE="1", OMPI_VERSION="9" * 5000,
                    PMIX_NAMESPACE="x")
    p = run([mpirun, "--mode=env", tiny_image, "--", "true"], env=env)
    assert p.returncode == 0, p.stderr


# --- joiners that asked for another container ----------------------------------------

@pytest.mark.parametrize("opts,label", [
    (["-w"], "read-write (-w)"),
    (["-u", "1234"], "UID (-u)"),
    (["-g", "1234"], "GID (-g)"),
    (["-t"], "/tmp (-t)"),
    (["--no-home"], "home (--no-home)"),
    (["-b", "/etc:/mnt/0"], "binds (-b)"),
    (["--no-passwd"], "/etc/passwd (--no-passwd)"),
    ("image", "image"),
])
def test_joiner_with_other_options_fails(group, writable_image, opts, label):
    creator = group.spawn([CMA, "serve", "120"], count=3, opts=["-v"])
    pid, _ = creator.readline().split()
    if opts == "image":
        argv = group.argv(["true"], count=3)
        argv[argv.index(group.image)] = writable_image
        joiner = group.spawn(None, argv=argv)
    else:
        joiner = group.spawn(["true"], count=3, opts=opts)
    assert joiner.wait().rc == EXIT_FAILURE, joiner.err
    e = one_error(joiner.err, "asked for another container", f"created by PID {pid}", label)
    assert " here, " in e and " in the group" in e
    good = group.spawn([CMA, "nsinfo"], count=3)     # the group is unharmed
    good.assert_ok()
    creator.kill()
    creator.wait()


def test_joiner_per_peer_things_may_differ(group, tmp_path):
    creator = group.spawn([CMA, "serve", "120"], count=2, opts=["-v", "-c", "/tmp"])
    pid, addr = creator.readline().split()
    joiner = group.spawn(["sh", "-c", f'cd; test "$X" = y && {CMA} read {pid} {addr}'],
                         count=2, opts=["-c", "/"], env={"X": "y"})
    joiner.assert_ok()
    assert joiner.out == "ok\n"
    creator.kill()
    creator.wait()


# --- the holder can't be forked ----------------------------------------------------------

def test_holder_fork_failure_is_one_line(group, ch_run):
    """`ulimit -u` at the holder's fork (root ignores the limit: run as chrun-test)."""
    user = None
    env = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("chrun-test")
        except KeyError:
            pytest.skip("user chrun-test missing (ci/make-test-user.sh)")
        user, env = "chrun-test", {"HOME": pw.pw_dir}
    p = group.spawn(["true"], count=2, env=env, user=user,
                    wrapper=["bash", "-c", 'ulimit -u 1 && exec "$@"', "bash"])
    assert p.wait().rc == EXIT_FAILURE, p.err
    one_error(p.err, "can't start the group's holder process: fork:", "ulimit -u")


# --- the key -----------------------------------------------------------------------------

def test_key_created_private_and_used(group, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    ps = group.spawn_many(2, [CMA, "nsinfo"], count=2, env={"HOME": str(home)})
    for p in ps:
        p.assert_ok()
        assert not p.warnings()
    assert ps[0].out == ps[1].out
    key = home / ".cache/chrun/join-key"
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    assert sorted(os.listdir(key.parent)) == ["join-key"]    # no temporary file left


@pytest.mark.parametrize("why", ["readable", "no-home"])
def test_no_usable_key_falls_back_with_one_warning(group, tmp_path, why):
    if why == "readable":
        home = tmp_path / "home"
        (home / ".cache/chrun").mkdir(parents=True, mode=0o700)
        key = home / ".cache/chrun/join-key"
        key.write_text("0" * 64 + "\n")
        key.chmod(0o644)
        env, opts, words = {"HOME": str(home)}, [], "readable by others"
    else:
        env, opts, words = {"HOME": "/proc/chrun-no-such-home"}, ["--no-home"], \
            "/proc/chrun-no-such-home"
    ps = group.spawn_many(3, [CMA, "nsinfo"], count=3, opts=["-v", *opts], env=env)
    for p in ps:
        p.assert_ok(verbose=True)
    assert len({p.out for p in ps}) == 1
    warns = [w for p in ps for w in p.warnings()]
    assert len(warns) == 1, warns
    assert "no private key" in warns[0] and words in warns[0]
    creator, = [p for p in ps if verbose_facts(p.err)[0] == "created"]
    assert warns[0] in creator.err


# --- the comparison itself (pure) ---------------------------------------------------------

def _facts(**opts):
    from chrun import join
    from chrun.plan import Options, User, make_plan
    o = Options("/img", ("true",))._replace(**opts)
    user = User(uid=1000, gid=1000, name="u", home="/home/u")
    return join.container_facts(make_plan(o, {"HOME": "/home/u"}, user, "/"), "/real/img")


def test_facts_and_first_difference():
    from chrun.join import first_difference
    base = _facts()
    assert first_difference(base, base) is None
    assert first_difference(base, _facts(cd="/tmp", command=("ls",))) is None
    assert first_difference(_facts(write=True), base) == \
        "read-write (-w): yes here, no in the group"
    assert first_difference(_facts(binds=("/a:/mnt/1",)), base).startswith(
        "binds (-b): /a:/mnt/1 here, none in the group")
    # the first difference, in a fixed order: the image before the UID
    other = {**_facts(uid=5), "image": "/other"}
    assert first_difference(other, base).startswith("image: /other here, /real/img")
    # facts another module adds are compared too
    assert first_difference({**base, "squash": "x"}, base) == "squash: x here, none in the group"
