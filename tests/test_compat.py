"""Charliecloud compatibility where the man page is silent (issue 12).

Each section is one behaviour a Charliecloud user meets on day one: names of
``-u``/``-g`` IDs, home at ``/home/$USER``, scripts without ``#!``, binds on
``/proc`` and ``/``, bind destinations that are symlinks, one-line messages,
mount flags kept by the read-only image, and the setuid refusal.  Unit tests
(pure, or with a fake ``execve``) and real containers; run as root and as the
plain user ``chrun-test`` (CI does both; a few root-only checks also run
ch-run as ``chrun-test`` through ``runuser``).
"""

import errno
import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from chrun import container, errors, idnames, main, plan as planmod, syscalls
from chrun.errors import UsageError
from chrun.plan import IdNames, Options, User, id_file_text, login_name, make_plan
from conftest import run

UID, GID = os.getuid(), os.getgid()
AS_ROOT = UID == 0
PLAIN = "chrun-test"
ERROR_LINE = re.compile(r"^ch-run\[\d+\]: error: .+$")
ROOT_FLAGS = "awk '$5 == \"/\" {print $6}' /proc/self/mountinfo"


def host_user(uid, default):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return default


def host_group(gid, default):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return default


ME = host_user(UID, f"u{UID}")
MY_GROUP = host_group(GID, f"g{GID}")


def ch(ch_run, *args, env=None, cwd="/", **kw):
    return run([ch_run, *args], env=env, cwd=cwd, **kw)


def env_with(**changes):
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = os.fspath(v)
    return env


def assert_ok(r):
    assert r.returncode == 0 and r.stderr == "", r
    return r.stdout


def assert_one_error(r, code, named):
    assert r.returncode == code, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), r.stderr
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert named in lines[0], (named, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def as_plain(ch_run):
    """Prefix that runs a command as the plain user (empty when we are one)."""
    if not AS_ROOT:
        return []
    try:
        pwd.getpwnam(PLAIN)
    except KeyError:
        pytest.skip(f"running as root and user {PLAIN} does not exist")
    prefix = ["runuser", "-u", PLAIN, "--"]
    r = run([*prefix, ch_run, "--version"])
    if r.returncode != 0:
        pytest.skip(f"{PLAIN} can't run {ch_run}: {r.stderr.strip()}")
    return prefix


# --- -u/-g: IDs named as the host names them ---------------------------------------------

ALICE = User(uid=1001, gid=1002, name="alice", home="/home/alice")
HOST = IdNames(users={0: ("root", "root"), 1001: ("alice", "Alice A,,,"),
                      65534: ("nobody", "nobody"), 7: ("lp", "lp")},
               groups={0: "root", 1002: "staff", 65534: "nogroup", 7: "lp"})


def files_for(uid=None, gid=None, user=ALICE, names=HOST, env=None):
    opts = Options(newroot="/img", command=("true",), uid=uid, gid=gid)
    p = make_plan(opts, {"PATH": "/bin"} if env is None else env, user, "/")
    specs = {m.dst: m.content for m in p.mounts if m.kind == "file"}
    return ([line.split(":") for line in id_file_text(specs["/etc/passwd"], names).splitlines()],
            [line.split(":") for line in id_file_text(specs["/etc/group"], names).splitlines()])


def names_of(rows, field=2):
    return {int(r[field]): r[0] for r in rows}


def test_names_nobody_nogroup():
    passwd, group = files_for(65534, 65534)
    assert ["nobody", "x", "65534", "65534", "nobody", "/home/alice", "/bin/sh"] in passwd
    assert names_of(group) == {0: "root", 65534: "nogroup", 1002: "staff"}
    # One entry per ID and per name; the invoking user keeps their own.
    assert names_of(passwd) == {0: "root", 65534: "nobody", 1001: "alice"}
    assert ["alice", "x", "1001", "1002", "Alice A,,,", "/home/alice", "/bin/sh"] in passwd


def test_names_root_and_other_ids():
    passwd, group = files_for(0, 65534)
    assert ["root", "x", "0", "65534", "root", "/home/alice", "/bin/sh"] in passwd
    assert names_of(passwd) == {0: "root", 65534: "nobody", 1001: "alice"}
    assert names_of(group) == {0: "root", 65534: "nogroup", 1002: "staff"}
    passwd, group = files_for(7, 7)   # known to the host: its names
    assert ["lp", "x", "7", "7", "lp", "/home/alice", "/bin/sh"] in passwd
    assert names_of(group)[7] == "lp"
    passwd, group = files_for(None, 65534)   # -g alone: the user, in nogroup
    assert ["alice", "x", "1001", "65534", "Alice A,,,", "/home/alice", "/bin/sh"] in passwd
    assert names_of(group)[65534] == "nogroup"


def test_names_unknown_ids_are_neutral():
    passwd, group = files_for(1234, 5678)
    assert ["u1234", "x", "1234", "5678", "", "/home/alice", "/bin/sh"] in passwd
    assert names_of(passwd) == {0: "root", 65534: "nobody", 1001: "alice", 1234: "u1234"}
    assert names_of(group) == {0: "root", 65534: "nogroup", 1002: "staff", 5678: "g5678"}
    # The user unknown to the host (no NSS entry): their login name, a neutral group.
    bare = IdNames(users={}, groups={})
    passwd, group = files_for(names=bare)
    assert names_of(passwd) == {0: "root", 65534: "nobody", 1001: "alice"}
    assert names_of(group) == {0: "root", 65534: "nogroup", 1002: "g1002"}


def test_names_fields_cannot_break_the_file():
    odd = IdNames(users={1001: ("al:ice", "A:B\nC")}, groups={1002: "st\naff"})
    passwd, group = files_for(names=odd)
    assert all(len(r) == 7 for r in passwd) and all(len(r) == 4 for r in group)
    assert ["al_ice", "x", "1001", "1002", "A_B_C", "/home/alice", "/bin/sh"] in passwd
    assert names_of(group)[1002] == "st_aff"
    # A host name equal to another entry's: the container's ID wins, no duplicate name.
    clash = IdNames(users={1234: ("alice", "")}, groups={})
    passwd, _ = files_for(1234, 1002, names=clash)
    assert [r[0] for r in passwd].count("alice") == 1
    assert names_of(passwd)[1234] == "alice"


def test_lookup_asks_the_host():
    got = idnames.lookup([0, UID, 65534, 4000000000], [0, GID, 4000000000])
    assert got.users[0][0] == pwd.getpwuid(0).pw_name
    assert got.users.get(UID, (ME,))[0] == ME
    assert 4000000000 not in got.users and 4000000000 not in got.groups
    assert got.groups[0] == grp.getgrgid(0).gr_name


def test_no_name_lookup_while_planning(monkeypatch):
    """Planning (every peer of a group does it) asks no database when $USER and $HOME
    are set; the creator's generated_files looks up once, for both files."""
    def refuse(*a):
        raise AssertionError("NSS lookup")
    monkeypatch.setattr(pwd, "getpwuid", refuse)
    monkeypatch.setattr(grp, "getgrgid", refuse)
    user = planmod.current_user({"USER": "alice", "HOME": "/h/alice"})
    assert (user.name, user.home) == ("alice", "/h/alice")
    p = make_plan(Options(newroot="/img", command=("true",), uid=0), {"USER": "alice"},
                  user, "/")
    calls = []
    monkeypatch.setattr(idnames, "lookup", lambda u, g: calls.append((u, g)) or HOST)
    files = container.generated_files(p)
    assert calls == [(sorted({0, 65534, os.geteuid()}), sorted({0, 65534, os.getegid()}))]
    assert files["/etc/passwd"].startswith("root:x:0:")


def test_current_user_from_password_database():
    # Without $USER or $HOME the password database fills them in.
    user = planmod.current_user({})
    assert user.name == ME and user.home == (pwd.getpwuid(UID).pw_dir
                                             if ME != f"u{UID}" else None)


@pytest.mark.container
@pytest.mark.parametrize("opts, names", [
    (["-u", "65534", "-g", "65534"], [host_user(65534, "nobody"), host_group(65534, "nogroup")]),
    (["-u", "0", "-g", "65534"], [host_user(0, "root"), host_group(65534, "nogroup")]),
    (["-g", "65534"], [ME, host_group(65534, "nogroup")]),
    (["-u", "0"], [host_user(0, "root"), MY_GROUP]),
    (["-u", "1234", "-g", "5678"], [host_user(1234, "u1234"), host_group(5678, "g5678")]),
], ids=["nobody", "root-nogroup", "gid-only", "uid-only", "unknown"])
def test_id_names_in_container(ch_run, tiny_image, opts, names):
    out = assert_ok(ch(ch_run, *opts, tiny_image, "--", "sh", "-c",
                       f"id -un; id -gn; grep -c '^{ME}:x:{UID}:' /etc/passwd"))
    assert out.split() == [*names, "1"], out   # and the user's own entry is there


# --- home follows $USER --------------------------------------------------------------------

@pytest.mark.parametrize("env, name", [
    ({"USER": "bob"}, "bob"), ({}, "alice"), ({"USER": ""}, "alice"),
    ({"USER": "b.o b-1"}, "b.o b-1"), ({"USER": "ü"}, "ü"),
])
def test_login_name(env, name):
    assert login_name(env, ALICE) == name


@pytest.mark.parametrize("bad", ["a/b", "/", "..", ".", "a:b", "a\nb", "\t"])
def test_login_name_bad(bad):
    with pytest.raises(UsageError) as e:
        login_name({"USER": bad}, ALICE)
    assert e.value.code == 64 and "$USER" in e.value.message


def test_home_follows_user_in_plan():
    p = make_plan(Options(newroot="/img", command=("true",)), {"USER": "bob", "PATH": "/bin"},
                  ALICE, "/")
    home = [(m.kind, m.dst, m.src) for m in p.mounts if m.dst.startswith("/home")]
    assert home == [("tmpfs", "/home", None), ("mkdir", "/home/bob", None),
                    ("bind", "/home/bob", "/home/alice")]
    assert p.env["HOME"] == "/home/bob"


@pytest.mark.container
def test_home_follows_user(ch_run, tiny_image, tmp_path):
    (tmp_path / "marker").write_text("mine\n")
    env = env_with(USER="someone", HOME=tmp_path)
    out = assert_ok(ch(ch_run, tiny_image, "--", "sh", "-c",
                       'echo "$HOME"; ls /home; cat "$HOME/marker"; '
                       'grep "^$(id -un):" /etc/passwd | cut -d: -f6', env=env))
    assert out.splitlines() == ["/home/someone", "someone", "mine", "/home/someone"]
    # $USER unset: the password database's name.
    out = assert_ok(ch(ch_run, tiny_image, "--", "sh", "-c", 'echo "$HOME"',
                       env=env_with(USER=None, HOME=tmp_path)))
    assert out == f"/home/{ME}\n"


@pytest.mark.container
@pytest.mark.parametrize("bad", ["a/b", "..", "x\ny"])
def test_home_bad_user_is_usage_error(ch_run, tiny_image, bad):
    r = ch(ch_run, tiny_image, "--", "true", env=env_with(USER=bad))
    assert_one_error(r, 64, "$USER")
    # With --no-home $USER names no directory: no error; the passwd home is /.
    out = assert_ok(ch(ch_run, "--no-home", tiny_image, "--", "sh", "-c",
                       'grep "^$(id -un):" /etc/passwd | cut -d: -f6', env=env_with(USER=bad)))
    assert out == "/\n"


def test_no_home_passwd_home_is_root_dir():
    p = make_plan(Options(newroot="/img", command=("true",), no_home=True),
                  {"USER": "a:b/c", "PATH": "/bin"}, ALICE, "/")
    spec = next(m.content for m in p.mounts if m.dst == "/etc/passwd")
    passwd = [r.split(":") for r in id_file_text(spec, IdNames(users={}, groups={})).split("\n")]
    assert ["a_b/c", "x", "1001", "1002", "", "/", "/bin/sh"] in passwd
    assert "HOME" not in p.env


# --- execvp(3) semantics ---------------------------------------------------------------------

class FakeExec:
    """An execve that fails with the errno given per path (ENOENT if not listed), and
    records every attempt; a path mapped to None "succeeds" (raises Ran)."""

    class Ran(Exception):
        pass

    def __init__(self, results):
        self.results = results
        self.calls = []

    def __call__(self, path, argv, env):
        self.calls.append((path, list(argv)))
        err = self.results.get(path, errno.ENOENT)
        if err is None:
            raise FakeExec.Ran(path)
        raise OSError(err, os.strerror(err), path)


def exec_with(results, file, path, argv=None):
    fake = FakeExec(results)
    env = {} if path is None else {"PATH": path}
    try:
        syscalls.execvpe(file, argv or [file, "arg"], env, execve=fake)
    except FakeExec.Ran as ran:
        return str(ran), fake.calls, None
    except OSError as x:
        return None, fake.calls, x.errno
    raise AssertionError("execvpe returned")


def test_execvpe_searches_path_in_order():
    ran, calls, _ = exec_with({"/b/x": None, "/c/x": None}, "x", "/a:/b:/c")
    assert ran == "/b/x" and [c[0] for c in calls] == ["/a/x", "/b/x"]
    assert calls[-1][1] == ["x", "arg"]


def test_execvpe_empty_entry_is_cwd():
    for path in (":/b", "/a::/b", "/a:"):
        ran, calls, _ = exec_with({"x": None}, "x", path)
        assert ran == "x", (path, calls)
    ran, calls, _ = exec_with({}, "x", "")   # PATH="" is one empty entry
    assert [c[0] for c in calls] == ["x"]


def test_execvpe_default_path_and_slash():
    _, calls, err = exec_with({}, "x", None)
    assert [c[0] for c in calls] == ["/bin/x", "/usr/bin/x"] and err == errno.ENOENT
    _, calls, err = exec_with({}, "./x", "/a:/b")   # a slash: no search
    assert [c[0] for c in calls] == ["./x"] and err == errno.ENOENT
    _, calls, err = exec_with({}, "", "/a")
    assert calls == [] and err == errno.ENOENT


def test_execvpe_enoexec_runs_sh():
    ran, calls, _ = exec_with({"/a/s": errno.ENOEXEC, "/bin/sh": None}, "s", "/a:/b",
                              argv=["s", "1", "2"])
    assert ran == "/bin/sh"
    assert calls == [("/a/s", ["s", "1", "2"]), ("/bin/sh", ["/bin/sh", "/a/s", "1", "2"])]
    ran, calls, _ = exec_with({"/x/s": errno.ENOEXEC, "/bin/sh": None}, "/x/s", "/a")
    assert calls[-1] == ("/bin/sh", ["/bin/sh", "/x/s", "arg"])
    # No /bin/sh: like glibc, go on with the search.
    ran, calls, _ = exec_with({"/a/s": errno.ENOEXEC, "/b/s": None}, "s", "/a:/b")
    assert ran == "/b/s"


def test_execvpe_eacces_vs_enoent():
    ran, _, _ = exec_with({"/a/x": errno.EACCES, "/b/x": None}, "x", "/a:/b")
    assert ran == "/b/x"   # EACCES goes on to the next entry
    _, calls, err = exec_with({"/a/x": errno.EACCES}, "x", "/a:/b:/c")
    assert err == errno.EACCES and len(calls) == 3   # reported only when none worked
    _, _, err = exec_with({"/b/x": errno.EACCES, "/c/x": errno.ENOTDIR}, "x", "/a:/b:/c")
    assert err == errno.EACCES
    _, _, err = exec_with({"/a/x": errno.ENOTDIR}, "x", "/a:/b")
    assert err == errno.ENOENT
    # Any other error stops the search at once.
    _, calls, err = exec_with({"/a/x": errno.E2BIG, "/b/x": None}, "x", "/a:/b")
    assert err == errno.E2BIG and len(calls) == 1


@pytest.fixture
def script_image(writable_image):
    """The image with shell scripts without "#!" (executable) and a non-executable tool."""
    d = writable_image / "usr" / "local" / "bin"
    (d / "noshebang").write_text('echo "script $0 $1"\n')
    (d / "noshebang").chmod(0o755)
    (writable_image / "mnt" / "0" / "tool").write_text("echo denied-one\n")
    (writable_image / "mnt" / "0" / "tool").chmod(0o644)
    (writable_image / "mnt" / "1" / "tool").write_text("echo tool from /mnt/1\n")
    (writable_image / "mnt" / "1" / "tool").chmod(0o755)
    return writable_image


@pytest.mark.container
def test_script_without_shebang(ch_run, script_image):
    out = assert_ok(ch(ch_run, script_image, "--", "noshebang", "a1",
                       env=env_with(PATH="/usr/local/bin:/bin")))
    assert out == "script /usr/local/bin/noshebang a1\n"
    out = assert_ok(ch(ch_run, script_image, "--", "/usr/local/bin/noshebang", "a2"))
    assert out == "script /usr/local/bin/noshebang a2\n"
    out = assert_ok(ch(ch_run, "-c", "/usr/local/bin", script_image, "--", "./noshebang"))
    assert out == "script ./noshebang \n"


@pytest.mark.container
def test_exec_path_search(ch_run, script_image):
    # Empty PATH entry: the working directory.
    out = assert_ok(ch(ch_run, "-c", "/usr/local/bin", script_image, "--", "noshebang", "x",
                       env=env_with(PATH=":/nowhere")))
    assert out == "script noshebang x\n"
    # Not executable in /mnt/0, executable in /mnt/1: the later one runs.
    out = assert_ok(ch(ch_run, script_image, "--", "tool", env=env_with(PATH="/mnt/0:/mnt/1")))
    assert out == "tool from /mnt/1\n"
    # Only a non-executable one: EACCES, exit 49.
    r = ch(ch_run, script_image, "--", "tool", env=env_with(PATH="/mnt/0:/nowhere"))
    line = assert_one_error(r, 49, "tool")
    assert "Permission denied" in line
    r = ch(ch_run, script_image, "--", "no-such-tool", env=env_with(PATH="/mnt/0:/mnt/1"))
    assert "No such file or directory" in assert_one_error(r, 49, "no-such-tool")


# --- binds on /proc and / ---------------------------------------------------------------------

@pytest.fixture
def src_dir(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "f").write_text("from src\n")
    return d


@pytest.mark.container
@pytest.mark.parametrize("verbose", [[], ["-v"], ["-vv"]], ids=["quiet", "v", "vv"])
def test_bind_on_proc(ch_run, tiny_image, src_dir, verbose):
    r = ch(ch_run, *verbose, "-b", f"{src_dir}:/proc", tiny_image, "--", "cat", "/proc/f")
    assert r.returncode == 0 and r.stdout == "from src\n", r
    assert ("container ready: user ns " in r.stderr) == bool(verbose), r.stderr
    assert "error" not in r.stderr


@pytest.mark.container
def test_bind_on_proc_join(ch_run, tiny_image, src_dir):
    tag = f"compat-proc-{os.getpid()}"
    args = [ch_run, "-v", "--join-ct=2", f"--join-tag={tag}", "-b", f"{src_dir}:/proc",
            tiny_image, "--", "sh", "-c", "cat /proc/f; sleep 1"]
    peers = [subprocess.Popen([os.fspath(a) for a in args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in peers]
    for p, (out, err) in zip(peers, outs):
        assert p.returncode == 0 and out == "from src\n", (out, err)
    inodes = {re.search(r"user ns (\d+), mnt ns (\d+)", err).groups() for _, err in outs}
    assert len(inodes) == 1, outs   # one container


@pytest.mark.container
@pytest.mark.parametrize("dst", ["/", "//", "/.", "/./"])
def test_bind_on_root_is_usage_error(ch_run, tiny_image, src_dir, dst):
    r = ch(ch_run, "-b", f"{src_dir}:{dst}", tiny_image, "--", "true")
    assert_one_error(r, 64, "--bind")


# --- bind destinations resolve as the container sees them ------------------------------------

STAGING_LINKS = {"x": "/newroot/etc", "y": "/oldroot/etc", "z": "/files", "w": "/newroot",
                 "v": "/oldroot", "u": "/files/etc-passwd"}


@pytest.mark.container
@pytest.mark.parametrize("name", sorted(STAGING_LINKS))
def test_bind_dst_link_into_staging(ch_run, writable_image, src_dir, name):
    """A link to ch-run's staging paths means those paths in the image, which has none."""
    target = STAGING_LINKS[name]
    (writable_image / "mnt" / name).symlink_to(target)
    r = ch(ch_run, "-b", f"{src_dir}:/mnt/{name}", writable_image, "--", "id", "-un")
    line = assert_one_error(r, 31, f"/mnt/{name}")
    assert f"links to {target}" in line and "not found in image" in line


@pytest.mark.container
def test_bind_dst_link_into_staging_existing_in_image(ch_run, writable_image, src_dir):
    """If the image does have /newroot/etc, that is where the bind goes: the image's."""
    (writable_image / "newroot" / "etc").mkdir(parents=True)
    (writable_image / "mnt" / "x").symlink_to("/newroot/etc")
    out = assert_ok(ch(ch_run, "-b", f"{src_dir}:/mnt/x", writable_image, "--", "sh", "-c",
                       "cat /newroot/etc/f; id -un; test -e /etc/f || echo etc-untouched"))
    assert out.splitlines() == ["from src", ME, "etc-untouched"]


@pytest.mark.container
@pytest.mark.parametrize("link", ["../..", "../../etc", "../../../../tmp", "/mnt/../.."])
def test_bind_dst_link_above_root(ch_run, writable_image, src_dir, link):
    (writable_image / "mnt" / "up").symlink_to(link)
    for dst in ("/mnt/up", "/mnt/up/x"):
        r = ch(ch_run, "-b", f"{src_dir}:{dst}", writable_image, "--", "true")
        assert "outside the image" in assert_one_error(r, 31, dst)


@pytest.mark.container
def test_bind_dst_absolute_links_restart_at_image_root(ch_run, writable_image, src_dir):
    (writable_image / "mnt" / "abs").symlink_to("/mnt/3")
    (writable_image / "mnt" / "chain").symlink_to("abs")
    out = assert_ok(ch(ch_run, "-b", f"{src_dir}:/mnt/chain", writable_image, "--",
                       "cat", "/mnt/3/f"))
    assert out == "from src\n"
    assert not (writable_image / "mnt" / "3" / "f").exists()


@pytest.mark.container
def test_bind_dst_link_to_shared_tmp(ch_run, writable_image, src_dir):
    """A link to /tmp/D is the container's /tmp/D (the host's /tmp, shared): the bind
    is seen there inside and never on the host."""
    d = Path(tempfile.mkdtemp(prefix="compat-", dir="/tmp"))
    try:
        (writable_image / "mnt" / "t").symlink_to(d)
        out = assert_ok(ch(ch_run, "-b", f"{src_dir}:/mnt/t", writable_image, "--",
                           "cat", f"{d}/f"))
        assert out == "from src\n" and list(d.iterdir()) == []
    finally:
        shutil.rmtree(d)


@pytest.mark.container
def test_bind_dst_link_loop(ch_run, writable_image, src_dir):
    (writable_image / "mnt" / "a").symlink_to("b")
    (writable_image / "mnt" / "b").symlink_to("a")
    r = ch(ch_run, "-b", f"{src_dir}:/mnt/a", writable_image, "--", "true")
    assert "symbolic links" in assert_one_error(r, 31, "/mnt/a")


# --- one line per message ---------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [
    ("plain /path", "plain /path"),
    ("a\nb", "a\\nb"),
    ("cr\rtab\t", "cr\\rtab\\t"),
    ("esc\x1b[31m", "esc\\x1b[31m"),
    ("del\x7f c1\x85", "del\\x7f c1\\x85"),
    ("ls\u2028ps\u2029", "ls\\u2028ps\\u2029"),
    (os.fsdecode(b"/img\xff\xfe"), "/img\\xff\\xfe"),
    ("ünïcødé 日本", "ünïcødé 日本"),
])
def test_one_line(text, shown):
    assert errors.one_line(text) == shown
    assert len(shown.splitlines()) == 1


def test_emit_is_one_line(capfd):
    errors.error(f"can't find image: /x\n{errors.PROGRAM}[1]: error: forged")
    errors.warning(os.fsdecode(b"bad \xff byte"))
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and err.endswith("\n")
    assert lines[0].endswith("/x\\nch-run[1]: error: forged")
    assert lines[1].endswith("warning: bad \\xff byte") and "udcff" not in err


@pytest.mark.container
@pytest.mark.parametrize("program", ["ch-run", "ch-mpirun"])
def test_message_cannot_be_forged(ch_run, program):
    exe = Path(ch_run).parent / program
    bad = b"/no/such\nch-run[1]: error: forged\xff"
    r = subprocess.run([os.fspath(exe), os.fsdecode(bad), "--", "true"], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 31 and r.stdout == b"", r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith(b"\n"), r.stderr
    assert re.match(rb"^%s\[\d+\]: error: " % program.encode(), lines[0]), lines[0]
    assert b"/no/such\\nch-run[1]: error: forged\\xff" in lines[0]


# --- mount flags kept by the read-only image ---------------------------------------------------

# (mount options of the image's filesystem, flags the container's / must show besides ro/rw)
FLAG_CASES = [
    ("strictatime,nodiratime", {"nodiratime"}, {"relatime", "noatime"}),
    ("nosymfollow", {"nosymfollow", "relatime"}, set()),
    ("noatime,nodiratime,nosymfollow", {"noatime", "nodiratime", "nosymfollow"}, set()),
    ("relatime", {"relatime"}, {"noatime", "nodiratime"}),
    ("nosuid,nodev,strictatime", {"nosuid", "nodev"}, {"relatime", "noatime"}),
]

# Run inside "unshare -Urm": mount a tmpfs with $1's options on $2, copy the image $3 there,
# then ch-run ($4) read-only and with -w; /bin/busybox directly (nosymfollow: no /bin/sh link).
FLAGS_SCRIPT = """set -e
mount -t tmpfs -o "$1,mode=755" tmpfs "$2"
cp -R "$3" "$2/img"
for w in "" -w; do
    "$4" $w --no-home "$2/img" -- /bin/busybox awk '$5 == "/" {print $6}' /proc/self/mountinfo
done
"""


def check_root_flags(out, want, never):
    lines = out.split()
    assert len(lines) == 2, out
    for line, mode in zip(lines, ("ro", "rw")):
        flags = set(line.split(","))
        assert mode in flags and want <= flags and not (never & flags), (mode, flags)


@pytest.mark.container
@pytest.mark.parametrize("opts, want, never", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_read_only_keeps_mount_flags(ch_run, tiny_image, tmp_path, opts, want, never):
    """The image on a mount with these flags, made in a user namespace (so the kernel
    locks them for ch-run's): read-only and -w both keep every one."""
    if not shutil.which("unshare"):
        pytest.skip("unshare(1) not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = run(["unshare", "-Urm", "sh", "-c", FLAGS_SCRIPT, "sh", opts, mnt, tiny_image, ch_run])
    assert r.returncode == 0 and r.stderr == "", r
    check_root_flags(r.stdout, want, never)


@pytest.mark.container
@pytest.mark.skipif(not AS_ROOT, reason="mounts on the host need root")
@pytest.mark.parametrize("opts, want, never", FLAG_CASES[:3], ids=[c[0] for c in FLAG_CASES[:3]])
def test_read_only_keeps_host_mount_flags(ch_run, tiny_image, as_plain, opts, want, never):
    """A real host mount with these flags; ch-run run by root and by the plain user."""
    mnt = Path(tempfile.mkdtemp(prefix="compat-flags-", dir="/var/tmp"))
    mnt.chmod(0o755)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"{opts},mode=755", "tmpfs", mnt],
                       check=True)
        try:
            subprocess.run(["cp", "-a", tiny_image, mnt / "img"], check=True)
            for prefix in ([], as_plain):
                out = ""
                for w in ([], ["-w"]):
                    out += assert_ok(run([*prefix, ch_run, *w, "--no-home", mnt / "img", "--",
                                          "/bin/busybox", "awk", '$5 == "/" {print $6}',
                                          "/proc/self/mountinfo"]))
                check_root_flags(out, want, never)
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        mnt.rmdir()


def test_locked_flags_atime_modes(tmp_path):
    """statvfs on this test's own filesystem gives exactly one atime mode."""
    flags = syscalls.locked_flags(str(tmp_path))
    modes = [f for f in (syscalls.MS_NOATIME, syscalls.MS_RELATIME, syscalls.MS_STRICTATIME)
             if flags & f]
    assert len(modes) == 1


# --- setuid/setgid: refuse --help and --version too --------------------------------------------

@pytest.fixture
def fake_setuid(monkeypatch):
    """Real and effective UIDs differ, as in a setuid install (a script can't be one)."""
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def fake_setgid(monkeypatch):
    monkeypatch.setattr(os, "getgid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 0)


@pytest.mark.parametrize("fake", ["fake_setuid", "fake_setgid"])
@pytest.mark.parametrize("argv", [["--version"], ["-V"], ["--help"], ["-?"], ["--usage"],
                                  ["/img", "true"], ["--bogus"]])
def test_setid_refuses_everything(request, capfd, fake, argv):
    request.getfixturevalue(fake)
    assert main.main(argv) == 31
    out, err = capfd.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and "refusing to run setuid or setgid" in err


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_setid_refuses_ch_mpirun(capfd, monkeypatch, fake_setuid, argv):
    from chrun_launch import mpirun
    monkeypatch.setattr(errors, "PROGRAM", errors.PROGRAM)   # mpirun.main renames it
    assert mpirun.main(argv) == 31
    out, err = capfd.readouterr()
    assert out == "" and "refusing to run setuid or setgid" in err


def test_not_setid_answers(capfd):
    assert main.main(["--version"]) == 0
    assert capfd.readouterr().out.strip() != ""
