"""--feature=FEAT (exit 0 available / 1 not; unknown: usage error) and --no-passwd."""

import os
import re
import shutil

import pytest

from chrun import features
from conftest import run

ONE_ERROR = r"ch-run\[\d+\]: error: [^\n]*\n"


def squash_expected():
    """What --feature=squash must say: chrun.squash's own answer, or no when it is absent."""
    try:
        from chrun import squash
    except ImportError:
        return False
    return bool(squash.available())


@pytest.mark.parametrize("feat, expected", [
    ("extglob", True), ("seccomp", False), ("overlayfs", False), ("tmpfs-xattrs", False),
    ("squash", None),
])
def test_feature_exit_codes(ch_run, feat, expected):
    if expected is None:
        expected = squash_expected()
    for argv in ([f"--feature={feat}"], ["--feature", feat], ["-v", f"--feature={feat}"],
                 [f"--feature={feat}", "/nonexistent", "true"]):
        r = run([ch_run, *argv])
        assert (r.returncode, r.stdout, r.stderr) == (0 if expected else 1, "", ""), argv


def test_unknown_feature_is_usage_error(ch_run):
    r = run([ch_run, "--feature=warp-drive"])
    assert r.returncode == 64 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr
    assert "warp-drive" in r.stderr and "extglob" in r.stderr
    r = run([ch_run, "--feature"])
    assert r.returncode == 64 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr


def test_squash_is_chrun_squash_available(monkeypatch):
    from chrun import squash
    assert features.FEATURES["squash"]() is squash.available()
    monkeypatch.setenv("PATH", "/nonexistent")  # no squashfuse: not available
    assert features.FEATURES["squash"]() is False


def test_squash_without_squashfuse_is_not_available(monkeypatch):
    if shutil.which("squashfuse") is None:
        assert features.FEATURES["squash"]() is False


@pytest.mark.container
def test_no_passwd_shows_the_images_files(ch_run, writable_image):
    (writable_image / "etc" / "passwd").write_text("imageuser:x:4242:4242::/:/bin/sh\n")
    (writable_image / "etc" / "group").write_text("imagegroup:x:4242:\n")
    cat = ["--", "cat", "/etc/passwd", "/etc/group"]
    r = run([ch_run, "--no-passwd", writable_image, *cat])
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "imageuser:x:4242:4242::/:/bin/sh\nimagegroup:x:4242:\n"
    r = run([ch_run, writable_image, *cat])
    assert r.returncode == 0 and "imageuser" not in r.stdout
    assert f":{os.geteuid()}:" in r.stdout  # the generated files know the user


@pytest.mark.container
def test_no_passwd_mounts_nothing_on_them(ch_run, writable_image):
    r = run([ch_run, "-vv", "--no-passwd", writable_image, "--", "true"])
    assert r.returncode == 0
    assert "on /etc/passwd" not in r.stderr and "on /etc/group" not in r.stderr, r.stderr
    assert "mounted host /dev on /dev" in r.stderr  # (the test can fail)
