"""--set-env, --unset-env, --env-no-expand: parsing, expansion, order, and real containers.

The rules are Charliecloud 0.31's (its man page, "Environment variables"); the
cases below are ours.  Unit tests first (chrun.environ, both parsers), then
containers run as whoever runs the suite (root and the plain user in CI).
"""

import os
import random
import re
import subprocess

import pytest

from chrun import args, cli, environ
from chrun.errors import ChError, UsageError
from conftest import run

ONE_ERROR = r"ch-run\[\d+\]: error: [^\n]*\n"


# --- file format ----------------------------------------------------------------

@pytest.mark.parametrize("line, name, value", [
    ("A=b", "A", "b"),
    ("A=b=c", "A", "b=c"),
    ("CFLAGS=-O2 -g -march=x", "CFLAGS", "-O2 -g -march=x"),
    ("A='quoted value'", "A", "quoted value"),
    ("A=", "A", ""),
    ("A=''", "A", ""),
    ("A=''''", "A", "''"),
    ("A='", "A", "'"),                  # one quote is not a pair
    ('A="kept"', "A", '"kept"'),         # double quotes are not stripped
    ("A=x # not a comment", "A", "x # not a comment"),
    (r"A=back\tslash", "A", r"back\tslash"),
    (" A=b", " A", "b"),                 # nothing is trimmed
    ("A= b", "A", " b"),
    ("$A=b", "$A", "b"),                 # names are never expanded
    ("A=b\r", "A", "b\r"),
])
def test_assignment(line, name, value):
    assert environ.parse_assignment(line) == (name, value)


@pytest.mark.parametrize("line, why", [
    ("A b", "no '='"), ("=b", "empty variable name"), ("", "no '='"), ("A=b\0c", "NUL"),
])
def test_bad_assignment(line, why):
    with pytest.raises(ValueError, match=why):
        environ.parse_assignment(line)


def test_file_blank_lines_skipped_bad_line_named():
    text = b"A=1\n\nB='2'\nC=3"        # last line without newline still counts
    assert environ.parse_text(text, "/f") == (("A", "1"), ("B", "2"), ("C", "3"))
    with pytest.raises(ChError) as x:
        environ.parse_text(b"A=1\n\nno equals here\n", "/some/file")
    assert x.value.code == 31
    assert x.value.message == "--set-env: /some/file:3: no '=' between name and value"
    with pytest.raises(ChError, match=r"/f:2: empty variable name"):
        environ.parse_text(b"A=1\n=2\n", "/f")
    with pytest.raises(ChError, match=r"/f:1: no '='"):
        environ.parse_text(b" \n", "/f")  # a line of blanks is not empty


def test_file_bytes_round_trip():
    """Values that are not UTF-8 reach the command byte for byte (as os.environ does)."""
    (name, value), = environ.parse_text(b"X=\xff\xfe\n", "/f")
    assert os.fsencode(value) == b"\xff\xfe"


def test_read_file_errors(tmp_path):
    with pytest.raises(ChError) as x:
        environ.read_file(str(tmp_path / "missing"))
    assert x.value.code == 31
    assert x.value.message == f"--set-env: can't read {tmp_path}/missing: No such file or directory"
    with pytest.raises(ChError, match="Is a directory"):
        environ.read_file(str(tmp_path))


# --- expansion --------------------------------------------------------------------

ENV = {"SET": "foo", "SET2": "boo", "EMPTY": ""}


@pytest.mark.parametrize("value, out", [
    ("$SET", "foo"), ("${SET}", "foo"), ("$SET:$SET2", "foo:boo"), ("bar:$SET", "bar:foo"),
    ("bar:$SET:baz", "bar:foo:baz"), (":$SET", ":foo"), ("$SET::", "foo::"),
    ("bar:$", "bar:$"), ("bar$SET", "bar$SET"), ("bar:*", "bar:*"),
    ("a$SET:b", "a$SET:b"), ("$SET/bin", ""), ("${SET", ""), (":", ":"), ("::", "::"), ("", ""),
    ("$UNSET", ""), ("$EMPTY", ""), ("foo:$UNSET", "foo"), ("foo:$UNSET:", "foo:"),
    ("$UNSET:foo", "foo"), (":$UNSET:foo", ":foo"), ("foo:$UNSET:$EMPTY:bar", "foo:bar"),
    (":$UNSET", ""), ("::$UNSET", ":"), ("$UNSET::", ":"), ("${UNSET}:x", "x"),
])
def test_expand(value, out):
    assert environ.expand(value, ENV) == out


def test_apply_order_and_ch_running():
    base = {"KEEP": "k", "A1": "z", "A2": "y", "CH_RUNNING": "Weird Al Yankovic",
            "PATH": "/usr/bin:/bin"}
    f1 = (("B1", "w"), ("B2", "v"))
    f2 = (("C1", "u"),)
    steps = (("unset", "A1"), ("vars", f1), ("unset", "B2"), ("vars", f2),
             ("vars", (("PATH", "/opt/bin:$PATH"), ("DUP", "$B1"), ("CH_RUNNING", "no"))),
             ("unset", "C*"))
    out = environ.apply(base, steps)
    assert out == {"KEEP": "k", "A2": "y", "B1": "w", "PATH": "/opt/bin:/usr/bin:/bin",
                   "DUP": "w", "CH_RUNNING": "Weird Al Yankovic"}
    # later assignments see earlier ones; --env-no-expand keeps values as given
    steps = (("vars", (("X", "1"), ("Y", "$X:2"))),)
    assert environ.apply({}, steps)["Y"] == "1:2"
    assert environ.apply({}, steps, expand_vars=False)["Y"] == "$X:2"
    # everything goes, but CH_RUNNING
    assert environ.apply(base, (("unset", "*"),)) == {"CH_RUNNING": "Weird Al Yankovic"}


def test_apply_image_file_read_when_needed():
    calls = []

    def image():
        calls.append(1)
        return (("PATH", "/opt/conda/bin:$PATH"),)

    out = environ.apply({"PATH": "/bin"}, (("vars", (("A", "1"),)),), image_vars=image)
    assert calls == [] and out["A"] == "1"
    out = environ.apply({"PATH": "/bin"}, (("image",),), image_vars=image)
    assert calls == [1] and out["PATH"] == "/opt/conda/bin:/bin"


@pytest.mark.parametrize("glob, name, hit", [
    ("FOO", "FOO", True), ("FOO", "FOOD", False), ("SLURM*", "SLURM_JOB_ID", True),
    ("chue_@(1|2)", "chue_2", True), ("chue_@(1|2)", "chue_3", False),
    ("!(WANTED_*|ALSO_*)", "OTHER", True), ("!(WANTED_*|ALSO_*)", "WANTED_1", False),
    ("?", "A", True), ("[AB]x", "Bx", True), ("*", "", True),
])
def test_unset_globs_are_fnmatch_extmatch(glob, name, hit):
    assert environ.matches(glob, name) is hit


def test_prepare_reads_host_files_only(tmp_path):
    f = tmp_path / "env"
    f.write_text("F=1\n")
    ops = (("set", None), ("set", str(f)), ("unset", "X*"), ("set", "N='v'"))
    assert environ.prepare(ops) == (("image",), ("vars", (("F", "1"),)), ("unset", "X*"),
                                    ("vars", (("N", "v"),)))
    with pytest.raises(ChError, match="can't read"):
        environ.prepare((("set", str(tmp_path / "nope")),))


# --- the command line -------------------------------------------------------------

def options(argv):
    """Options from both parsers, which must agree."""
    fast = args.scan(argv)
    slow = cli.parse(argv)
    assert fast is not None, argv
    assert args.make_options(**fast) == slow
    return slow


def test_set_env_without_equals_takes_no_argument():
    o = options(["--set-env", "/img", "--", "true"])
    assert o.newroot == "/img" and o.env_ops == (("set", None),)
    o = options(["--set-env=/f", "--set-env=", "--set-env=A=1", "/img", "true"])
    assert o.env_ops == (("set", "/f"), ("set", ""), ("set", "A=1"))


def test_order_kept_across_options():
    argv = ["--unset-env=A", "--set-env=/f1", "--unset-env", "B*", "--env-no-expand",
            "--set-env", "--set-env=X=$Y", "-v", "--unset-env=C", "/img", "--", "env"]
    o = options(argv)
    assert o.env_ops == (("unset", "A"), ("set", "/f1"), ("unset", "B*"), ("set", None),
                         ("set", "X=$Y"), ("unset", "C"))
    assert o.env_expand is False and o.verbose == 1


def test_click_path_keeps_order_too():
    """A line the scanner leaves to click (a value that looks like an option)."""
    argv = ["--set-env=A=1", "--unset-env", "-x", "--join-tag", "-w", "--set-env", "/img", "true"]
    assert args.scan(argv) is None
    o = cli.parse(argv)
    assert o.env_ops == (("set", "A=1"), ("unset", "-x"), ("set", None))
    assert o.join_tag == "-w" and o.newroot == "/img"


@pytest.mark.parametrize("argv, message", [
    (["--unset-env=", "/img", "true"], "--unset-env: GLOB must not be empty"),
    (["--set-env==x", "/img", "true"], "--set-env: '=x': empty variable name"),
])
def test_usage_errors(argv, message):
    for parse in (lambda a: args.make_options(**args.scan(a)), cli.parse):
        with pytest.raises(UsageError) as x:
            parse(argv)
        assert x.value.message == message


TOKENS = ["--set-env", "--set-env=/f", "--set-env=A=$B:c", "--set-env=", "--unset-env",
          "--unset-env=X*", "--unset-env=", "--env-no-expand", "-s", "/st", "--storage=/s",
          "-s/t", "--no-passwd", "-b", "/a", "-c", "/d", "-v", "-wt", "--join-ct=2", "--",
          "/img", "true", "-x", "--set-env=x", "-", "", "--storage", "name"]


def outcome(f, argv):
    try:
        return ("ok", f(argv))
    except ChError as x:
        return ("error", x.code, x.message)


def test_random_command_lines_agree():
    rng = random.Random(1414)
    checked = 0
    for _ in range(3000):
        argv = [rng.choice(TOKENS) for _ in range(rng.randint(0, 9))]
        values = args.scan(argv)
        if values is None:
            continue
        assert outcome(lambda a: args.make_options(**values), argv) \
            == outcome(cli.parse, argv), argv
        checked += 1
    assert checked > 500


def test_ch_mpirun_parsers_agree_too():
    """ch-mpirun passes these options through; its scanner and click command agree."""
    from chrun_launch import mpirun
    command = mpirun.click_command()
    rng = random.Random(1415)
    checked = 0
    for _ in range(1500):
        argv = [rng.choice(TOKENS + ["--mode", "env"]) for _ in range(rng.randint(0, 9))]
        values = args.scan(argv, args.RUN_OPTIONS + (mpirun.MODE_OPTION,))
        if values is None:
            continue
        assert outcome(lambda a: mpirun._make(**values), argv) \
            == outcome(lambda a: cli.parse(a, "ch-mpirun", command), argv), argv
        checked += 1
    assert checked > 300
    _, o = mpirun.parse(["--mode=env", "--set-env", "--unset-env=X", "/img", "--", "true"])
    assert o.env_ops == (("set", None), ("unset", "X"))


def test_help_lists_the_options():
    text = cli.HELP
    for o in ("--set-env", "--set-env=FILE", "--set-env=NAME=VALUE", "--unset-env=GLOB",
              "--env-no-expand", "-s, --storage=DIR", "--no-passwd", "--feature=FEAT"):
        assert o in text, o
    for o in args.RUN_OPTIONS:
        assert o.long in text, o.long


# --- real containers ----------------------------------------------------------------

def clean_env(**extra):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"),
           "USER": os.environ.get("USER", "nobody"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


@pytest.fixture
def docker_image(writable_image):
    """A Docker-style image: its PATH (in /ch/environment) has a directory only it has."""
    app = writable_image / "opt" / "app" / "bin"
    app.mkdir(parents=True)
    hello = app / "hello-app"
    hello.write_text('#!/bin/sh\necho "hello from the image, APP_HOME=$APP_HOME"\n')
    hello.chmod(0o755)
    (writable_image / "ch").mkdir()
    (writable_image / "ch" / "environment").write_text(
        "APP_HOME=/opt/app\n"
        "LD_LIBRARY_PATH=/opt/app/lib\n"
        "PATH=/opt/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "GREETING='hi there'\n")
    return writable_image


@pytest.mark.container
def test_image_environment_finds_the_images_program(ch_run, docker_image):
    r = run([ch_run, "--set-env", docker_image, "--", "hello-app"], env=clean_env())
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "hello from the image, APP_HOME=/opt/app\n"
    # without --set-env the seed's default holds: the image's environment is not applied
    r = run([ch_run, docker_image, "--", "hello-app"], env=clean_env())
    assert r.returncode == 49 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr


@pytest.mark.container
def test_image_environment_then_own_changes_in_order(ch_run, docker_image, tmp_path):
    hostfile = tmp_path / "host.env"
    hostfile.write_text("FROM_FILE=$GREETING:x\nLD_LIBRARY_PATH=$LD_LIBRARY_PATH:/more\n")
    r = run([ch_run, "--set-env", "--set-env=PATH=/first:$PATH", f"--set-env={hostfile}",
             "--unset-env=APP_*", "--set-env=EARLY=$HOST_ONE", "--unset-env=HOST_*",
             "--set-env=LATE=$HOST_TWO",
             docker_image, "--", "env"],
            env=clean_env(HOST_ONE="1", HOST_TWO="2", TMPDIR="/nowhere"))
    assert (r.returncode, r.stderr) == (0, "")
    got = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert got["PATH"].startswith("/first:/opt/app/bin:")
    assert got["FROM_FILE"] == "hi there:x"
    assert got["LD_LIBRARY_PATH"] == "/opt/app/lib:/more"
    assert got["EARLY"] == "1"              # expanded before HOST_* went: arguments in order
    assert got["LATE"] == ""                # ... and after
    assert got["GREETING"] == "hi there"
    assert got["CH_RUNNING"] == "Weird Al Yankovic"
    for gone in ("APP_HOME", "HOST_ONE", "HOST_TWO", "TMPDIR"):
        assert gone not in got


@pytest.mark.container
def test_env_no_expand_and_unset_everything(ch_run, tiny_image):
    r = run([ch_run, "--set-env=A=$HOME:$PATH", "--env-no-expand", tiny_image, "--",
             "sh", "-c", 'echo "$A"'], env=clean_env())
    assert (r.returncode, r.stdout, r.stderr) == (0, "$HOME:$PATH\n", "")
    r = run([ch_run, "--unset-env=*", tiny_image, "--", "env"], env=clean_env())
    assert (r.returncode, r.stdout, r.stderr) == (0, "CH_RUNNING=Weird Al Yankovic\n", "")
    r = run([ch_run, "--unset-env=!(KEEP_*)", tiny_image, "--", "env"],
            env=clean_env(KEEP_ME="1", DROP_ME="2"))
    assert sorted(r.stdout.splitlines()) == ["CH_RUNNING=Weird Al Yankovic", "KEEP_ME=1"]


@pytest.mark.container
def test_verbose_says_what_is_set(ch_run, tiny_image):
    r = run([ch_run, "-v", "--set-env=foo=$x:app", "--env-no-expand", tiny_image, "--", "true"],
            env=clean_env())
    assert r.returncode == 0
    assert re.search(r"^ch-run\[\d+\]: environment: foo=\$x:app$", r.stderr, re.M), r.stderr


@pytest.mark.container
@pytest.mark.parametrize("content, where", [
    ("GOOD=1\nthis line has no equals\n", ":2: no '=' between name and value"),
    ("\n\n=value\n", ":3: empty variable name"),
])
def test_bad_host_file_is_one_line_exit_31(ch_run, tiny_image, tmp_path, content, where):
    f = tmp_path / "bad.env"
    f.write_text(content)
    r = run([ch_run, f"--set-env={f}", tiny_image, "--", "true"], env=clean_env())
    assert r.returncode == 31 and r.stdout == ""
    assert re.fullmatch(ONE_ERROR, r.stderr) and f"{f}{where}" in r.stderr, r.stderr


@pytest.mark.container
def test_bad_image_file_is_one_line_exit_31(ch_run, writable_image):
    r = run([ch_run, "--set-env", writable_image, "--", "true"], env=clean_env())
    assert r.returncode == 31 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr
    assert "can't read the image's /ch/environment: No such file or directory" in r.stderr
    (writable_image / "ch").mkdir()
    (writable_image / "ch" / "environment").write_text("A=1\nB 2\n")
    r = run([ch_run, "--set-env", writable_image, "--", "true"], env=clean_env())
    assert r.returncode == 31 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr
    assert "/ch/environment:2: no '='" in r.stderr


@pytest.mark.container
@pytest.mark.parametrize("argv, code, text", [
    (["--set-env=/nonexistent/env.txt"], 31, "can't read /nonexistent/env.txt"),
    (["--set-env=$PATH:foo"], 31, "can't read $PATH:foo"),      # no '=': a file name
    (["--unset-env="], 64, "GLOB must not be empty"),
    (["--set-env==v"], 64, "empty variable name"),
])
def test_errors_one_line(ch_run, tiny_image, argv, code, text):
    r = run([ch_run, *argv, tiny_image, "--", "true"], env=clean_env())
    assert r.returncode == code and r.stdout == ""
    assert re.fullmatch(ONE_ERROR, r.stderr) and text in r.stderr, r.stderr


@pytest.mark.container
def test_joined_peers_each_apply_their_own(ch_run, docker_image):
    """env is per peer: the creator and the joiner set different values in one container."""
    tag = f"setenv-{os.getpid()}"
    peers = [subprocess.Popen(
        [str(ch_run), "--join-ct=2", f"--join-tag={tag}", "--set-env", f"--set-env=WHO={who}",
         str(docker_image), "--", "sh", "-c",
         'echo "$WHO $APP_HOME $(readlink /proc/self/ns/mnt)"; sleep 1'],
        env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for who in ("one", "two")]
    outs = [p.communicate(timeout=60) for p in peers]
    assert [p.returncode for p in peers] == [0, 0], outs
    lines = [o[0].split() for o in outs]
    assert [line[:2] for line in lines] == [["one", "/opt/app"], ["two", "/opt/app"]]
    assert lines[0][2] == lines[1][2]  # one mount namespace
