"""Integration tests of ch-run: real containers from the busybox image.

Run both as root and as a plain user (ci/test.sh does both).  Every test
checks real values seen inside the container against the host's.
"""

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest

import chrun

pytestmark = pytest.mark.container

ERROR_LINE = re.compile(r"^ch-run\[(\d+)\]: error: .+$")
ROOT_MOUNT = """awk '$5 == "/"' /proc/self/mountinfo"""
WARNING_LINE = re.compile(r"^ch-run\[(\d+)\]: warning: .+$")

Result = namedtuple("Result", "pid rc out err")

UID, GID = os.getuid(), os.getgid()
USER = pwd.getpwuid(UID).pw_name
try:
    GROUP = grp.getgrgid(GID).gr_name
except KeyError:   # pragma: no cover - host group without a name
    GROUP = USER


def host_user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"u{uid}"


def host_group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"g{gid}"


def ch(ch_run, *args, env=None, cwd="/", timeout=60):
    """Run ch-run ARGS; return (pid, returncode, stdout, stderr)."""
    p = subprocess.Popen([os.fspath(ch_run), *map(os.fspath, args)], cwd=cwd, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    return Result(p.pid, p.returncode, out, err)


def ok(ch_run, *args, **kw):
    """Run ch-run ARGS, assert it succeeded silently, return its stdout."""
    r = ch(ch_run, *args, **kw)
    assert r.rc == 0 and r.err == "", r
    return r.out


def sh(ch_run, image, script, *opts, **kw):
    """stdout of ``sh -c SCRIPT`` in a container (must succeed without messages)."""
    return ok(ch_run, *opts, image, "--", "sh", "-c", script, **kw)


def env_with(**changes):
    env = dict(os.environ)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = os.fspath(v)
    return env


def mount_points():
    """Mount points of the host's mounts (as this process sees them), with their sources."""
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:5]) for line in f)


@pytest.fixture(autouse=True)
def no_mounts_left(tmp_path_factory, tiny_image):
    """Every test leaves the host's mounts as they were.

    Only mount points where ch-run could leave something are compared, so
    that other jobs on the machine (image builds, Slurm) do not disturb it.
    """
    watched = (str(tmp_path_factory.getbasetemp()), str(tiny_image), "/tmp", "/dev/shm",
               "/home", "/root", "/newroot", "/oldroot", "/files", "/etc")

    def relevant(points):
        out = []
        for entry in points:
            root, point = entry.split(" ", 1)
            if point == "/" or any(point == w or point.startswith(w + "/") for w in watched):
                out.append(entry)
        return out

    before = relevant(mount_points())
    yield
    assert relevant(mount_points()) == before


@pytest.fixture
def host_tmp_dir():
    """A fresh directory in the host's /tmp (removed afterwards)."""
    d = Path(tempfile.mkdtemp(prefix="test-run-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- exec, exit status, signals ------------------------------------------------------

def test_exec_not_fork(ch_run, tiny_image):
    r = ch(ch_run, tiny_image, "--", "sh", "-c", 'echo $$ $PPID')
    assert r.rc == 0 and r.err == ""
    pid, ppid = map(int, r.out.split())
    assert pid == r.pid               # the command is the ch-run process
    assert ppid == os.getpid()        # nothing between us and it


def test_syntax_without_dashes(ch_run, tiny_image):
    assert ok(ch_run, tiny_image, "echo", "a", "-v", "--", "b") == "a -v -- b\n"
    assert ok(ch_run, tiny_image, "--", "echo", "-n", "x") == "x"


@pytest.mark.parametrize("status", [0, 1, 7, 31, 49, 64, 255])
def test_exit_status_passthrough(ch_run, tiny_image, status):
    r = ch(ch_run, tiny_image, "--", "sh", "-c", f"exit {status}")
    assert (r.rc, r.err) == (status, "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGKILL,
                                 signal.SIGHUP, signal.SIGUSR1])
def test_killed_by_signal(ch_run, tiny_image, sig):
    r = ch(ch_run, tiny_image, "--", "sh", "-c", f"kill -{sig.name[3:]} $$; sleep 30")
    assert r.rc == -sig, r


def test_signal_from_outside_reaches_command(ch_run, tiny_image):
    p = subprocess.Popen([ch_run, tiny_image, "--", "sh", "-c", "echo ready; exec sleep 60"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == -signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def test_sigpipe_default_inside(ch_run, tiny_image):
    # Python ignores SIGPIPE; the command must get it back at the default.
    status = sh(ch_run, tiny_image, "grep SigIgn /proc/self/status").split()[1]
    assert int(status, 16) & (1 << (signal.SIGPIPE - 1)) == 0
    assert int(status, 16) & (1 << (signal.SIGXFSZ - 1)) == 0


# --- user namespace: maps, setgroups, no new privileges -------------------------------

def test_default_maps(ch_run, tiny_image):
    out = sh(ch_run, tiny_image, "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g")
    lines = out.splitlines()
    assert lines[0].split() == [str(UID), str(UID), "1"]
    assert lines[1].split() == [str(GID), str(GID), "1"]
    assert lines[2:] == [str(UID), str(GID)]


def test_uid_gid_zero(ch_run, tiny_image):
    out = sh(ch_run, tiny_image, "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; "
             "id -un; id -gn", "-u", "0", "-g", "0")
    lines = out.splitlines()
    assert lines[0].split() == ["0", str(UID), "1"]
    assert lines[1].split() == ["0", str(GID), "1"]
    assert lines[2:] == ["0", "0", "root", "root"]


def test_uid_gid_other(ch_run, tiny_image, tmp_path):
    out = sh(ch_run, tiny_image, "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; "
             "id -un; id -gn; touch /mnt/0/made; stat -c %u:%g /mnt/0/made",
             "--uid=1234", "--gid=5678", "-b", tmp_path)
    lines = out.splitlines()
    assert lines[0].split() == ["1234", str(UID), "1"]
    assert lines[1].split() == ["5678", str(GID), "1"]
    # Named as the host names them; IDs unknown to it get neutral names (test_compat.py).
    assert lines[2:6] == ["1234", "5678", host_user_name(1234), host_group_name(5678)]
    assert lines[6] == "1234:5678"
    st = (tmp_path / "made").stat()
    assert (st.st_uid, st.st_gid) == (UID, GID)   # the host sees its own IDs


def test_only_uid(ch_run, tiny_image):
    out = sh(ch_run, tiny_image, "id -u; id -g", "-u", "4321")
    assert out.split() == ["4321", str(GID)]


def test_setgroups_denied(ch_run, tiny_image):
    assert sh(ch_run, tiny_image, "cat /proc/self/setgroups") == "deny\n"
    # start-stop-daemon -c calls initgroups(3), i.e. setgroups(2).
    for opts in ((), ("-u", "0", "-g", "0")):
        r = ch(ch_run, *opts, tiny_image, "--", "sh", "-c",
               "start-stop-daemon -S -c $(id -un):$(id -gn) -x /bin/true")
        assert r.rc == 1
        assert "can't set groups: Operation not permitted" in r.err


def test_no_supplementary_groups(ch_run, tiny_image):
    groups = sh(ch_run, tiny_image, "id -G").split()
    assert groups == [str(GID)]


def test_no_new_privs(ch_run, tiny_image):
    out = sh(ch_run, tiny_image, "grep NoNewPrivs /proc/self/status")
    assert out.split() == ["NoNewPrivs:", "1"]


def test_other_namespaces_shared(ch_run, tiny_image):
    """Only user and mount namespaces are new."""
    out = sh(ch_run, tiny_image, "for n in user mnt pid net ipc uts; do "
             "stat -L -c %i /proc/self/ns/$n; done")
    inside = dict(zip(["user", "mnt", "pid", "net", "ipc", "uts"], map(int, out.split())))
    host = {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in inside}
    assert inside["user"] != host["user"] and inside["mnt"] != host["mnt"]
    for n in ("pid", "net", "ipc", "uts"):
        assert inside[n] == host[n], n


# --- host /dev, /proc, /sys, passwd, group, hosts, resolv.conf ------------------------

def test_host_dev_proc_sys(ch_run, tiny_image):
    out = sh(ch_run, tiny_image, "stat -c %t:%T /dev/null; cat /proc/sys/kernel/hostname; "
             "cat /sys/devices/system/cpu/online; test -d /proc/$PPID && echo ppid-visible")
    with open("/sys/devices/system/cpu/online") as f:
        online = f.read().strip()
    assert out.splitlines() == ["1:3", socket.gethostname(), online, "ppid-visible"]


def test_passwd_and_group_know_user(ch_run, tiny_image):
    out = sh(ch_run, tiny_image, 'id -un; id -gn; grep "^$(id -un):" /etc/passwd; '
             'grep "^$(id -gn):" /etc/group; grep -c "" /etc/passwd')
    lines = out.splitlines()
    assert lines[0] == USER and lines[1] == GROUP
    entry = lines[2].split(":")
    assert entry[:4] == [USER, "x", str(UID), str(GID)]
    assert entry[5] == f"/home/{USER}"   # where HOME points
    assert lines[3].split(":")[:3] == [GROUP, "x", str(GID)]
    # The image's own passwd (2 lines) is not what we see for a plain user.
    if UID != 0:
        assert int(lines[4]) == 3


def test_generated_passwd_does_not_touch_image(ch_run, writable_image):
    image_passwd = (writable_image / "etc/passwd").read_text()
    out = sh(ch_run, writable_image, "echo extra:x:1:1::/:/bin/sh >> /etc/passwd 2>/dev/null; "
             "grep -c extra: /etc/passwd", "-w")
    assert out in ("0\n", "1\n")
    assert (writable_image / "etc/passwd").read_text() == image_passwd
    assert "extra" not in sh(ch_run, writable_image, "cat /etc/passwd", "-w")


def test_etc_hosts_and_resolv_conf_from_host(ch_run, tiny_image):
    image_hosts = (tiny_image / "etc/hosts").read_text()
    host_hosts = Path("/etc/hosts").read_text()
    assert image_hosts != host_hosts, "test needs the image's /etc/hosts to differ"
    assert sh(ch_run, tiny_image, "cat /etc/hosts") == host_hosts
    assert sh(ch_run, tiny_image, "cat /etc/resolv.conf") == Path("/etc/resolv.conf").read_text()


@pytest.mark.parametrize("name", ["hosts", "resolv.conf"])
def test_image_without_etc_file_warns(ch_run, writable_image, name):
    (writable_image / "etc" / name).unlink()
    r = ch(ch_run, writable_image, "--", "sh", "-c", f"test -e /etc/{name}; echo $?")
    assert r.rc == 0 and r.out == "1\n"
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert WARNING_LINE.match(lines[0]) and f"/etc/{name}" in lines[0]
    assert int(WARNING_LINE.match(lines[0]).group(1)) == r.pid


def test_etc_file_absolute_symlink_in_image(ch_run, writable_image):
    """An image whose /etc/resolv.conf links (absolutely) into the image, as with resolved."""
    stub = writable_image / "run/systemd/resolve/stub-resolv.conf"
    stub.parent.mkdir(parents=True)
    stub.write_text("nameserver 127.0.0.53\n")
    (writable_image / "etc/resolv.conf").unlink()
    (writable_image / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    (writable_image / "etc/hosts").unlink()
    (writable_image / "etc/hosts").symlink_to("/../../etc/../run/hosts")
    (writable_image / "run/hosts").write_text("")
    out = sh(ch_run, writable_image, "cat /etc/resolv.conf; echo --; cat /etc/hosts")
    assert out == Path("/etc/resolv.conf").read_text() + "--\n" + Path("/etc/hosts").read_text()
    assert stub.read_text() == "nameserver 127.0.0.53\n"   # image unchanged
    # A link to nowhere in the image: run anyway and say why.
    stub.unlink()
    r = ch(ch_run, writable_image, "--", "true")
    assert r.rc == 0
    lines = r.err.splitlines()
    assert len(lines) == 1 and WARNING_LINE.match(lines[0]) and "/etc/resolv.conf" in lines[0]


# --- environment -------------------------------------------------------------------------

def test_environment(ch_run, tiny_image):
    env = env_with(TMPDIR="/nonexistent-tmpdir", PATH="/usr/local/nothing",
                   CHRUN_TEST_VAR="kept value", CH_RUNNING=None)
    out = sh(ch_run, tiny_image, 'echo "$CH_RUNNING"; echo "${TMPDIR-unset}"; echo "$PATH"; '
             'echo "$CHRUN_TEST_VAR"', env=env)
    assert out.splitlines() == ["Weird Al Yankovic", "unset", "/usr/local/nothing:/bin",
                                "kept value"]


def test_path_with_bin_unchanged(ch_run, tiny_image):
    env = env_with(PATH="/bin:/usr/bin:/sbin")
    assert sh(ch_run, tiny_image, 'echo "$PATH"', env=env) == "/bin:/usr/bin:/sbin\n"


# --- read-only image, -w -------------------------------------------------------------------

def test_image_read_only(ch_run, writable_image):
    # writable_image belongs to the invoking user: only the mount stops the write.
    r = ch(ch_run, writable_image, "--", "sh", "-c", "touch /newfile")
    assert r.rc == 1 and "Read-only file system" in r.err
    assert not (writable_image / "newfile").exists()
    out = sh(ch_run, writable_image, ROOT_MOUNT)
    assert "ro" in out.split()[5].split(",")


def test_image_read_only_shared(ch_run, tiny_image):
    r = ch(ch_run, tiny_image, "--", "sh", "-c", "mkdir /newdir")
    assert r.rc == 1 and "Read-only file system" in r.err
    assert not (tiny_image / "newdir").exists()


def test_write(ch_run, writable_image):
    out = sh(ch_run, writable_image, "echo hello > /newfile && cat /newfile; " +
             ROOT_MOUNT, "-w")
    lines = out.splitlines()
    assert lines[0] == "hello"
    assert "rw" in lines[1].split()[5].split(",")
    assert (writable_image / "newfile").read_text() == "hello\n"


def test_read_only_keeps_locked_flags(ch_run, tiny_image, tmp_path):
    """An image on a nosuid,nodev,noatime mount: the read-only remount keeps them."""
    if not shutil.which("unshare"):
        pytest.skip("unshare(1) not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = ('mount -t tmpfs -o nosuid,nodev,noatime,mode=755 tmpfs "$1" && '
              'cp -r "$2" "$1/img" && '
              '"$3" --no-home "$1/img" -- sh -c "$4" && '
              '"$3" -w --no-home "$1/img" -- sh -c "touch /x && echo wrote"')
    inner = ROOT_MOUNT + "; touch /x 2>/dev/null; echo touch=$?"
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", mnt, tiny_image, ch_run,
                        inner],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stderr == "", r
    root_line, touch, wrote = r.stdout.splitlines()
    flags = root_line.split()[5].split(",")
    assert {"ro", "nosuid", "nodev", "noatime"} <= set(flags)
    assert touch == "touch=1"
    assert wrote == "wrote"


# --- /tmp ----------------------------------------------------------------------------------

def test_tmp_shared(ch_run, tiny_image, host_tmp_dir):
    (host_tmp_dir / "from-host").write_text("host\n")
    out = sh(ch_run, tiny_image, f"cat {host_tmp_dir}/from-host; "
             f"echo inside > {host_tmp_dir}/from-container")
    assert out == "host\n"
    assert (host_tmp_dir / "from-container").read_text() == "inside\n"


def test_private_tmp(ch_run, tiny_image, host_tmp_dir):
    (host_tmp_dir / "from-host").write_text("host\n")
    for opt in ("-t", "--private-tmp"):
        out = sh(ch_run, tiny_image, f"test -e {host_tmp_dir} && echo seen; ls -A /tmp | wc -l; "
                 "echo x > /tmp/private-file && cat /tmp/private-file; stat -c %a /tmp", opt)
        assert out.split() == ["0", "x", "1777"]
    assert sorted(p.name for p in host_tmp_dir.iterdir()) == ["from-host"]
    assert not Path("/tmp/private-file").exists()


# --- home ----------------------------------------------------------------------------------

def test_home_bound(ch_run, tiny_image, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "marker").write_text("in home\n")
    out = sh(ch_run, tiny_image, 'echo "$HOME"; cat "$HOME/marker"; ls /home; '
             'echo written > "$HOME/out"', env=env_with(HOME=home))
    assert out.splitlines() == [f"/home/{USER}", "in home", USER]
    assert (home / "out").read_text() == "written\n"
    assert sorted(p.name for p in home.iterdir()) == ["marker", "out"]


def test_home_bound_writable_under_read_only_image(ch_run, tiny_image, tmp_path):
    out = sh(ch_run, tiny_image, 'touch "$HOME/f" && echo ok', env=env_with(HOME=tmp_path))
    assert out == "ok\n" and (tmp_path / "f").exists()
    assert not (tiny_image / "home" / USER).exists()


def test_no_home(ch_run, tiny_image, tmp_path):
    out = sh(ch_run, tiny_image, 'echo "$HOME"; ls -A /home | wc -l', "--no-home",
             env=env_with(HOME=tmp_path))
    assert out.splitlines() == [str(tmp_path), "0"]


def test_missing_home_warns(ch_run, tiny_image, tmp_path):
    gone = tmp_path / "no-such-home"
    r = ch(ch_run, tiny_image, "--", "sh", "-c", 'echo "$HOME"; ls -A "$HOME" | wc -l',
           env=env_with(HOME=gone))
    assert r.rc == 0 and r.out.split() == [f"/home/{USER}", "0"]
    lines = r.err.splitlines()
    assert len(lines) == 1 and WARNING_LINE.match(lines[0]) and str(gone) in lines[0], r.err
    assert not gone.exists()
    # --no-home: nothing to say.
    assert ok(ch_run, "--no-home", tiny_image, "--", "true", env=env_with(HOME=gone)) == ""


# --- binds ---------------------------------------------------------------------------------

def test_bind_default_destinations(ch_run, tiny_image, tmp_path):
    srcs = []
    for name in ("a", "b", "c"):
        d = tmp_path / name
        d.mkdir()
        (d / "name").write_text(name + "\n")
        srcs.append(d)
    out = sh(ch_run, tiny_image, "cat /mnt/0/name /mnt/2/name /mnt/7/name; ls -A /mnt/1 | wc -l",
             "-b", srcs[0], "-b", f"{srcs[1]}:/mnt/7", "--bind", srcs[2])
    # -b by position: the second option takes /mnt/7, so /mnt/1 stays empty.
    assert out.split() == ["a", "c", "b", "0"]


def test_bind_explicit_destination(ch_run, tiny_image, tmp_path):
    (tmp_path / "f").write_text("data\n")
    out = sh(ch_run, tiny_image, "cat /usr/local/f; echo new > /usr/local/g; ls /usr/local",
             f"--bind={tmp_path}:/usr/local")
    assert out.split() == ["data", "f", "g"]
    assert (tmp_path / "g").read_text() == "new\n"


def test_bind_file(ch_run, tiny_image, tmp_path):
    f = tmp_path / "conf"
    f.write_text("nameserver 192.0.2.1\n")
    out = sh(ch_run, tiny_image, "cat /etc/resolv.conf", "-b", f"{f}:/etc/resolv.conf")
    assert out == "nameserver 192.0.2.1\n"


def test_bind_relative_source(ch_run, tiny_image, tmp_path):
    (tmp_path / "rel").mkdir()
    (tmp_path / "rel" / "x").write_text("rel\n")
    out = sh(ch_run, tiny_image, "cat /mnt/0/x", "-b", "rel", cwd=tmp_path)
    assert out == "rel\n"


def test_bind_symlink_outside_image_refused(ch_run, writable_image, tmp_path, host_tmp_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret").write_text("s\n")
    # Links resolve as in the container (test_compat.py): only '..' can leave the image.
    (writable_image / "mnt" / "evil2").symlink_to("../../../../../../../" + str(host_tmp_dir))
    for dst in ("/mnt/evil2", f"/../../..{host_tmp_dir}"):
        r = ch(ch_run, "-b", f"{src}:{dst}", writable_image, "--", "true")
        assert r.rc == 31, r
        assert_one_error(r, dst)
        assert list(host_tmp_dir.iterdir()) == []


def test_bind_relative_symlink_inside_image_followed(ch_run, writable_image, tmp_path):
    (tmp_path / "x").write_text("ok\n")
    (writable_image / "mnt" / "link").symlink_to("3")
    assert sh(ch_run, writable_image, "cat /mnt/3/x", "-b", f"{tmp_path}:/mnt/link") == "ok\n"
    assert not (writable_image / "mnt" / "3" / "x").exists()


# --- working directory -----------------------------------------------------------------------

def test_cd(ch_run, tiny_image):
    assert sh(ch_run, tiny_image, "pwd", "-c", "/usr/local/bin") == "/usr/local/bin\n"
    assert sh(ch_run, tiny_image, "pwd", "--cd=/mnt") == "/mnt\n"


def test_cwd_kept_when_in_container(ch_run, tiny_image, host_tmp_dir):
    assert sh(ch_run, tiny_image, "pwd", cwd=host_tmp_dir) == f"{host_tmp_dir}\n"


def test_cwd_not_in_container_falls_back_to_root(ch_run, tiny_image, tmp_path):
    assert sh(ch_run, tiny_image, "pwd", cwd=tmp_path) == "/\n"
    r = ch(ch_run, "-v", tiny_image, "--", "pwd", cwd=tmp_path)
    assert r.rc == 0 and r.out == "/\n"
    assert str(tmp_path) in r.err


# --- informational options -------------------------------------------------------------------

def test_verbose(ch_run, tiny_image):
    quiet = ch(ch_run, tiny_image, "--", "true")
    v = ch(ch_run, "-v", tiny_image, "--", "true")
    vv = ch(ch_run, "-v", "--verbose", tiny_image, "--", "true")
    assert quiet.err == ""
    for r in (v, vv):
        assert r.rc == 0 and r.out == ""
        lines = r.err.splitlines()
        assert lines and all(line.startswith(f"ch-run[{r.pid}]: ") for line in lines)
        assert "executing: true" in r.err
    assert len(vv.err.splitlines()) > len(v.err.splitlines())


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(ch_run, flag):
    r = ch(ch_run, flag)
    assert (r.rc, r.out, r.err) == (0, chrun.__version__ + "\n", "")


@pytest.mark.parametrize("flag", ["--help", "-?"])
def test_help(ch_run, flag):
    r = ch(ch_run, flag)
    assert r.rc == 0 and r.err == ""
    assert r.out.startswith("Usage: ch-run [OPTION...] NEWROOT CMD [ARG...]\n")
    assert "--private-tmp" in r.out and "--no-home" in r.out


def test_usage(ch_run):
    r = ch(ch_run, "--usage")
    assert (r.rc, r.out, r.err) == (0, "Usage: ch-run [OPTION...] NEWROOT CMD [ARG...]\n", "")


# --- bad input ---------------------------------------------------------------------------------

def assert_one_error(r, named):
    lines = r.err.splitlines()
    assert len(lines) == 1 and r.err.endswith("\n"), r.err
    m = ERROR_LINE.match(lines[0])
    assert m, lines[0]
    assert int(m.group(1)) == r.pid
    assert named in lines[0], (named, lines[0])
    assert r.out == ""


@pytest.fixture
def bad(tmp_path, writable_image):
    """Paths for the bad-input table."""
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    shutil.rmtree(writable_image / "proc")
    return {"missing": tmp_path / "missing", "file": tmp_path / "file",
            "dir": tmp_path / "dir", "noproc": writable_image}


BAD = [
    # (id, args with {placeholders}, exit code, named)
    ("image-missing", ["{missing}", "true"], 31, "{missing}"),
    ("image-file", ["{file}", "true"], 31, "{file}"),
    ("image-no-proc", ["{noproc}", "true"], 31, "/proc"),
    ("bind-src-missing", ["-b", "{missing}", "{img}", "true"], 31, "{missing}"),
    ("bind-dst-missing", ["-b", "{dir}:/mnt/nope", "{img}", "true"], 31, "/mnt/nope"),
    ("bind-default-dst-missing", ["-b", "{dir}"] * 11 + ["{img}", "true"], 31, "/mnt/10"),
    ("bind-dir-on-file", ["-b", "{dir}:/etc/hosts", "{img}", "true"], 31, "/etc/hosts"),
    ("bind-file-on-dir", ["-b", "{file}:/mnt/0", "{img}", "true"], 31, "/mnt/0"),
    ("bind-dst-relative", ["-b", "{dir}:mnt/0", "{img}", "true"], 64, "mnt/0"),
    ("bind-empty", ["-b", "", "{img}", "true"], 64, "--bind"),
    ("bind-no-src", ["-b", ":/mnt/0", "{img}", "true"], 64, ":/mnt/0"),
    ("uid-alpha", ["-u", "abc", "{img}", "true"], 64, "abc"),
    ("uid-negative", ["-u", "-1", "{img}", "true"], 64, "-1"),
    ("uid-too-big", ["--uid=4294967295", "{img}", "true"], 64, "4294967295"),
    ("gid-alpha", ["-g", "x1", "{img}", "true"], 64, "x1"),
    ("gid-huge", ["--gid", "99999999999999999999", "{img}", "true"], 64, "99999999999999999999"),
    ("unknown-option", ["--frobnicate", "{img}", "true"], 64, "--frobnicate"),
    ("unknown-short", ["-Z", "{img}", "true"], 64, "-Z"),
    ("option-missing-arg", ["-b"], 64, "-b"),
    ("no-args", [], 64, "NEWROOT"),
    ("no-command", ["{img}"], 64, "command"),
    ("no-command-dashes", ["{img}", "--"], 64, "command"),
    ("cd-relative", ["-c", "tmp", "{img}", "true"], 64, "tmp"),
    ("cd-missing", ["-c", "/nonexistent-dir", "{img}", "true"], 31, "/nonexistent-dir"),
    ("cd-file", ["-c", "/etc/passwd", "{img}", "true"], 31, "/etc/passwd"),
    ("command-missing", ["{img}", "--", "no-such-command"], 49, "no-such-command"),
    ("command-path-missing", ["{img}", "/bin/no-such"], 49, "/bin/no-such"),
    ("command-not-executable", ["{img}", "/etc/passwd"], 49, "/etc/passwd"),  # ours: 0644
    ("command-directory", ["{img}", "/tmp"], 49, "/tmp"),
]


@pytest.mark.parametrize("args, code, named", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(ch_run, tiny_image, bad, args, code, named):
    fill = lambda s: s.format(img=tiny_image, **bad)   # noqa: E731
    r = ch(ch_run, *map(fill, args))
    assert r.rc == code, r
    assert_one_error(r, fill(named))


def test_bad_input_leaves_image_alone(ch_run, writable_image, tmp_path):
    before = sorted(str(p.relative_to(writable_image)) for p in writable_image.rglob("*"))
    for args in (["-b", tmp_path / "missing"], ["-b", f"{tmp_path}:/mnt/nope"],
                 ["-c", "/nonexistent"]):
        r = ch(ch_run, "-w", *args, writable_image, "--", "true")
        assert r.rc == 31
    r = ch(ch_run, "-w", writable_image, "--", "/no/such")
    assert r.rc == 49
    after = sorted(str(p.relative_to(writable_image)) for p in writable_image.rglob("*"))
    assert after == before
