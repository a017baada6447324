"""bin/ch-run's bootstrap (issue 15): Python without the site module, from any install.

pip rewrites a ``#!python`` first line to its interpreter and drops flags after it, so
ch-run (and ch-mpirun, the same file) starts with a few lines of sh that exec
``PYTHON -I -S``; the Python part finds the package next to the script.  Checked
here for the installs users make: the test venv (``ch_run``), ``pip install --user``,
a system install (``pip install --root``, laid out as under ``/usr/local``) and a
symlink to the script (``ci/setup.sh`` links ch-run into ``/usr/local/bin``).  Each
must run a container, start Python with ``-I -S`` and never run site processing
(no ``.pth`` file read), and still reach click for ``--help``.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import run

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"


def traced(argv, tmp_path, **kw):
    """Run ARGV under strace (file calls and execs); return (result, trace text)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (ci/install-deps.sh installs it)")
    out = tmp_path / "trace"
    r = run(["strace", "-f", "-qq", "-s", "200", "-e", "trace=%file", "-o", out, *argv], **kw)
    return r, out.read_text()


def check_fast_start(script, image, tmp_path, **kw):
    r, trace = traced([script, image, "--", "sh", "-c", "echo $CH_RUNNING"], tmp_path, **kw)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Weird Al Yankovic\n"
    pythons = [l for l in trace.splitlines() if "execve(" in l and "python" in l.split(",")[0]]
    assert pythons and '"-I", "-S"' in pythons[0], pythons
    assert ".pth" not in trace and "sitecustomize" not in trace, "site processing ran"
    h = run([script, "--help"], **kw)
    assert h.returncode == 0 and "Usage: ch-run" in h.stdout, h.stderr


@pytest.mark.container
def test_venv_install(ch_run, tiny_image, tmp_path):
    assert Path(ch_run).read_text().startswith("#!/bin/sh\n")
    check_fast_start(ch_run, tiny_image, tmp_path)


@pytest.mark.container
def test_ch_mpirun_is_the_same_bootstrap(ch_run, tiny_image, tmp_path):
    mpirun = Path(ch_run).parent / "ch-mpirun"
    assert mpirun.read_bytes() == Path(ch_run).read_bytes()
    r, trace = traced([mpirun, tiny_image, "--", "true"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert ".pth" not in trace
    h = run([mpirun, "--help"])
    assert h.returncode == 0 and "ch-mpirun" in h.stdout


@pytest.mark.container
def test_symlink_to_the_script(ch_run, tiny_image, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ch-run").symlink_to(ch_run)
    check_fast_start(bindir / "ch-run", tiny_image, tmp_path)


def pip_install(tmp_path, *args):
    """pip install this checkout with Debian's Python (not the venv's), as --user or --root."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} missing")
    # The test venv's pip, run by the system Python: the install is that interpreter's.
    pip_path = sysconfig.get_paths()["purelib"]
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info",
                                                               "__pycache__", "tests"))
    env = dict(os.environ, PYTHONPATH=pip_path, PIP_CACHE_DIR=str(tmp_path / "cache"),
               HOME=str(tmp_path / "home"), PYTHONUSERBASE=str(tmp_path / "userbase"))
    r = run([SYSTEM_PYTHON, "-m", "pip", "install", "-q", "--no-warn-script-location",
             "--break-system-packages", *args, str(src)], env=env, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"pip install {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return env


@pytest.mark.container
def test_user_install(tiny_image, tmp_path):
    env = pip_install(tmp_path, "--user", "--ignore-installed")
    script = tmp_path / "userbase" / "bin" / "ch-run"
    assert f"py='{SYSTEM_PYTHON}'" in script.read_text()
    clean = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    check_fast_start(script, tiny_image, tmp_path, env=clean)


@pytest.mark.container
def test_system_install(tiny_image, tmp_path):
    """``--root`` lays the files out as a system install would (``/usr/local/bin`` and
    Debian's ``/usr/local/lib/python3.X/dist-packages``), only under a scratch root."""
    pip_install(tmp_path, "--root", str(tmp_path / "root"), "--ignore-installed")
    scripts = list((tmp_path / "root").glob("usr/local/bin/ch-run")) + \
        list((tmp_path / "root").glob("usr/bin/ch-run"))
    assert scripts, sorted(str(p) for p in (tmp_path / "root").rglob("ch-run"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    check_fast_start(scripts[0], tiny_image, tmp_path, env=env)
