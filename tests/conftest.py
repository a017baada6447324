"""Shared fixtures for chrun's tests.

Fixtures:
  ch_run          Path of the installed ``ch-run`` script (next to sys.executable).
  tiny_image      Path of the busybox test image ``$CHRUN_IMAGES/tiny``
                  (built by ci/build-images.sh; default /var/tmp/chrun-images).
  writable_image  A private ``cp -a`` copy of tiny_image under tmp_path.
Helper:
  run(args, **kw) subprocess.run with text output captured, stdin from
                  /dev/null and a 60 s timeout; ``from conftest import run``.
Autouse (session): fails the run if it leaves new entries in /dev/shm owned by
us, or new /tmp entries whose name contains chrun, ch-run or join (or MPICH hydra's
topology files of ours, which an aborted hydra job leaves).
Set CHRUN_LEAK_CHECK=0 to skip that (e.g. while other test runs share the box).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

IMAGES = Path(os.environ.get("CHRUN_IMAGES", "/var/tmp/chrun-images"))
BUILD_HINT = "build it as root with: bash ci/build-images.sh"


def run(args, *, timeout=60, **kw):
    """Run ARGS (any path-likes), return CompletedProcess with str stdout/stderr."""
    kw.setdefault("capture_output", True)
    if "input" not in kw:
        kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([os.fspath(a) for a in args], text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def ch_run():
    """The ch-run console script of the interpreter running the tests."""
    path = Path(sys.executable).parent / "ch-run"   # no resolve(): venv bin/python is a symlink
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: install chrun into this venv (bash ci/install-deps.sh)")
    return path


@pytest.fixture(scope="session")
def tiny_image():
    """The read-only busybox image with the probes in /usr/local/bin."""
    img = IMAGES / "tiny"
    if not (img / "bin" / "busybox").is_file():
        pytest.fail(f"test image {img} missing: {BUILD_HINT}")
    return img


@pytest.fixture
def writable_image(tmp_path, tiny_image):
    """A copy of tiny_image that the test may change."""
    img = tmp_path / "img"
    subprocess.run(["cp", "-a", tiny_image, img], check=True)
    return img


def _leak_candidates():
    uid = os.geteuid()
    found = set()
    for d in (Path("/dev/shm"), Path("/tmp")):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        for e in entries:
            try:
                owner = e.lstat().st_uid
            except OSError:
                continue   # vanished meanwhile
            if d.name == "shm":
                if owner == uid:
                    found.add(str(e))
            elif any(k in e.name.lower() for k in ("chrun", "ch-run", "join")) \
                    or (e.name.startswith("hydra_hwloc_xmlfile_") and owner == uid):
                found.add(str(e))
    return found


def _under_mpi():
    # MPI libraries keep their own /dev/shm segments until MPI_Finalize.
    return any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))


@pytest.fixture(scope="session", autouse=True)
def no_leaks():
    """Nothing new in /dev/shm (ours) or /tmp (chrun-ish names) after the session."""
    if os.environ.get("CHRUN_LEAK_CHECK") == "0" or _under_mpi():
        yield
        return
    before = _leak_candidates()
    yield
    deadline = time.monotonic() + 3   # let exiting processes finish their cleanup
    while (new := _leak_candidates() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not new, f"test session leaked: {sorted(new)}"
