"""Unit tests of ch-run's parsing (chrun.cli) and planning (chrun.plan).

Pure: no namespace, mount or subprocess.  Every test compares real values.
"""

import pytest

from chrun import __version__, cli
from chrun.errors import EXIT_USAGE, UsageError
from chrun.plan import (CH_RUNNING, ID_MAX, IdFile, IdNames, Mount, Options, User,
                        container_env, id_file_text, make_plan, normalize_dst, parse_bind,
                        parse_command, parse_id)

ALICE = User(uid=1001, gid=1002, name="alice", home="/home/alice")
ROOT = User(uid=0, gid=0, name="root", home="/root")
#: What a host could call some IDs (tests of the generated files are in test_compat.py).
NAMES = IdNames(users={0: ("root", "root"), 1001: ("alice", "Alice A"),
                       65534: ("nobody", "nobody")},
                groups={0: "root", 1002: "staff", 65534: "nogroup"})


def plan(*binds, user=ALICE, env=None, cwd="/work", **kw):
    opts = Options(newroot="/img", command=("true",), binds=tuple(binds), **kw)
    return make_plan(opts, {"PATH": "/usr/bin:/bin"} if env is None else env, user, cwd)


def mounts_of(p, kind=None):
    return [m for m in p.mounts if kind is None or m.kind == kind]


def bind_targets(p):
    """(dst, src) of the --bind mounts, in order."""
    return [(m.dst, m.src) for m in p.mounts if m.why.startswith("--bind")]


# --- parse_command ------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["img", "ls"], ("img", ("ls",))),
    (["img", "ls", "-l", "/"], ("img", ("ls", "-l", "/"))),
    (["img", "--", "ls", "-l"], ("img", ("ls", "-l"))),
    (["--", "img", "ls"], ("img", ("ls",))),
    (["img", "--", "--", "x"], ("img", ("--", "x"))),     # only the first -- is eaten
    (["img", "sh", "--", "x"], ("img", ("sh", "--", "x"))),
    (["img", "--", "-v"], ("img", ("-v",))),
])
def test_parse_command(args, expected):
    assert parse_command(args) == expected


@pytest.mark.parametrize("args, words", [
    ([], "NEWROOT not specified"),
    (["img"], "no command"),
    (["img", "--"], "no command"),
    (["", "ls"], "NEWROOT is empty"),
])
def test_parse_command_errors(args, words):
    with pytest.raises(UsageError) as e:
        parse_command(args)
    assert words in e.value.message
    assert e.value.code == EXIT_USAGE == 64


# --- parse_id -------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("0", 0), ("1001", 1001), (str(ID_MAX), ID_MAX),
                                         ("007", 7)])
def test_parse_id_ok(text, value):
    assert parse_id(text, "UID") == value


@pytest.mark.parametrize("text", ["", "-1", "abc", "1.5", " 1", "1a", "0x10", "٣",
                                  str(ID_MAX + 1), str(2**64)])
def test_parse_id_bad(text):
    with pytest.raises(UsageError) as e:
        parse_id(text, "UID")
    assert e.value.code == 64
    assert "UID" in e.value.message and text in e.value.message


# --- binds ------------------------------------------------------------------------

def test_parse_bind_default_and_explicit():
    assert parse_bind("/data", 0) == ("/data", "/mnt/0")
    assert parse_bind("/data", 7) == ("/data", "/mnt/7")
    assert parse_bind("/data:/opt/d", 3) == ("/data", "/opt/d")
    assert parse_bind("rel/src:/x", 0) == ("rel/src", "/x")


@pytest.mark.parametrize("spec", ["", ":/x", "/a:", "/a:rel", "/a:\0b"])
def test_parse_bind_bad(spec):
    with pytest.raises(UsageError) as e:
        parse_bind(spec, 0)
    assert e.value.code == 64
    assert "--bind" in e.value.message


def test_bind_defaults_by_position():
    p = plan("/a", "/b:/opt/b", "/c", "/d")
    # The default destination counts every -b, including those with a DST.
    assert bind_targets(p) == [("/mnt/0", "/a"), ("/opt/b", "/b"), ("/mnt/2", "/c"),
                               ("/mnt/3", "/d")]


def test_only_binds_are_user_mounts():
    p = plan("/a", "/b:/c")
    assert [m.dst for m in p.mounts if m.user] == ["/mnt/0", "/c"]


def test_binds_come_after_system_mounts():
    p = plan("/a:/tmp/x")
    dsts = [m.dst for m in p.mounts]
    assert dsts.index("/tmp") < dsts.index("/tmp/x")
    assert dsts.index("/home/alice") < dsts.index("/tmp/x")


def test_bind_destination_normalized():
    p = plan("/a://opt/./x//", "/b:/opt/../etc")
    assert bind_targets(p) == [("/opt/x", "/a"), ("/opt/../etc", "/b")]
    assert normalize_dst("/") == "/"
    assert normalize_dst("/a/b/") == "/a/b"


# --- the system mounts --------------------------------------------------------------

def test_system_mounts():
    p = plan()
    binds = {m.dst: m.src for m in mounts_of(p, "bind")}
    for d in ("/dev", "/proc", "/sys", "/etc/hosts", "/etc/resolv.conf", "/tmp"):
        assert binds[d] == d
    files = {m.dst: m.content for m in mounts_of(p, "file")}
    assert set(files) == {"/etc/passwd", "/etc/group"}
    # Rendered only with the host's names, which the plan does not look up.
    assert files["/etc/passwd"] == IdFile("passwd", 1001, 1002, 1001, 1002, "alice",
                                          "/home/alice")
    assert files["/etc/group"] == files["/etc/passwd"]._replace(kind="group")
    assert "alice:x:1001:1002:Alice A:" in id_file_text(files["/etc/passwd"], NAMES)
    assert "staff:x:1002:" in id_file_text(files["/etc/group"], NAMES)
    # Required ones are errors when missing from the image; hosts/resolv.conf are not.
    required = {m.dst: m.required for m in p.mounts}
    assert required["/dev"] and required["/proc"] and required["/sys"]
    assert not required["/etc/hosts"] and not required["/etc/resolv.conf"]


def test_private_tmp():
    shared = {m.dst: m for m in plan().mounts}
    private = {m.dst: m for m in plan(private_tmp=True).mounts}
    assert shared["/tmp"].kind == "bind" and shared["/tmp"].src == "/tmp"
    assert private["/tmp"].kind == "tmpfs" and private["/tmp"].src is None


def test_home_bind():
    p = plan()
    home = [(m.kind, m.dst, m.src) for m in p.mounts if m.dst.startswith("/home")]
    assert home == [("tmpfs", "/home", None), ("mkdir", "/home/alice", None),
                    ("bind", "/home/alice", "/home/alice")]
    assert p.env["HOME"] == "/home/alice"


def test_home_bind_uses_host_home_path():
    user = User(uid=5, gid=5, name="bob", home="/scratch/bob")
    p = plan(user=user, env={"HOME": "/scratch/bob", "PATH": "/bin"})
    home = {m.dst: m.src for m in mounts_of(p, "bind")}
    assert home["/home/bob"] == "/scratch/bob"
    assert p.env["HOME"] == "/home/bob"


def test_no_home():
    p = plan(no_home=True, env={"HOME": "/home/alice", "PATH": "/bin"})
    assert not [m for m in p.mounts if m.dst.startswith("/home")]
    assert p.env["HOME"] == "/home/alice"   # left as it was


def test_home_unset_is_usage_error():
    user = User(uid=5, gid=5, name="bob", home=None)
    with pytest.raises(UsageError) as e:
        plan(user=user)
    assert e.value.code == 64 and "--no-home" in e.value.message
    assert plan(user=user, no_home=True).uid == 5


# --- maps -------------------------------------------------------------------------------

def test_maps_default_to_invoking_user():
    p = plan()
    assert (p.uid, p.gid, p.host_uid, p.host_gid) == (1001, 1002, 1001, 1002)
    assert p.uid_map == "1001 1001 1\n"
    assert p.gid_map == "1002 1002 1\n"


def test_maps_with_uid_gid():
    p = plan(uid=0, gid=0)
    assert p.uid_map == "0 1001 1\n"
    assert p.gid_map == "0 1002 1\n"
    p = plan(uid=1234, gid=5678)
    assert p.uid_map == "1234 1001 1\n"
    assert p.gid_map == "5678 1002 1\n"
    assert plan(uid=7).gid_map == "1002 1002 1\n"


def test_maps_for_root():
    p = plan(user=ROOT, env={"HOME": "/root", "PATH": "/bin"})
    assert p.uid_map == "0 0 1\n" and p.gid_map == "0 0 1\n"


# --- passwd and group (more in test_compat.py) ---------------------------------------

def _entries(text):
    assert text.endswith("\n")
    return [line.split(":") for line in text.splitlines()]


def test_plan_passwd_follows_uid_gid_options():
    files = {m.dst: m.content for m in plan(uid=1234, gid=5678).mounts if m.kind == "file"}
    passwd = _entries(id_file_text(files["/etc/passwd"], NAMES))
    group = _entries(id_file_text(files["/etc/group"], NAMES))
    assert ["u1234", "x", "1234", "5678", "", "/home/alice", "/bin/sh"] in passwd
    assert ["alice", "x", "1001", "1002", "Alice A", "/home/alice", "/bin/sh"] in passwd
    assert ["g5678", "x", "5678", ""] in group and ["staff", "x", "1002", ""] in group


# --- environment -------------------------------------------------------------------------

def test_env_defaults():
    host = {"PATH": "/usr/bin", "TMPDIR": "/scratch/tmp", "FOO": "bar", "HOME": "/x"}
    env = container_env(host, "/home/alice")
    assert env["CH_RUNNING"] == CH_RUNNING == "Weird Al Yankovic"
    assert "TMPDIR" not in env
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["FOO"] == "bar"
    assert env["HOME"] == "/home/alice"
    assert host["TMPDIR"] == "/scratch/tmp"   # the host's mapping is not changed


@pytest.mark.parametrize("path, expected", [
    ("/usr/bin:/bin", "/usr/bin:/bin"),
    ("/bin", "/bin"),
    ("/bin:/usr/bin", "/bin:/usr/bin"),
    ("/usr/bin", "/usr/bin:/bin"),
    ("/usr/bin:/bin/", "/usr/bin:/bin/:/bin"),
    ("", "/bin"),
])
def test_env_path_gets_bin(path, expected):
    assert container_env({"PATH": path}, None)["PATH"] == expected


def test_env_path_unset():
    path = container_env({}, None)["PATH"]
    assert "/bin" in path.split(":")


def test_env_overrides_ch_running():
    assert container_env({"CH_RUNNING": "x"}, None)["CH_RUNNING"] == CH_RUNNING


def test_plan_env_and_cwd():
    p = plan(env={"PATH": "/usr/bin", "TMPDIR": "/t"}, cwd="/somewhere")
    assert p.env["PATH"] == "/usr/bin:/bin" and "TMPDIR" not in p.env
    assert p.cwd == "/somewhere"
    assert plan(cd="/opt", cwd="/somewhere").cwd == "/opt"
    assert plan(cwd=None).cwd is None
    assert plan().fallback_cwd == "/"
    assert plan(write=True).writable and not plan().writable


# --- the command line (chrun.cli.parse) ---------------------------------------------

def test_cli_plain():
    o = cli.parse(["/img", "echo", "hi"])
    assert (o.newroot, o.command) == ("/img", ("echo", "hi"))
    assert (o.binds, o.cd, o.uid, o.gid, o.verbose) == ((), None, None, None, 0)
    assert not (o.no_home or o.private_tmp or o.write or o.join)


def test_cli_all_options():
    o = cli.parse(["-b", "/a", "--bind=/b:/c", "-c", "/d", "-u", "12", "--gid=34",
                   "--no-home", "-t", "-v", "-v", "-w", "/img", "--", "cmd", "x"])
    assert o.binds == ("/a", "/b:/c")
    assert (o.cd, o.uid, o.gid) == ("/d", 12, 34)
    assert o.no_home and o.private_tmp and o.write
    assert o.verbose == 2
    assert (o.newroot, o.command) == ("/img", ("cmd", "x"))


def test_cli_long_options():
    o = cli.parse(["--bind", "/a", "--cd=/x", "--uid=0", "--gid", "0", "--private-tmp",
                   "--write", "--verbose", "/img", "true"])
    assert (o.binds, o.cd, o.uid, o.gid) == (("/a",), "/x", 0, 0)
    assert o.private_tmp and o.write and o.verbose == 1


def test_cli_vv_bundled():
    assert cli.parse(["-vv", "/img", "true"]).verbose == 2
    assert cli.parse(["-tw", "/img", "true"]).write


@pytest.mark.parametrize("tail", [
    ["ls", "-b", "/x"],
    ["-b", "/x"],
    ["ls", "--no-home", "-w"],
    ["sh", "-c", "echo", "-v"],
    ["--", "-w"],
])
def test_cli_options_after_newroot_belong_to_command(tail):
    o = cli.parse(["/img", *tail])
    assert o.newroot == "/img"
    expected = tuple(tail[1:]) if tail[0] == "--" else tuple(tail)
    assert o.command == expected
    assert o.binds == () and not o.write and not o.no_home and o.verbose == 0


@pytest.mark.parametrize("argv, words", [
    (["--bogus", "/img", "ls"], "--bogus"),
    (["-Z", "/img", "ls"], "-Z"),
    ([], "NEWROOT"),
    (["/img"], "no command"),
    (["/img", "--"], "no command"),
    (["-b"], "-b"),
    (["-u", "abc", "/img", "ls"], "abc"),
    (["-u", "-1", "/img", "ls"], "-1"),
    (["-g", "4294967295", "/img", "ls"], "4294967295"),
    (["-c", "relative", "/img", "ls"], "relative"),
])
def test_cli_usage_errors(argv, words):
    with pytest.raises(UsageError) as e:
        cli.parse(argv)
    assert e.value.code == 64
    assert words in e.value.message
    assert "\n" not in e.value.message


@pytest.mark.parametrize("flag", ["--help", "-?"])
def test_cli_help(flag, capsys):
    assert cli.parse([flag]) is None
    out = capsys.readouterr().out
    assert out.startswith("Usage: ch-run [OPTION...] NEWROOT CMD [ARG...]")
    for opt in ("--bind", "--cd", "--gid", "--join", "--join-ct", "--join-tag", "--no-home",
                "--private-tmp", "--uid", "--verbose", "--write", "--usage", "--version"):
        assert opt in out


def test_cli_usage(capsys):
    assert cli.parse(["--usage"]) is None
    assert capsys.readouterr().out == "Usage: ch-run [OPTION...] NEWROOT CMD [ARG...]\n"


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_cli_version(flag, capsys):
    assert cli.parse([flag]) is None
    assert capsys.readouterr().out == __version__ + "\n"


def test_cli_main_exit_codes(capfd):
    assert cli.main(["--bogus", "/img", "ls"]) == 64
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and "--bogus" in err
    assert cli.main(["--usage"]) == 0
    assert capfd.readouterr().err == ""


def test_refuses_setuid_and_setgid(monkeypatch):
    """Installed setuid or setgid (real and effective IDs differ): refuse before anything.

    A Python script cannot really be setuid, so the IDs are faked here."""
    from chrun import core
    from chrun.errors import ChError
    monkeypatch.setattr(core.os, "getuid", lambda: 1000)
    monkeypatch.setattr(core.os, "geteuid", lambda: 0)
    with pytest.raises(ChError) as x:
        core.refuse_setid()
    assert x.value.code == 31 and "setuid" in x.value.message
    monkeypatch.setattr(core.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(core.os, "getgid", lambda: 1000)
    monkeypatch.setattr(core.os, "getegid", lambda: 0)
    with pytest.raises(ChError):
        core.refuse_setid()
    monkeypatch.setattr(core.os, "getegid", lambda: 1000)
    core.refuse_setid()  # same IDs: fine
