"""Privilege-boundary tests of ch-run (issue #7): real containers from the busybox image.

Run both as root and as the plain user chrun-test.  Checks that need a plain
user run ch-run through ``runuser -u chrun-test`` when the tests run as root.

Deliberately NOT tested here:
  * setuid refusal (getuid() != geteuid()): needs a setuid ch-run, impossible
    for a Python script; tests/test_plan.py checks the refusal with faked IDs.
  * writes to host sysctls as root: container root run by host root IS host
    root (the UTS namespace is shared), so such a write would change the host.
    Write probes below only open files (``: >> f``) and only assert failure
    for a plain user.
"""

import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import run

pytestmark = pytest.mark.container

ERROR_LINE = re.compile(r"^ch-run\[\d+\]: error: .+$")
PLAIN = "chrun-test"
AS_ROOT = os.geteuid() == 0
UNMAPPED = "12345"
ID_OPTS = [(), ("-u", "0", "-g", "0"), ("--uid=1234", "--gid=5678")]
ID_IDS = ["default", "root-inside", "other-inside"]


@pytest.fixture(scope="session")
def as_plain(ch_run):
    """Command prefix that runs ch-run as a plain (non-root) user."""
    if not AS_ROOT:
        return []
    try:
        pwd.getpwnam(PLAIN)
    except KeyError:
        pytest.skip(f"running as root and user {PLAIN} does not exist")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and runuser is missing")
    prefix = ["runuser", "-u", PLAIN, "--"]
    r = run([*prefix, ch_run, "--version"])
    if r.returncode != 0:
        pytest.skip(f"{PLAIN} can't run {ch_run}: {r.stderr.strip()}")
    return prefix


@pytest.fixture
def shared_dir():
    """A host directory outside /tmp that other users may enter (removed after)."""
    d = Path(tempfile.mkdtemp(prefix="hard-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def assert_one_error(r, named):
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr.endswith("\n"), r.stderr
    assert ERROR_LINE.match(lines[0]), lines[0]
    assert named in lines[0], (named, lines[0])
    assert r.stdout == ""


# --- no way to another ID inside --------------------------------------------------------

@pytest.mark.parametrize("opts", ID_OPTS, ids=ID_IDS)
def test_setuid_setgid_to_unmapped_id_fails(ch_run, tiny_image, opts):
    # busybox nsenter -S/-G calls setuid(2)/setgid(2) without entering namespaces.
    r = run([ch_run, *opts, tiny_image, "--", "sh", "-c",
             "cat /proc/self/uid_map /proc/self/gid_map; "
             f"nsenter -S {UNMAPPED} -- true; echo uid=$?; "
             f"nsenter -G {UNMAPPED} -- true; echo gid=$?; "
             "id -u; nsenter -S $(id -u) -G $(id -g) -- id -u"])   # control: own IDs work
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    for m in lines[0:2]:   # exactly one mapping line each, of length 1
        assert m.split()[2] == "1", lines
    assert lines[2:4] == ["uid=1", "gid=1"], r
    assert len(lines) == 6 and lines[4] == lines[5], lines
    assert "nsenter: setuid: Invalid argument" in r.stderr, r.stderr
    assert "nsenter: setgid: Invalid argument" in r.stderr, r.stderr


# --- kernel interfaces stay closed to a plain user -----------------------------------

SYS_CANDIDATES = ["/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/uevent_helper",
                  "/sys/kernel/profiling"]


@pytest.mark.parametrize("opts", ID_OPTS, ids=ID_IDS)
def test_kernel_files_closed_to_plain_user(ch_run, tiny_image, as_plain, opts):
    # ": >> F" only opens F for writing; it writes nothing, so it can't change the host.
    targets = ["/proc/sys/kernel/hostname"] + [p for p in SYS_CANDIDATES if os.path.exists(p)][:1]
    script = "cat /proc/kcore > /dev/null; echo kcore=$?; " + "".join(
        f"(: >> {t}); echo w=$?; " for t in targets)
    r = run([*as_plain, ch_run, *opts, tiny_image, "--", "sh", "-c", script])
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert lines == ["kcore=1"] + ["w=1"] * len(targets), r
    assert re.search(r"can't open '/proc/kcore': (Permission denied|No such file)", r.stderr), \
        r.stderr
    for t in targets:
        assert f"can't create {t}: Permission denied" in r.stderr, r.stderr


# --- host files of other users keep their permissions --------------------------------

@pytest.mark.parametrize("opts", ID_OPTS, ids=ID_IDS)
def test_other_users_files_keep_permissions(ch_run, tiny_image, as_plain, shared_dir, opts):
    if AS_ROOT:
        secret = shared_dir / "secret"
        secret.write_text("secret\n")
        secret.chmod(0o600)
        bind, inside = shared_dir, "/mnt/0/secret"
    else:
        if os.access("/etc/shadow", os.R_OK) or not os.path.exists("/etc/shadow"):
            pytest.skip("/etc/shadow missing or readable by this user")
        bind, inside = "/etc", "/mnt/0/shadow"
    r = run([*as_plain, ch_run, *opts, "-b", f"{bind}:/mnt/0", tiny_image, "--", "sh", "-c",
             f"cat {inside}; echo r=$?; (: >> {inside}); echo w=$?; "
             f"chmod 666 {inside}; echo c=$?"])
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == ["r=1", "w=1", "c=1"], r
    assert f"can't open '{inside}': Permission denied" in r.stderr, r.stderr
    assert f"can't create {inside}: Permission denied" in r.stderr, r.stderr
    if AS_ROOT:
        assert (shared_dir / "secret").stat().st_mode & 0o777 == 0o600
        assert (shared_dir / "secret").read_text() == "secret\n"


# --- an image the user can't read ----------------------------------------------------

def test_unreadable_image(ch_run, as_plain, shared_dir):
    if AS_ROOT:
        img = shared_dir / "img"
        (img / "proc").mkdir(parents=True)
        img.chmod(0o700)   # root's, closed to chrun-test
    else:
        img = Path("/root")
        if not img.is_dir() or os.access(img, os.X_OK):
            pytest.skip("/root missing or accessible to this user")
    r = run([*as_plain, ch_run, img, "--", "true"])
    assert r.returncode == 31, r
    assert_one_error(r, str(img))
    assert "Permission denied" in r.stderr
