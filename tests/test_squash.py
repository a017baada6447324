"""SquashFS images (issue 14, part 2): ``ch-run IMG.sqfs``, ``-m``, joined groups, MPI.

Real squashfuse on real FUSE mounts in real namespaces, as root and as a plain user.
The archives are ``$CHRUN_IMAGES/{tiny,mpi}.sqfs`` (ci/build-squash-images.sh).  Each
test runs the archive through its own symlink in ``tmp_path``: ch-run hands squashfuse
the path as given, so the test finds exactly its own server(s) by that path, even
while other jobs use the same archive.  "Nothing left" means: no live process whose
command line names the test's path (squashfuse, the server waiting to become it,
ch-run itself), and no mount of it in the host's mount table; processes end on their
own, so they are polled for with a bound (no timing is asserted).
"""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import IMAGES, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chrun import squash  # noqa: E402

pytestmark = pytest.mark.container

ERROR = re.compile(r"ch-run\[\d+\]: error: .+")
GONE_WITHIN = 20  # seconds for the server to notice its container is gone


# --- fixtures and helpers --------------------------------------------------------------------

def archive(name):
    path = IMAGES / f"{name}.sqfs"
    if not path.is_file():
        pytest.fail(f"SquashFS image {path} missing: build it as root with "
                    "bash ci/build-images.sh (runs ci/build-squash-images.sh)")
    return path


@pytest.fixture
def sqfs(tmp_path):
    """A path of its own for tiny.sqfs (a symlink in tmp_path)."""
    link = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}.sqfs"
    link.symlink_to(archive("tiny"))
    return link


def ours(marker):
    """Live processes (ours, or anyone's as root) whose command line contains ``marker``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()  # empty for a zombie: it has ended
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if os.fsencode(marker) in cmd:
            found.append((int(p.name), comm, cmd.replace(b"\0", b" ").decode(errors="replace")))
    return found


def servers(marker):
    return [p for p in ours(marker) if p[1] in squash.PROGRAMS]


def host_mounts(marker):
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(marker) in line]


def assert_nothing_left(marker, wait=GONE_WITHIN):
    deadline = time.monotonic() + wait
    while (left := ours(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"
    assert not host_mounts(marker), host_mounts(marker)


def wait_for(what, timeout=30):
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def ancestors(pid):
    out = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        out.append(pid)
    return out


def one_error(r, *words):
    assert r.returncode == 31, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and ERROR.fullmatch(lines[0]), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def fuse_root(mountinfo, marker):
    """The container's root mount line, which must be our archive on FUSE, read-only."""
    lines = [l for l in mountinfo.splitlines() if " - " in l and len(l.split()) > 6]
    root = [l for l in lines if l.split()[4] == "/"]
    assert len(root) == 1, mountinfo
    fields = root[0].split()
    sep = fields.index("-")
    assert fields[sep + 1] == "fuse.squashfuse" and fields[sep + 2] == str(marker), root
    assert "ro" in fields[5].split(","), root
    return root[0]


# --- unit tests --------------------------------------------------------------------------------

def test_check_recognises_archives(tmp_path):
    assert squash.is_archive(str(archive("tiny")))
    other = tmp_path / "f"
    other.write_bytes(b"hsq")
    assert not squash.is_archive(str(other))
    assert not squash.is_archive(str(tmp_path / "missing"))
    a = squash.check(str(archive("tiny")))
    assert a.path == str(archive("tiny")) and a.mount_dir is None


def test_find_program_order(tmp_path):
    """First PATH directory with either program wins; in one directory squashfuse_ll does."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, names in ((a, ["squashfuse"]), (b, ["squashfuse", "squashfuse_ll"])):
        d.mkdir()
        for n in names:
            (d / n).write_text("#!/bin/sh\n")
            (d / n).chmod(0o755)
    assert squash.find_program(path=f"{a}:{b}") == str(a / "squashfuse")
    assert squash.find_program(path=f"{b}:{a}") == str(b / "squashfuse_ll")
    assert squash.find_program(path=str(tmp_path)) is None


def test_available_needs_squashfuse(monkeypatch):
    assert squash.available(), "squashfuse or a usable /dev/fuse missing: bash ci/install-deps.sh"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not squash.available()


def test_fuse_problem_names_the_device(tmp_path):
    assert "No such file or directory" in squash.fuse_problem(str(tmp_path / "fuse"))
    if os.geteuid() != 0:  # root may open any file: the mode only binds a plain user
        dev = tmp_path / "dev"
        dev.write_text("")
        dev.chmod(0)
        assert "chmod 0666" in squash.fuse_problem(str(dev))
    assert squash.fuse_problem() is None, "/dev/fuse not usable: bash ci/install-deps.sh"


# --- running ------------------------------------------------------------------------------------

def test_runs_read_only_from_fuse(ch_run, sqfs):
    r = run([ch_run, sqfs, "--", "sh", "-c",
             "cat /proc/self/mountinfo; touch /x 2>&1; echo CH_RUNNING=$CH_RUNNING; id -u"])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    fuse_root(r.stdout, sqfs)
    assert "Read-only file system" in r.stdout
    assert f"CH_RUNNING=Weird Al Yankovic\n{os.getuid()}\n" in r.stdout
    # the archive's files, with the usual binds on top
    r = run([ch_run, sqfs, "--", "sh", "-c", "ls /usr/local/bin; grep -c . /etc/passwd"])
    assert "cma-probe" in r.stdout, r.stdout
    assert_nothing_left(sqfs)


def test_verbose_names_the_server(ch_run, sqfs):
    r = run([ch_run, "-v", sqfs, "--", "true"])
    assert r.returncode == 0, r.stderr
    assert re.search(rf"SquashFS image {re.escape(str(sqfs))} mounted read-only; "
                     r"squashfuse(_ll)? PID \d+", r.stderr), r.stderr
    assert_nothing_left(sqfs)


def test_write_refused(ch_run, sqfs):
    r = run([ch_run, "-w", sqfs, "--", "true"])
    assert r.returncode == 64, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "read-only" in r.stderr, r.stderr
    assert_nothing_left(sqfs, wait=0)


def test_mount_dir(ch_run, sqfs, tmp_path):
    """-m DIR: the archive is mounted at DIR in the container's namespace only."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run([ch_run, "-v", "-m", mnt, sqfs, "--", "sh", "-c", "cat /proc/self/mountinfo"])
    assert r.returncode == 0, r.stderr
    fuse_root(r.stdout, sqfs)
    assert f"mounted read-only at {mnt}" in r.stderr, r.stderr
    assert not os.path.ismount(mnt) and list(mnt.iterdir()) == []
    assert_nothing_left(sqfs)


def test_mount_dir_errors(ch_run, sqfs, tmp_path, tiny_image):
    one_error(run([ch_run, "-m", tmp_path / "nope", sqfs, "--", "true"]),
              f"--mount: {tmp_path / 'nope'}: No such file or directory")
    (tmp_path / "file").write_text("")
    one_error(run([ch_run, "--mount", tmp_path / "file", sqfs, "--", "true"]),
              "Not a directory")
    # with a directory image: ignored, with a warning (as Charliecloud)
    r = run([ch_run, "-m", tmp_path, tiny_image, "--", "true"])
    assert r.returncode == 0 and "warning: --mount ignored" in r.stderr, r.stderr
    assert_nothing_left(sqfs, wait=0)


def test_exec_and_server_outside_the_tree_and_sigkill(ch_run, sqfs):
    """ch-run becomes CMD; squashfuse is nobody's child there; SIGKILL of CMD ends it."""
    p = subprocess.Popen([ch_run, sqfs, "--", "sh", "-c", "echo $$; exec sleep 300"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == str(p.pid)  # exec, no process in between
        (server,) = wait_for(lambda: servers(sqfs))
        spid = server[0]
        assert p.pid not in ancestors(spid), "squashfuse is in the command's process tree"
        assert os.getsid(spid) == spid, "squashfuse shares a session with the job"
        assert os.stat(f"/proc/{spid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino, \
            "squashfuse must not live in (and so pin) the container's mount namespace"
        for fd in (0, 1):
            assert os.readlink(f"/proc/{spid}/fd/{fd}") == "/dev/null"
        assert len(servers(sqfs)) == 1
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert_nothing_left(sqfs)


def test_join_pid_sees_the_mount(ch_run, sqfs):
    p = subprocess.Popen([ch_run, sqfs, "--", "sh", "-c", "echo in; exec sleep 300"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "in\n"
        r = run([ch_run, f"--join-pid={p.pid}", sqfs, "--", "sh", "-c",
                 "ls /bin/busybox; grep -c fuse.squashfuse /proc/self/mountinfo"])
        assert r.returncode == 0 and r.stdout == "/bin/busybox\n1\n", r.stderr
        assert len(servers(sqfs)) == 1
    finally:
        p.kill()
        p.communicate()
    assert_nothing_left(sqfs)


def test_command_not_found_leaves_nothing(ch_run, sqfs):
    r = run([ch_run, sqfs, "--", "no-such-command"])
    assert r.returncode == 49 and len(r.stderr.splitlines()) == 1, r.stderr
    assert_nothing_left(sqfs)


# --- bad archives and missing tools: one line, exit 31, nothing left at once ---------------------

def bad(tmp_path, kind):
    f = tmp_path / f"{kind}-{uuid.uuid4().hex[:8]}.sqfs"
    good = archive("tiny").read_bytes()
    if kind == "corrupt":
        f.write_bytes(b"hsqs" + bytes(range(256)) * 64)
    elif kind == "truncated":
        f.write_bytes(good[:65536])
    elif kind == "not-squashfs":
        f.write_bytes(b"\x7fELF" + good[4:4096])
    elif kind == "empty":
        f.write_bytes(b"")
    return f


@pytest.mark.parametrize("kind, words", [
    ("corrupt", ["can't mount SquashFS image", "squashfuse", "Squashfs version"]),
    ("truncated", ["can't mount SquashFS image", "squashfuse"]),
    ("not-squashfs", ["neither a directory nor a SquashFS archive"]),
    ("empty", ["neither a directory nor a SquashFS archive"]),
])
def test_bad_archive(ch_run, tmp_path, kind, words):
    f = bad(tmp_path, kind)
    one_error(run([ch_run, f, "--", "true"]), str(f), *words)
    assert_nothing_left(f, wait=0)


def test_missing_archive(ch_run, tmp_path):
    f = tmp_path / "missing.sqfs"
    one_error(run([ch_run, f, "--", "true"]), f"can't find image: {f}: No such file")


def test_unreadable_archive(ch_run, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    f = tmp_path / "secret.sqfs"
    f.write_bytes(archive("tiny").read_bytes())
    f.chmod(0)
    one_error(run([ch_run, f, "--", "true"]), f"can't use image: {f}: Permission denied")
    assert_nothing_left(f, wait=0)


def test_no_squashfuse(ch_run, sqfs, tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # a PATH without squashfuse
    one_error(run([ch_run, sqfs, "--", "/bin/true"], env=env),
              "squashfuse not found in PATH")
    assert_nothing_left(sqfs, wait=0)


def test_fuse_device_not_usable(ch_run, sqfs):
    """/dev/fuse we may not open (as on VMs without udev, mode 0600): one line saying so.

    Shown in a mount namespace of the test's own where a root-only file covers /dev/fuse
    (the machine's /dev/fuse stays as it is).
    """
    if os.geteuid() == 0:
        pytest.skip("root may open /dev/fuse whatever its mode")
    if not os.path.exists("/etc/shadow") or os.access("/etc/shadow", os.R_OK):
        pytest.skip("needs a file this user may not read (/etc/shadow)")
    r = run(["unshare", "-rm", "sh", "-c",
             'mount --bind /etc/shadow /dev/fuse && exec "$@"', "sh",
             ch_run, sqfs, "--", "true"])
    one_error(r, "FUSE not usable: /dev/fuse: Permission denied", "chmod 0666 /dev/fuse")
    assert_nothing_left(sqfs, wait=0)


def test_squashfuse_that_fails_to_start(ch_run, sqfs, tmp_path):
    """A squashfuse that dies at once: its message, exit 31, nothing left."""
    fake = tmp_path / "squashfuse"
    fake.write_text("#!/bin/sh\necho 'fake squashfuse: out of luck' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ.get('PATH', '')}")
    one_error(run([ch_run, sqfs, "--", "/bin/true"], env=env),
              "squashfuse: fake squashfuse: out of luck")
    assert_nothing_left(sqfs, wait=0)


def test_failure_after_mount_leaves_nothing(ch_run, sqfs, tmp_path):
    """A set-up error after the mount (a bind whose destination is missing)."""
    one_error(run([ch_run, "-b", f"{tmp_path}:/no/such/dir", sqfs, "--", "true"]),
              "/no/such/dir")
    assert_nothing_left(sqfs, wait=0)


# --- joined groups ---------------------------------------------------------------------------------

def spawn(ch_run, sqfs, tag, n, script, out=subprocess.PIPE):
    return subprocess.Popen(
        [ch_run, f"--join-ct={n}", f"--join-tag={tag}", sqfs, "--", "sh", "-c", script],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out, text=True)


@pytest.mark.parametrize("n", [2, 6])
def test_joined_group_shares_one_mount(ch_run, sqfs, n):
    tag = f"sq-{uuid.uuid4().hex[:12]}"
    script = ("echo $(readlink /proc/self/ns/mnt) $(grep -c fuse.squashfuse /proc/self/mountinfo);"
              " sleep 3")
    peers = [spawn(ch_run, sqfs, tag, n, script) for _ in range(n)]
    try:
        lines = [p.stdout.readline().split() for p in peers]  # every peer is inside now
        assert len(servers(sqfs)) == 1, servers(sqfs)
        assert len({l[0] for l in lines}) == 1, f"peers in different mount namespaces: {lines}"
        assert {l[1] for l in lines} == {"1"}, lines
        for p in peers:
            p.wait(timeout=60)
    finally:
        for p in peers:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert [p.returncode for p in peers] == [0] * n, [p.stderr.read() for p in peers]
    assert_nothing_left(sqfs)


def test_joined_group_creator_exits_first(ch_run, sqfs, tmp_path):
    """The creator's command ends at once; later peers still find the archive mounted."""
    tag = f"sq-{uuid.uuid4().hex[:12]}"
    with open(tmp_path / "first.out", "w+") as log:  # a pipe would wait for the holder
        first = spawn(ch_run, sqfs, tag, 3, "true", out=log)
        assert first.wait(timeout=60) == 0, log.read()
    rest = [spawn(ch_run, sqfs, tag, 3, "ls /bin/busybox") for _ in range(2)]
    for p in rest:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out == "/bin/busybox\n" and err == "", err
    assert_nothing_left(sqfs)


def test_joined_group_sigkilled(ch_run, sqfs):
    tag = f"sq-{uuid.uuid4().hex[:12]}"
    peers = [spawn(ch_run, sqfs, tag, 3, "echo in; exec sleep 300") for _ in range(3)]
    try:
        for p in peers:
            assert p.stdout.readline() == "in\n"
        assert len(servers(sqfs)) == 1
        for p in peers:
            p.send_signal(signal.SIGKILL)
    finally:
        for p in peers:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert_nothing_left(sqfs)


# --- MPI: one container and one FUSE mount per node ------------------------------------------------

RANK = re.compile(r"rank (\d+) size (\d+) localsize (\d+) sum (OK|BAD) "
                  r"user:(\d+) mnt:(\d+) host:(\S+)")


def mpi_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PMI_", "MPI_LOCAL", "SLURM_", "CH_MPIRUN"))}
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


@pytest.fixture
def mpi_sqfs(tmp_path):
    link = tmp_path / f"mpi-{uuid.uuid4().hex[:8]}.sqfs"
    link.symlink_to(archive("mpi"))
    return link


def count_servers_script(marker):
    """Shell (in the container: /proc is the host's) printing how many squashfuse serve MARKER."""
    return (f"n=0; for p in /proc/[0-9]*; do case \"$(cat $p/comm 2>/dev/null)\" in "
            f"squashfuse|squashfuse_ll) grep -qF '{marker}' $p/cmdline 2>/dev/null && "
            f"n=$((n+1));; esac; done; echo servers $n")


@pytest.mark.parametrize("n", [16])
def test_mpirun_ch_mpirun_sqfs(ch_run, mpi_sqfs, n):
    """``mpirun -n 16 ch-mpirun IMG.sqfs -- app``: one container, one mount, nothing after."""
    chm = Path(sys.executable).parent / "ch-mpirun"
    script = ("/opt/mpi-tests/allreduce-ompi4 && "
              "echo mounts $(grep -c fuse.squashfuse /proc/self/mountinfo) && "
              + count_servers_script(mpi_sqfs))
    r = run(["mpirun.openmpi", "--oversubscribe", "-n", str(n), chm, mpi_sqfs, "--",
             "sh", "-c", script], env=mpi_env(), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [RANK.search(l) for l in re.findall(r"rank \d+ .*?host:\S+", r.stdout)]
    assert sorted(int(m.group(1)) for m in ranks) == list(range(n)), r.stdout
    assert {m.group(4) for m in ranks} == {"OK"}
    assert len({(m.group(5), m.group(6)) for m in ranks}) == 1, "ranks in different containers"
    assert re.findall(r"mounts (\d+)", r.stdout) == ["1"] * n, r.stdout
    assert re.findall(r"servers (\d+)", r.stdout) == ["1"] * n, r.stdout
    assert_nothing_left(mpi_sqfs)


def test_mpirun_sqfs_sigkilled(ch_run, mpi_sqfs):
    """Every rank SIGKILLed mid-job: the FUSE server and the mount still go."""
    chm = Path(sys.executable).parent / "ch-mpirun"
    token = f"{uuid.uuid4().int % 10**6 + 1000}.{os.getpid()}"
    p = subprocess.Popen(["mpirun.openmpi", "--oversubscribe", "-n", "4", chm, mpi_sqfs, "--",
                          "sleep", token], env=mpi_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def sleepers():
            return [pid for pid, comm, cmd in ours(token) if comm == "sleep"]
        wait_for(lambda: len(sleepers()) == 4, timeout=120)
        assert len(servers(mpi_sqfs)) == 1
        for pid in sleepers():
            os.kill(pid, signal.SIGKILL)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    assert_nothing_left(mpi_sqfs)


# --- Slurm: one mount per node -------------------------------------------------------------------

@pytest.mark.slurm
@pytest.mark.skipif(os.environ.get("CHRUN_SLURM") != "1", reason="needs CHRUN_SLURM=1 (ci/slurm-up.sh)")
def test_srun_join_one_mount_per_node(ch_run, sqfs):
    """``srun -N 2 -n 5 ch-run --join IMG.sqfs``: per node one container and one squashfuse."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI", "PMIX_")) or k == "SLURM_CONF"}
    script = ("echo task $(hostname) $(readlink /proc/self/ns/mnt) "
              "$(grep -c fuse.squashfuse /proc/self/mountinfo); sleep 3")
    p = subprocess.Popen(["srun", "-t", "2", "-N", "2", "-n", "5", ch_run, "--join", sqfs, "--",
                          "sh", "-c", script], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tasks = [p.stdout.readline().split() for _ in range(5)]  # all 5 tasks are inside now
        assert len(servers(sqfs)) == 2, servers(sqfs)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert all(t[0] == "task" and t[3] == "1" for t in tasks), tasks
    by_host = {}
    for _, host, mnt, _ in tasks:
        by_host.setdefault(host, set()).add(mnt)
    assert len(by_host) == 2 and all(len(m) == 1 for m in by_host.values()), tasks
    assert_nothing_left(sqfs)
