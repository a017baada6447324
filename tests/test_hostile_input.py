"""Hostile input to one's own ch-run, and a hostile second local user (review of issue 14).

Each test names the attack; the rule is always the project's: one error line
``ch-run[PID]: error: ...`` with a documented exit code, bounded in time and
memory, and nothing left behind (no process, no mount).  Real namespaces and
real FUSE; fakes only where a misbehaving program is the point (a squashfuse
that hangs).  Runs as root and as the plain user.
"""

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import IMAGES, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chrun import environ, squash  # noqa: E402
from chrun.errors import ChError  # noqa: E402

ERROR = re.compile(r"ch-run\[\d+\]: error: .+")


def one_error(r, *words, code=31):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and ERROR.fullmatch(lines[0]), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def ours(marker):
    """Live processes whose command line contains ``marker`` (not zombies)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if os.fsencode(str(marker)) in cmd:
            found.append((int(p.name), cmd.replace(b"\0", b" ").decode(errors="replace")))
    return found


def assert_nothing_left(marker, wait=20):
    deadline = time.monotonic() + wait
    while (left := ours(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"
    with open("/proc/self/mountinfo") as f:
        mounts = [line for line in f if str(marker) in line]
    assert not mounts, mounts


def fake_program(directory, name, body):
    path = Path(directory) / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def sqfs(tmp_path):
    """A path of its own for tiny.sqfs (a symlink in tmp_path): the test's marker."""
    archive = IMAGES / "tiny.sqfs"
    if not archive.is_file():
        pytest.fail(f"SquashFS image {archive} missing: bash ci/build-images.sh")
    link = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}.sqfs"
    link.symlink_to(archive)
    return link


# --- SquashFS ------------------------------------------------------------------------------

@pytest.mark.container
def test_squashfuse_that_hangs_is_bounded(ch_run, sqfs, tmp_path):
    """A squashfuse that neither answers FUSE INIT nor exits: ch-run's wait for the mount
    is bounded (squash.WAIT), the server is killed, one line, exit 31, nothing left."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    # Keeps the archive path (our marker) in its command line, holds the FUSE
    # descriptor and never reads it.
    fake_program(bindir, "squashfuse",
                 'exec python3 -c "import time; time.sleep(3600)" "$@"\n')
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    r = run([ch_run, sqfs, "--", "true"], env=env, timeout=squash.WAIT + 50)
    one_error(r, "did not answer", "killed")
    assert_nothing_left(sqfs)


@pytest.mark.container
@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&-", "<&- >&- 2>&-"])
def test_archive_with_closed_std_streams(ch_run, sqfs, tmp_path, closed):
    """ch-run started with 0, 1 and/or 2 closed: the server's descriptors may then be
    numbered 0-2 and must not be taken over by its /dev/null and stderr."""
    out = tmp_path / "out"
    r = run(["sh", "-c", f'"$@" {closed}; echo "rc=$?" > {out}', "sh",
             ch_run, sqfs, "--", "true"])
    assert out.read_text() == "rc=0\n", (out.read_text(), r.stderr)
    assert_nothing_left(sqfs)


@pytest.mark.container
@pytest.mark.parametrize("closed", ["<&-", "<&- >&-"])
def test_archive_with_closed_std_streams_failing_server(ch_run, sqfs, tmp_path, closed):
    """... and squashfuse's own message still becomes the one error line."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_program(bindir, "squashfuse", "echo 'fake squashfuse: no luck' >&2\nexit 1\n")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    r = run(["sh", "-c", f'"$@" {closed}', "sh", ch_run, sqfs, "--", "true"], env=env)
    one_error(r, "squashfuse: fake squashfuse: no luck")
    assert_nothing_left(sqfs)


@pytest.mark.container
def test_archive_with_tight_ulimit_n(ch_run, sqfs, tmp_path):
    """Every descriptor limit from "Python barely starts" up: success, or one error line
    (never a bare strerror or a traceback), and nothing left."""
    script = tmp_path / "sh-script"   # ch-run's prologue is sh: dash moves a script to fd 10
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    for n in range(4, 13):
        probe = run(["bash", "-c", f'ulimit -n {n} && exec "$@"', "bash", sys.executable,
                     "-c", "import chrun.squash"])
        if probe.returncode != 0:
            continue  # Python itself can't start (not ch-run's to say)
        if run(["bash", "-c", f'ulimit -n {n} && exec "$@"', "bash", script]).returncode != 0:
            continue  # nor can /bin/sh run a script
        r = run(["bash", "-c", f'ulimit -n {n} && exec "$@"', "bash", ch_run, sqfs, "--", "true"])
        if r.returncode != 0:
            one_error(r, f"can't mount SquashFS image {sqfs}")
        assert_nothing_left(sqfs)
    assert r.returncode == 0, r.stderr  # 12 is plenty


@pytest.mark.container
@pytest.mark.skipif(os.geteuid() == 0, reason="root is not held to ulimit -u")
def test_archive_with_no_process_left_to_fork(ch_run, sqfs):
    r = run(["bash", "-c", 'ulimit -u 1 && exec "$@"', "bash", ch_run, sqfs, "--", "true"])
    one_error(r, f"can't mount SquashFS image {sqfs}: can't start FUSE server process: "
              "Resource temporarily unavailable")
    assert_nothing_left(sqfs)


@pytest.mark.container
def test_archive_swapped_after_the_check(ch_run, tmp_path):
    """The archive is replaced (here: its symlink pointed elsewhere) after ch-run checked it
    and before squashfuse starts: squashfuse serves the file ch-run checked."""
    archive = IMAGES / "tiny.sqfs"
    link = tmp_path / f"swap-{uuid.uuid4().hex[:8]}.sqfs"
    link.symlink_to(archive)
    other = tmp_path / "not-an-archive"
    other.write_bytes(b"hsqs but nothing else")
    # The FUSE server is started (socketpair(2) first) after the check: hold ch-run there.
    p = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=socketpair",
                          "-e", "inject=socketpair:delay_enter=4000000",
                          ch_run, "-v", link, "--", "cat", "/etc/passwd"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if ": image: " in line:
                break
        tmp = tmp_path / "new-link"
        tmp.symlink_to(other)
        tmp.rename(link)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, err
    assert out.startswith("root:"), out
    assert_nothing_left(link)


@pytest.mark.container
def test_archive_named_by_a_descriptor_of_ch_run(ch_run, tmp_path):
    """/dev/stdin, /dev/fd/N: paths that name ch-run's own descriptors (squashfuse, another
    process, would open its own /dev/null there)."""
    with open(IMAGES / "tiny.sqfs", "rb") as f:
        r = run([ch_run, "/dev/stdin", "--", "true"], stdin=f)
        assert r.returncode == 0, r.stderr
        fd = os.dup(f.fileno())
        try:
            r = run([ch_run, f"/dev/fd/{fd}", "--", "true"], pass_fds=(fd,))
            assert r.returncode == 0, r.stderr
        finally:
            os.close(fd)


def test_check_keeps_the_archive_open(tmp_path):
    a = squash.check(str(IMAGES / "tiny.sqfs"))
    try:
        assert os.path.samestat(os.fstat(a.fd), os.stat(IMAGES / "tiny.sqfs"))
        assert not os.get_inheritable(a.fd)
    finally:
        os.close(a.fd)
    assert squash._fuse_opt_escape("a\\b,c") == "a\\\\b\\,c"


def test_squashfuse_not_taken_from_relative_path_entries(tmp_path, monkeypatch):
    """An empty PATH entry (``PATH=:/usr/bin``) is the working directory, e.g. a /tmp where
    another user left a squashfuse_ll: ch-run's helper is never taken from there."""
    planted = tmp_path / "squashfuse_ll"
    planted.write_text("#!/bin/sh\n")
    planted.chmod(0o755)
    good = tmp_path / "good"
    good.mkdir()
    (good / "squashfuse").write_text("#!/bin/sh\n")
    (good / "squashfuse").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    for path in (f":{good}", f".:{good}", f"good:{good}"):
        assert squash.find_program(path=path) == str(good / "squashfuse"), path
    assert squash.find_program(path="::.") is None


def test_above_stdio():
    r, w = os.pipe()
    try:
        assert squash._above_stdio(w) == w  # already above 2
    finally:
        os.close(r)
        os.close(w)


def test_stat_within():
    assert squash._stat_within("/", time.monotonic() + 30) is None
    assert squash._stat_within("/no/such/path", time.monotonic() + 30) == 2  # ENOENT


@pytest.mark.container
def test_archive_path_with_odd_bytes(ch_run, tmp_path):
    """A newline, blanks, a comma and a non-UTF-8 byte in the archive's path: it runs,
    and the host's mount table shows no trace of it afterwards."""
    archive = IMAGES / "tiny.sqfs"
    odd = os.path.join(os.fsencode(tmp_path), b"a b\n,c=d\xff-" + uuid.uuid4().hex[:6].encode()
                       + b".sqfs")
    os.symlink(os.fsencode(archive), odd)
    r = run([os.fsencode(ch_run), odd, b"--", b"cat", b"/etc/passwd"])
    assert r.returncode == 0, r.stderr
    with open("/proc/self/mountinfo", "rb") as f:
        assert odd[-14:] not in f.read().replace(b"\\012", b"\n")


@pytest.mark.container
def test_archive_fifo_is_not_an_image(ch_run, tmp_path):
    """A FIFO named as IMAGE: an error at once (neither opened for reading nor waited on)."""
    fifo = tmp_path / "img.sqfs"
    os.mkfifo(fifo)
    one_error(run([ch_run, fifo, "--", "true"], timeout=30),
              "neither a directory nor a SquashFS archive")


# --- --set-env FILE --------------------------------------------------------------------------

@pytest.fixture
def short_fifo_wait(monkeypatch):
    monkeypatch.setattr(environ, "FIFO_WAIT", 0.3)


def test_env_fifo_without_writer_fails(tmp_path, short_fifo_wait):
    fifo = tmp_path / "env"
    os.mkfifo(fifo)
    with pytest.raises(ChError, match=r"can't read .*env: FIFO: nothing written"):
        environ.read_file(str(fifo))


def test_env_fifo_with_late_writer(tmp_path, monkeypatch):
    """A named FIFO whose writer comes a little later is read, not taken as empty."""
    monkeypatch.setattr(environ, "FIFO_WAIT", 30)
    fifo = tmp_path / "env"
    os.mkfifo(fifo)

    def writer():
        time.sleep(0.3)
        with open(fifo, "w") as f:
            f.write("A=1\n")
            f.flush()
            time.sleep(0.2)
            f.write("B=2\n")

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert environ.read_file(str(fifo)) == (("A", "1"), ("B", "2"))
    finally:
        t.join()


def test_env_fifo_silent_writer_fails(tmp_path, short_fifo_wait):
    """A writer that opens the FIFO and then neither writes nor closes it."""
    fifo = tmp_path / "env"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a writer (and reader) that stays silent
    try:
        with pytest.raises(ChError, match="nothing written, and not closed"):
            environ.read_file(str(fifo))
    finally:
        os.close(fd)


@pytest.mark.parametrize("text", [b"", b"A=1\n"])
def test_env_pipe_whose_writer_is_gone(text):
    """``--set-env=<(cmd)`` after cmd has exited: the pipe's content, no waiting."""
    r, w = os.pipe()
    os.write(w, text)
    os.close(w)
    try:
        assert environ.read_file(f"/proc/self/fd/{r}") == environ.parse_text(text, "x")
    finally:
        os.close(r)


def test_env_endless_and_huge_files(tmp_path):
    with pytest.raises(ChError, match=r"can't read /dev/zero: larger than 16 MiB"):
        environ.read_file("/dev/zero")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(environ.MAX_BYTES + 1)
    with pytest.raises(ChError, match="larger than"):
        environ.read_file(str(big))


def test_env_directory_and_unreadable(tmp_path):
    with pytest.raises(ChError, match=r"can't read .*: Is a directory"):
        environ.read_file(str(tmp_path))
    if os.geteuid() != 0:
        f = tmp_path / "secret"
        f.write_text("A=1\n")
        f.chmod(0)
        with pytest.raises(ChError, match="Permission denied"):
            environ.read_file(str(f))


def test_env_binary_junk_is_one_error():
    with pytest.raises(ChError, match=r"/j:1: "):
        environ.parse_text(b"\x00\xff\xfe\x01garbage", "/j")
    with pytest.raises(ChError, match=r"/j:2: no '='"):
        environ.parse_text(b"A=\xff\n\xfe\xfd\n", "/j")


def test_expansion_cannot_explode():
    """Each ``A=$A:$A`` doubles A: bounded by execve(2)'s longest string, one error."""
    steps = (("vars", tuple(("A", "$A:$A:x") for _ in range(64))),)
    with pytest.raises(ChError, match=r"--set-env: A: value longer than 128 KiB"):
        environ.apply({}, steps)
    # without expansion nothing grows
    out = environ.apply({}, steps, expand_vars=False)
    assert out["A"] == "$A:$A:x"


@pytest.mark.container
def test_set_env_fifo_and_dev_zero_with_ch_run(ch_run, tiny_image, tmp_path):
    fifo = tmp_path / "env"
    os.mkfifo(fifo)
    one_error(run([ch_run, f"--set-env={fifo}", tiny_image, "--", "true"],
                  timeout=environ.FIFO_WAIT + 50), "FIFO: nothing written")
    one_error(run([ch_run, "--set-env=/dev/zero", tiny_image, "--", "true"]),
              "larger than 16 MiB")
    doubling = tmp_path / "dbl"
    doubling.write_text("A=$A:$A:x\n" * 64)
    one_error(run([ch_run, f"--set-env={doubling}", tiny_image, "--", "true"]),
              "value longer than 128 KiB")


@pytest.mark.container
def test_set_env_process_substitution(ch_run, tiny_image):
    """``--set-env=<(cmd)`` (a pipe) works, also when cmd wrote nothing."""
    r = run(["bash", "-c", '"$1" --set-env=<(echo A=1; sleep 0.3; echo B=2) --set-env=<(true) '
             '"$2" -- sh -c \'echo "$A$B"\'', "bash", ch_run, tiny_image])
    assert (r.returncode, r.stdout) == (0, "12\n"), r.stderr


@pytest.mark.container
@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_image_environment_file_hostile(ch_run, writable_image, kind):
    """An image whose /ch/environment is endless or a FIFO nobody writes."""
    target = writable_image / "ch" / "environment"
    target.parent.mkdir(exist_ok=True)
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    r = run([ch_run, "--set-env", writable_image, "--", "true"],
            timeout=environ.FIFO_WAIT + 50)
    one_error(r, "the image's /ch/environment")


# --- image names: storage squatted by another user -----------------------------------------

@pytest.mark.container
@pytest.mark.skipif(os.geteuid() != 0, reason="making a symlink owned by another user needs root")
def test_storage_symlink_of_another_user_is_not_trusted(ch_run, tiny_image, tmp_path):
    """Another user's symlink at the storage path (/var/tmp/$USER.ch squatted, followed where
    fs.protected_symlinks is off) points at a directory of yours: not used for names."""
    store = tmp_path / "store"
    (store / "img").mkdir(parents=True)
    subprocess.run(["cp", "-a", tiny_image, store / "img" / "foo"], check=True)
    link = tmp_path / "squatted.ch"
    link.symlink_to(store)
    env = {"PATH": os.environ["PATH"], "HOME": "/", "USER": "root", "LANG": "C.UTF-8"}
    r = run([ch_run, "-s", link, "foo", "--", "true"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # a symlink of yours (root's) is fine
    os.lchown(link, 65534, 65534)
    r = run([ch_run, "-s", link, "foo", "--", "true"], env=env, cwd=tmp_path)
    assert r.returncode == 31, r.stderr
    warning, error = r.stderr.splitlines()
    assert "a symlink owned by UID 65534" in warning
    assert ERROR.fullmatch(error) and f"storage {link} is not used for image names" in error


# --- names for the home directory --------------------------------------------------------

def test_user_longer_than_a_file_name_is_a_usage_error():
    from chrun import plan
    from chrun.errors import UsageError
    user = plan.User(uid=1, gid=1, name="u", home="/h")
    assert plan.login_name({"USER": "x" * 255}, user) == "x" * 255
    with pytest.raises(UsageError, match=r"invalid \$USER 'x{64}'\.\.\.: .*at most 255 bytes"):
        plan.login_name({"USER": "x" * 256}, user)
    with pytest.raises(UsageError, match="at most 255 bytes"):
        plan.login_name({"USER": "é" * 128}, user)  # 256 bytes


@pytest.mark.container
def test_hostile_user_and_home_values(ch_run, tiny_image):
    base = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    r = run([ch_run, tiny_image, "--", "true"], env=dict(base, USER="x" * 5000, HOME="/"))
    one_error(r, "invalid $USER", "at most 255 bytes", code=64)
    assert len(r.stderr) < 400
    for user in ("a\nb", "a:b", "..", "a/b"):
        one_error(run([ch_run, tiny_image, "--", "true"], env=dict(base, USER=user, HOME="/")),
                  "invalid $USER", code=64)
    # --no-home: $USER names no directory, and the passwd line stays one line
    r = run([ch_run, "--no-home", "-u", "4242", tiny_image, "--", "cat", "/etc/passwd"],
            env=dict(base, USER="a\nb:c,d"))
    assert r.returncode == 0, r.stderr
    assert all(len(line.split(":")) == 7 for line in r.stdout.splitlines()), r.stdout
    # a $HOME that does not exist (newline, colon): a warning, the command runs
    for home in ("/no/such\nhome", "/no/such:home"):
        r = run([ch_run, tiny_image, "--", "true"], env=dict(base, USER="u", HOME=home))
        assert r.returncode == 0 and len(r.stderr.splitlines()) == 1, r.stderr
        assert "warning: not mounting host home" in r.stderr


def test_passwd_lines_stay_lines():
    """A login name (--no-home takes $USER as is) or host GECOS with ':' or newline."""
    from chrun import plan
    spec = plan.IdFile("passwd", 1000, 1000, 1000, 1000, "a\nb:c,d", "/")
    names = plan.IdNames(users={0: ("root", "Ro:ot\nx,y,z")}, groups={1000: "g:\nh"})
    for text in (plan.passwd_text(spec, names),
                 plan.group_text(spec._replace(kind="group"), names)):
        lines = text.splitlines()
        fields = 7 if "x:1000:1000" in text else 4
        assert all(len(line.split(":")) == fields for line in lines), text
    assert "a_b_c,d:x:1000:1000" in plan.passwd_text(spec, plan.IdNames(users={}, groups={}))


# --- --join with an archive: the creator dies before it hands the container over ---------------

@pytest.mark.container
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="socketpair(2) is 53 on x86_64")
@pytest.mark.parametrize("when", [1, 2])
def test_join_archive_creator_killed_before_hand_over(ch_run, sqfs, when):
    """The creator is held in its first (holder's) or second (FUSE server's) socketpair(2),
    after the rendezvous, before the hand-over, and SIGKILLed there: the peer fails with one
    line, and no server, holder or mount is left."""
    tag = f"hostile-{uuid.uuid4().hex[:8]}"
    common = ["--join-ct=2", f"--join-tag={tag}", "--join-timeout=5", sqfs, "--", "true"]
    creator = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null",
                                "-e", "trace=socketpair",
                                "-e", f"inject=socketpair:delay_enter=30000000:when={when}",
                                ch_run, *common],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        def held():
            for p in Path("/proc").iterdir():
                try:
                    if (p.name.isdigit() and (p / "comm").read_text().strip() == "ch-run"
                            and os.fsencode(str(sqfs)) in (p / "cmdline").read_bytes()
                            and (p / "syscall").read_text().split()[0] == "53"):
                        return int(p.name)
                except (OSError, IndexError):
                    continue
            return None
        deadline = time.monotonic() + 30
        while (pid := held()) is None:
            assert creator.poll() is None and time.monotonic() < deadline, "creator not held"
            time.sleep(0.05)
        peer = subprocess.Popen([ch_run, *common], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)  # the peer meets the group (or not: then it waits alone; both fail)
        os.kill(pid, 9)
        out, err = peer.communicate(timeout=60)
    finally:
        if creator.poll() is None:
            creator.kill()
        creator.wait()
    lines = err.splitlines()
    assert peer.returncode == 31 and lines and ERROR.fullmatch(lines[-1]), err
    assert all("warning" in line for line in lines[:-1]), err
    assert_nothing_left(sqfs)


# --- --unset-env: glibc's extended patterns can take exponential time -----------------------

def test_unset_env_pathological_pattern_is_bounded(monkeypatch):
    monkeypatch.setattr(environ, "GLOB_WAIT", 1.0)
    env = {"a" * 30: "1", "B": "2"}
    with pytest.raises(ChError, match=r"--unset-env: \+\(\+\(a\)\)b: matching took longer"):
        environ.apply(env, (("unset", "+(+(a))b"),))
    # the same machinery still matches what it should, names with odd characters included
    env = {"HOME": "h", "PATH": "p", "A\nB": "x", "SLURM_X": "s", "é": "e"}
    assert environ.matching("!(HOME|PATH)", list(env)) == ["A\nB", "SLURM_X", "é"]
    assert environ.matching("@(SLURM*|é)", list(env)) == ["SLURM_X", "é"]
    assert environ.matching("SLURM*", list(env)) == ["SLURM_X"]
    assert environ.matching("+(x)", []) == []


@pytest.mark.container
def test_unset_env_pathological_pattern_with_ch_run(ch_run, tiny_image):
    env = dict(os.environ, **{"a" * 30: "1"})
    r = run([ch_run, "--unset-env=+(+(a))b", tiny_image, "--", "true"], env=env,
            timeout=environ.GLOB_WAIT + 50)
    one_error(r, "matching took longer than")
