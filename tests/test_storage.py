"""Images by name from ch-image storage (-s/--storage, $CH_IMAGE_STORAGE, /var/tmp/$USER.ch).

The storage directories here are laid out as ch-image 0.31 lays them out
(``version``, ``dlcache/``, ``img/MANGLED/`` with ``ch/metadata.json`` and
``ch/environment``), built from the tiny image.
"""

import os
import re
import shutil
import subprocess
import uuid

import pytest

from chrun import storage
from conftest import run

ONE_ERROR = r"ch-run\[\d+\]: error: [^\n]*\n"
NAMES = ("foo", "example.com:5050/team/app:1.0")


def clean_env(**extra):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"),
           "USER": os.environ.get("USER", "nobody"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def make_storage(root, tiny_image, names=NAMES):
    """A ch-image storage directory at ``root`` holding copies of the tiny image."""
    (root / "img").mkdir(parents=True)
    (root / "dlcache").mkdir()
    (root / "version").write_text("5\n")
    for name in names:
        img = root / "img" / storage.mangle(name)
        subprocess.run(["cp", "-a", tiny_image, img], check=True)
        (img / "ch").mkdir(exist_ok=True)
        (img / "ch" / "metadata.json").write_text('{"env": {"WHICH": "%s"}}\n' % name)
        (img / "ch" / "environment").write_text(f"WHICH={name}\n")
    return root


@pytest.fixture
def store(tmp_path, tiny_image):
    return make_storage(tmp_path / "storage", tiny_image)


# --- unit -------------------------------------------------------------------------

def test_mangling_is_ch_images():
    assert storage.mangle("foo") == "foo"
    assert storage.mangle("example.com:5050/team/app:1.0") == "example.com+5050%team%app+1.0"
    assert storage.mangle("a/b@sha256:ab") == "a%b@sha256+ab"


def test_storage_dir_precedence(tmp_path):
    env = {"CH_IMAGE_STORAGE": "/from/env"}
    assert storage.storage_dir("/opt", env, "u") == "/opt"
    assert storage.storage_dir(None, env, "u") == "/from/env"
    assert storage.storage_dir(None, {}, "alice") == "/var/tmp/alice.ch"
    assert storage.storage_dir(None, {"CH_IMAGE_STORAGE": ""}, "bob") == "/var/tmp/bob.ch"
    assert storage.storage_dir("rel", {}, "u") == os.path.join(os.getcwd(), "rel")


@pytest.mark.parametrize("ref, only_path", [
    ("/abs", True), ("./rel", True), ("../up", True), (".", True), ("..", True),
    ("foo", False), ("rel/dir", False), ("host:5000/x:y", False),
])
def test_which_references_may_be_names(ref, only_path):
    assert storage.is_path_only(ref) is only_path


def test_resolve(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = str(store)
    assert storage.resolve("foo", s, {}, "u", False) == f"{s}/img/foo"
    name = "example.com:5050/team/app:1.0"
    assert storage.resolve(name, s, {}, "u", False) == f"{s}/img/{storage.mangle(name)}"
    assert storage.resolve("storage", s, {}, "u", False) == "storage"  # a path, not a name
    assert storage.resolve("foo", None, {"CH_IMAGE_STORAGE": s}, "u", False) == f"{s}/img/foo"


# --- real containers ----------------------------------------------------------------

@pytest.mark.container
@pytest.mark.parametrize("name", NAMES)
def test_run_by_name(ch_run, store, name):
    for how, env in ((["-s", store], clean_env()), ([f"--storage={store}"], clean_env()),
                     ([], clean_env(CH_IMAGE_STORAGE=str(store)))):
        r = run([ch_run, *how, "--set-env", name, "--", "sh", "-c", 'echo "$WHICH"'], env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{name}\n", ""), how


@pytest.mark.container
def test_name_wins_over_relative_directory(ch_run, store, tmp_path, tiny_image):
    """As in Charliecloud: an existing name in storage wins over a same-named directory."""
    local = tmp_path / "foo"
    subprocess.run(["cp", "-a", tiny_image, local], check=True)
    (local / "ch").mkdir(exist_ok=True)
    (local / "ch" / "environment").write_text("WHICH=local\n")
    cmd = ["--", "sh", "-c", 'echo "$WHICH"']
    r = run([ch_run, "--set-env", "-s", store, "foo", *cmd], env=clean_env(), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "foo\n"), r.stderr
    r = run([ch_run, "--set-env", "-s", store, "./foo", *cmd], env=clean_env(), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "local\n"), r.stderr
    r = run([ch_run, "--set-env", "-s", tmp_path / "empty-storage", "foo", *cmd], env=clean_env(),
            cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "local\n"), r.stderr
    assert re.fullmatch(r"ch-run\[\d+\]: warning: storage directory not found: .*\n", r.stderr)


@pytest.mark.container
def test_default_storage_is_var_tmp_user_ch(ch_run, tiny_image):
    user = f"chrun-storage-test-{uuid.uuid4().hex[:8]}"
    root = f"/var/tmp/{user}.ch"
    try:
        from pathlib import Path
        make_storage(Path(root), tiny_image, names=("bar",))
        r = run([ch_run, "--set-env", "bar", "--", "sh", "-c", 'echo "$WHICH"'],
                env=clean_env(USER=user))
        assert (r.returncode, r.stdout, r.stderr) == (0, "bar\n", "")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.container
def test_unknown_name_is_one_line_exit_31(ch_run, store, tmp_path):
    r = run([ch_run, "-s", store, "nosuch:1.0", "--", "true"], env=clean_env(), cwd=tmp_path)
    assert r.returncode == 31 and r.stdout == ""
    assert re.fullmatch(ONE_ERROR, r.stderr), r.stderr
    assert "nosuch:1.0" in r.stderr and f"storage {store}" in r.stderr
    r = run([ch_run, "nosuch", "--", "true"], env=clean_env(CH_IMAGE_STORAGE=str(store)),
            cwd=tmp_path)
    assert r.returncode == 31 and f"storage {store}" in r.stderr, r.stderr


@pytest.mark.container
def test_storage_images_are_not_written(ch_run, store):
    r = run([ch_run, "-w", "-s", store, "foo", "--", "true"], env=clean_env())
    assert r.returncode == 31 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr
    assert "read-only" in r.stderr
    r = run([ch_run, "-w", "-s", store, store / "img" / "foo", "--", "true"], env=clean_env())
    assert r.returncode == 31 and re.fullmatch(ONE_ERROR, r.stderr), r.stderr
    assert "inside storage" in r.stderr
    # by path without -w: read-only, allowed
    r = run([ch_run, "-s", store, store / "img" / "foo", "--", "true"], env=clean_env())
    assert (r.returncode, r.stderr) == (0, "")
    # and by name the image is read-only, for root too
    r = run([ch_run, "-s", store, "foo", "--", "touch", "/x"], env=clean_env())
    assert r.returncode != 0 and not (store / "img" / "foo" / "x").exists()


@pytest.mark.container
def test_absolute_paths_skip_storage(ch_run, tiny_image, tmp_path):
    """An absolute NEWROOT never looks in storage: a name-like file there changes nothing."""
    fake = tmp_path / "s"
    (fake / "img").mkdir(parents=True)
    r = run([ch_run, tiny_image, "--", "true"], env=clean_env(CH_IMAGE_STORAGE=str(fake)))
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.container
def test_squatted_storage_is_not_trusted(ch_run, store, tmp_path, tiny_image):
    """Storage writable by others (or, as root, owned by another user) is not used for names."""
    local = tmp_path / "foo"
    subprocess.run(["cp", "-a", tiny_image, local], check=True)
    (local / "ch").mkdir(exist_ok=True)
    (local / "ch" / "environment").write_text("WHICH=local\n")
    cmd = ["--set-env", "-s", store, "foo", "--", "sh", "-c", 'echo "$WHICH"']
    store.chmod(0o777)
    r = run([ch_run, *cmd], env=clean_env(), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "local\n"), r.stderr
    assert re.fullmatch(r"ch-run\[\d+\]: warning: not using storage .*: "
                        r"writable by every user\n", r.stderr), r.stderr
    store.chmod(0o755)
    (store / "img").chmod(0o777)
    r = run([ch_run, *cmd], env=clean_env(), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "local\n") and "img: writable" in r.stderr
    (store / "img").chmod(0o755)
    r = run([ch_run, *cmd], env=clean_env(), cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "foo\n", "")
    if os.geteuid() == 0:
        os.chown(store, 65534, 65534)
        r = run([ch_run, *cmd], env=clean_env(), cwd=tmp_path)
        assert (r.returncode, r.stdout) == (0, "local\n") and "UID 65534" in r.stderr


def test_empty_storage_option_is_usage_error():
    from chrun import args
    from chrun.errors import UsageError
    with pytest.raises(UsageError, match="--storage: empty"):
        args.make_options(**args.scan(["-s", "", "foo", "true"]))
