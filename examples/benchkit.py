"""Helpers shared by examples/cma-bench/run and examples/launch-bench/run.

* :func:`ensure_venv` re-executes the calling script in a venv of its own that
  holds extra PyPI packages (matplotlib), creating it when missing.
* :data:`STACKS`: the MPI stacks ci/install-mpi.sh installs on the host and
  ci/build-mpi-image.sh puts into the image, with their launchers and Pythons.
* :func:`ensure_image`: reuse the MPI image, or build it with the ci/ scripts.
* :func:`mpi_env`, :func:`median`, :func:`fmt_cmd`: small things both need.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
IMAGES = Path(os.environ.get("CHRUN_IMAGES", "/var/tmp/chrun-images"))
MPI_IMAGE = IMAGES / "mpi"
PREFIX = Path(os.environ.get("CHRUN_PREFIX", "/opt/chrun"))
#: Python for new venvs: Debian's, readable by every user (pyenv's under /root is not).
BASE_PYTHON = "/usr/bin/python3"


def log(msg: str) -> None:
    print(f"{Path(sys.argv[0]).parent.name}: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"error: {msg}")
    sys.exit(1)


# ---- the benchmark's own venv -------------------------------------------------------------------

def bench_venv_dirs() -> List[Path]:
    """Where the venv may live: $CHRUN_BENCH_VENV, else /opt/chrun/bench, else ~/.cache."""
    if os.environ.get("CHRUN_BENCH_VENV"):
        return [Path(os.environ["CHRUN_BENCH_VENV"])]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return [PREFIX / "bench", cache / "chrun-bench"]


def _has(python: Path, modules: Sequence[str]) -> bool:
    code = "import " + ", ".join(modules)
    return python.is_file() and subprocess.run(
        [str(python), "-c", code], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL).returncode == 0


def _create_venv(venv: Path, packages: Sequence[str]) -> None:
    """Create VENV and pip-install PACKAGES from PyPI (under a lock; removed if it fails)."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one builder at a time
        if _has(venv / "bin" / "python", [p.split("[")[0] for p in packages]):
            return                              # built meanwhile
        log(f"creating {venv} with {' '.join(packages)} (pip, from PyPI)")
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                            "--disable-pip-version-check", *packages], check=True)
            subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise


def ensure_venv(packages: Sequence[str], modules: Sequence[str]) -> None:
    """Continue in a venv that can import MODULES (re-exec'ing this script there)."""
    if all(_importable(m) for m in modules):
        return
    for venv in bench_venv_dirs():
        py = venv / "bin" / "python"
        if _has(py, modules):
            break
        try:
            _create_venv(venv, packages)
        except (OSError, subprocess.CalledProcessError) as x:
            log(f"cannot create {venv}: {x}")
            continue
        if _has(py, modules):
            break
    else:
        die(f"no venv with {', '.join(modules)}: tried {', '.join(map(str, bench_venv_dirs()))}")
    if os.environ.get("CHRUN_BENCH_REEXEC") == str(py):
        die(f"{py} cannot import {modules}")
    os.environ["CHRUN_BENCH_REEXEC"] = str(py)
    os.execv(str(py), [str(py), sys.argv[0], *sys.argv[1:]])


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# ---- MPI stacks ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stack:
    name: str
    label: str
    launcher: List[str]   # on the host
    host_python: str      # host Python whose mpi4py uses this MPI
    image_python: str     # the same inside the MPI image
    chrun_bin: str        # directory with the ch-run / ch-mpirun to use with it
    #: Extra launcher arguments that make the MPI say which single-copy mechanism it uses.
    verbose: List[str]


STACKS = {
    "ompi5": Stack("ompi5", "Open MPI 5 (PyPI)", [f"{PREFIX}/ompi5/bin/mpirun"],
                   f"{PREFIX}/ompi5/bin/python", "/opt/ompi5/bin/python",
                   f"{PREFIX}/ompi5/bin", ["--mca", "smsc_base_verbose", "100"]),
    "mpich5": Stack("mpich5", "MPICH 5 (PyPI)", [f"{PREFIX}/mpich5/bin/mpiexec"],
                    f"{PREFIX}/mpich5/bin/python", "/opt/mpich5/bin/python",
                    f"{PREFIX}/mpich5/bin", []),
    "ompi4": Stack("ompi4", "Open MPI 4.1 (Debian)", ["mpirun.openmpi"],
                   "/usr/bin/python3", "/usr/bin/python3",
                   f"{PREFIX}/venv/bin", []),   # warns by itself: "CMA is not available ..."
}


def mpi_env(extra: Optional[dict] = None) -> dict:
    """Our environment, cleaned of launcher variables, fit for mpirun as root too."""
    drop = ("OMPI_", "PMI", "PMIX_", "MPI_", "SLURM_", "CH_RUN_", "PRTE_", "HYDRA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.setdefault("USER", _user())     # Charliecloud's ch-run insists on $USER
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(extra or {})
    return env


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def check_stack(stack: Stack) -> Optional[str]:
    """Why STACK cannot run here (None if it can)."""
    if not shutil.which(stack.launcher[0]):
        return f"{stack.launcher[0]} missing (run ci/install-mpi.sh as root)"
    for exe in (stack.host_python, f"{stack.chrun_bin}/ch-run", f"{stack.chrun_bin}/ch-mpirun"):
        if not os.access(exe, os.X_OK):
            return f"{exe} missing (run ci/setup.sh or ci/install-mpi.sh as root)"
    return None


# ---- the MPI image ------------------------------------------------------------------------------

def ensure_image(image: Path, rebuild: bool = False) -> Path:
    """IMAGE if it looks like ci/build-mpi-image.sh's; else build it with the ci/ scripts."""
    ok = all((image / p).exists() for p in ("opt/ompi5/bin/python", "opt/mpich5/bin/python",
                                            "etc/hosts"))
    if ok and not rebuild:
        return image
    if image != MPI_IMAGE:
        die(f"{image} is no MPI image (build the default one with ci/build-mpi-image.sh)")
    if os.geteuid() != 0:
        die(f"{image} missing: build it as root with bash ci/install-mpi.sh && "
            "bash ci/build-mpi-image.sh")
    for script in ("install-mpi.sh", "build-mpi-image.sh"):
        log(f"running ci/{script}")
        subprocess.run(["bash", str(REPO / "ci" / script)], check=True)
    return image


# ---- running a job that may hang ------------------------------------------------------------------

def run_job(argv: Sequence[str], env: dict, timeout: float) -> tuple:
    """Run ARGV in a session of its own; return (exit status or None on timeout, out, err).

    On timeout every process of the job is killed: its session (ranks an MPI launcher
    started), and any descendant that left it, since killing only the launcher would leave
    the ranks spinning on the CPU.
    """
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:   # something that escaped still holds the pipes
            p.kill()
            out, err = "", "(output lost: pipes held open after the kill)"
        return None, out, err


def _children() -> dict:
    kids: dict = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def kill_tree(pid: int) -> None:
    """SIGKILL PID's session and all descendants of PID (found before any dies)."""
    kids, todo, tree = _children(), [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += kids.get(p, [])
    try:
        os.killpg(pid, signal.SIGKILL)            # pid leads its own session and group
    except OSError:
        pass
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


# ---- files left behind by aborted MPI jobs -------------------------------------------------------

#: (directory, name prefix) of what an aborted MPI job leaves: shared-memory segments, and
#: the topology file MPICH's hydra writes to /tmp and removes only when it ends normally.
LEFTOVER_PLACES = (("/dev/shm", ""), ("/tmp", "hydra_hwloc_xmlfile_"))


def shm_entries() -> set:
    """Paths in LEFTOVER_PLACES that we own."""
    uid = os.geteuid()
    found = set()
    for d, prefix in LEFTOVER_PLACES:
        for e in os.scandir(d):
            try:
                if e.name.startswith(prefix) and e.stat(follow_symlinks=False).st_uid == uid:
                    found.add(e.path)
            except OSError:
                pass
    return found


def _in_use() -> set:
    """Paths in LEFTOVER_PLACES that any process we can see has open or mapped."""
    dirs = tuple(d + "/" for d, _ in LEFTOVER_PLACES)
    used = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    path = line.split(maxsplit=5)[5].strip() if line.count(" ") >= 5 else ""
                    if path.startswith(dirs):
                        used.add(path.split(" (deleted)")[0])
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(dirs):
                    used.add(target.split(" (deleted)")[0])
        except (OSError, IndexError):
            continue
    return used


def clean_shm(before: set) -> List[str]:
    """Remove our leftovers new since BEFORE that no process uses any more (an MPI job that
    aborted, e.g. MPICH ranks in separate containers, leaves its segments and hydra's file)."""
    new = shm_entries() - before
    if not new:
        return []
    gone = sorted(new - _in_use())
    for path in gone:
        try:
            os.unlink(path)
        except OSError:
            pass
    return gone


# ---- small things -------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_cmd(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)
