"""ch-mpirun (launch/): unit tests of its decisions, then real launchers driving it.

Stacks (ci/install-mpi.sh) and the MPI image (ci/build-mpi-image.sh):
  ompi5   PyPI Open MPI 5 (prterun)   $CHRUN_MPI_VENVS/ompi5/bin/{mpirun,ch-mpirun}
  mpich5  PyPI MPICH 5 (hydra)        $CHRUN_MPI_VENVS/mpich5/bin/{mpiexec,ch-mpirun}
  ompi4   Debian Open MPI 4.1         mpirun.openmpi, ch-mpirun next to sys.executable
  mpich4  Debian MPICH 4.0 (PMI-1)    mpiexec.mpich,  ch-mpirun next to sys.executable
CHRUN_MPI_VENVS defaults to /opt/chrun.  Every MPI run checks, from the lines the image's
/opt/mpi-tests programs print, that all ranks of the node share one user and one mount
namespace, that these differ from the test's own (the host's), that MPI sees every rank on
this node (COMM_TYPE_SHARED) and that the allreduce inside the container is right.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IMAGES, run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chrun_launch import launchers, mpirun, viampi  # noqa: E402
from chrun.errors import ChError, UsageError  # noqa: E402

VENVS = Path(os.environ.get("CHRUN_MPI_VENVS", "/opt/chrun"))
HERE_BIN = Path(sys.executable).parent
LINE = re.compile(r"rank (\d+) size (\d+) localsize (\d+) sum (OK|BAD) "
                  r"user:(\d+) mnt:(\d+) host:(\S+)")

#: stack -> (launcher argv, ch-mpirun, program in the image, has mpi4py)
STACKS = {
    "ompi5": ([str(VENVS / "ompi5/bin/mpirun"), "--oversubscribe"],
              VENVS / "ompi5/bin/ch-mpirun",
              ["/opt/ompi5/bin/python", "/opt/mpi-tests/allreduce.py"], True),
    "mpich5": ([str(VENVS / "mpich5/bin/mpiexec")], VENVS / "mpich5/bin/ch-mpirun",
               ["/opt/mpich5/bin/python", "/opt/mpi-tests/allreduce.py"], True),
    "ompi4": (["mpirun.openmpi", "--oversubscribe"], HERE_BIN / "ch-mpirun",
              ["/opt/mpi-tests/allreduce-ompi4"], False),
    "mpich4": (["mpiexec.mpich"], HERE_BIN / "ch-mpirun",
               ["/opt/mpi-tests/allreduce-mpich4"], False),
}


def host_ns(name):
    return os.stat(f"/proc/self/ns/{name}").st_ino


def mpi_env():
    env = dict(os.environ)
    for k in list(env):  # never inherit a launcher from whoever runs pytest
        if k.startswith(("OMPI_", "PMIX_", "PMI_", "MPI_LOCAL", "SLURM_", "CH_MPIRUN")):
            del env[k]
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


@pytest.fixture(scope="module")
def mpi_image():
    img = IMAGES / "mpi"
    if not (img / "opt/mpi-tests/allreduce.py").is_file():
        pytest.fail(f"MPI image {img} missing: build it as root with bash ci/build-mpi-image.sh")
    return img


def stack(name):
    launcher, chm, prog, has_mpi4py = STACKS[name]
    if not shutil.which(launcher[0]):
        pytest.fail(f"{launcher[0]} missing: bash ci/install-mpi.sh")
    if not os.access(chm, os.X_OK):
        pytest.fail(f"{chm} missing: bash ci/install-mpi.sh")
    return launcher, chm, prog, has_mpi4py


def our_strays(marker):
    """Our processes whose command line contains ``marker`` (e.g. a join holder)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if p.stat().st_uid != os.geteuid():
                continue
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and "ch-mpirun" in cmd:
            found.append(f"{p.name}: {cmd}")
    return found


def assert_nothing_left(marker):
    deadline = time.monotonic() + 5
    while (left := our_strays(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


def check_ranks(out, n):
    """Every rank printed one good line; all in one container that is not the host's."""
    lines = [LINE.fullmatch(l) for l in out.splitlines() if l.startswith("rank ")]
    assert all(lines), out
    assert sorted(int(m.group(1)) for m in lines) == list(range(n)), out
    assert {m.group(2) for m in lines} == {str(n)}
    assert {m.group(3) for m in lines} == {str(n)}, "MPI does not see every rank on this node"
    assert {m.group(4) for m in lines} == {"OK"}, "allreduce gave a wrong sum"
    users = {int(m.group(5)) for m in lines}
    mnts = {int(m.group(6)) for m in lines}
    assert len(users) == 1 and len(mnts) == 1, f"ranks in different containers: {out}"
    assert users != {host_ns("user")} and mnts != {host_ns("mnt")}, "ranks not in a container"


def launch(name, n, img, extra=(), cmd=None, timeout=300):
    launcher, chm, prog, _ = stack(name)
    argv = launcher + ["-n", str(n), chm, "-v", *extra, img, "--", *(cmd or prog)]
    r = run(argv, env=mpi_env(), timeout=timeout)
    return r


# --- unit tests: no launcher, no container --------------------------------------------------

OMPI5_ENV = {"OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_VERSION": "5.0.11",
             "PMIX_NAMESPACE": "prterun-vm-538@1", "PMIX_RANK": "0"}
OMPI4_ENV = {"OMPI_COMM_WORLD_LOCAL_SIZE": "3", "PMIX_NAMESPACE": "1849032705"}
HYDRA_ENV = {"MPI_LOCALNRANKS": "4", "MPI_LOCALRANKID": "0", "PMI_FD": "9", "PMI_RANK": "0"}
SLURM_ENV = {"SLURM_STEP_TASKS_PER_NODE": "3,1", "SLURM_NODEID": "1", "SLURM_STEP_ID": "0",
             "SLURM_JOB_ID": "77"}


@pytest.mark.parametrize("env, name, size, tag, reinit", [
    (OMPI5_ENV, "Open MPI 5", 2, "ompi:prterun-vm-538@1", True),
    (OMPI4_ENV, "Open MPI 4", 3, "ompi:1849032705", False),
    (HYDRA_ENV, "MPICH hydra", 4, "hydra:4242", True),
    (SLURM_ENV, "Slurm srun", 1, "slurm:77.0", False),
    ({**SLURM_ENV, **OMPI4_ENV}, "Open MPI 4", 3, "ompi:1849032705", False),  # mpirun in salloc
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_ID": "3", "SLURM_JOB_ID": "9",
      "SLURM_NODEID": "1"}, "Slurm srun", 2, "slurm:9.3", False),
    ({}, "none", 1, None, False),
    ({"SLURM_JOB_ID": "5", "SLURM_CPUS_ON_NODE": "8"}, "none", 1, None, False),  # batch script
])
def test_detect(env, name, size, tag, reinit):
    found = launchers.detect(env, 1234, lambda fd: 4242 if fd == "9" else None)
    assert (found.name, found.local_size, found.tag, found.reinit_ok) == (name, size, tag, reinit)


def test_detect_hydra_without_pmi_peer_uses_parent():
    found = launchers.detect(HYDRA_ENV, 1234)
    assert found.tag == "hydra-ppid:1234" and found.tag_from == "parent PID"


def test_detect_bad_count():
    with pytest.raises(UsageError):
        launchers.detect({"MPI_LOCALNRANKS": "x"}, 1)


def test_pmi_peer_pid_of_socketpair():
    import socket
    a, b = socket.socketpair()
    with a, b:
        assert launchers.pmi_peer_pid(str(a.fileno())) == os.getpid()
        assert a.fileno() >= 0  # not closed by the probe
    assert launchers.pmi_peer_pid("notanfd") is None
    r, w = os.pipe()
    try:
        assert launchers.pmi_peer_pid(str(r)) is None  # not a socket
        os.fstat(r)  # still open
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("version, ok", [
    ("Open MPI v5.0.11", True), ("Open MPI v4.1.4", False), ("MPICH Version:      5.0.2", True),
    ("MPICH Version:\t4.0.2", False), ("MPICH Version: 4.2.0", True), ("Intel(R) MPI", False),
])
def test_library_reinit_ok(version, ok):
    assert viampi.library_reinit_ok(version) is ok


def test_choose_mode():
    assert mpirun.choose_mode(None, {}) == "auto"
    assert mpirun.choose_mode(None, {"CH_MPIRUN_MODE": "env"}) == "env"
    assert mpirun.choose_mode("mpi4py", {"CH_MPIRUN_MODE": "env"}) == "mpi4py"
    with pytest.raises(UsageError):
        mpirun.choose_mode("fast", {})


def test_env_mode_without_launcher_fails():
    from chrun.plan import Options
    with pytest.raises(ChError, match="no launcher variables"):
        mpirun.decide("env", Options(newroot="/x", command=("true",)), {})


# --- the command line, outside any launcher ------------------------------------------------

@pytest.fixture(scope="module")
def ch_mpirun():
    path = HERE_BIN / "ch-mpirun"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} missing: install chrun into this venv")
    return path


@pytest.mark.parametrize("args", [["--join-ct=2"], ["-j"], ["--join-tag=x"], ["--join-pid=1"],
                                  ["--mode=fast"], ["--bogus"], []])
def test_usage_errors(ch_mpirun, tiny_image, args):
    r = run([ch_mpirun, *args, tiny_image, "--", "true"] if args else [ch_mpirun],
            env=mpi_env())
    assert r.returncode == 64, r.stderr
    assert re.match(r"ch-mpirun\[\d+\]: error: ", r.stderr), r.stderr


def test_help(ch_mpirun):
    r = run([ch_mpirun, "--help"])
    assert r.returncode == 0 and "--mode=MODE" in r.stdout and "LAUNCHER" in r.stdout


@pytest.mark.container
def test_no_launcher_runs_one_container(ch_mpirun, tiny_image, tmp_path):
    (tmp_path / "f").write_text("hello\n")
    r = run([ch_mpirun, "-v", "-b", f"{tmp_path}:/mnt/3", "-c", "/mnt/3", tiny_image, "--",
             "sh", "-c", "pwd; cat f; readlink /proc/self/ns/user"], env=mpi_env())
    assert r.returncode == 0, r.stderr
    pwd, content, ns = r.stdout.splitlines()
    assert (pwd, content) == ("/mnt/3", "hello")
    assert ns != f"user:[{host_ns('user')}]"
    assert "mode none" in r.stderr


@pytest.mark.container
def test_command_status_and_exec_failure(ch_mpirun, tiny_image):
    assert run([ch_mpirun, tiny_image, "--", "sh", "-c", "exit 7"], env=mpi_env()).returncode == 7
    r = run([ch_mpirun, tiny_image, "--", "/no/such"], env=mpi_env())
    assert r.returncode == 49 and "ch-mpirun[" in r.stderr


# --- real launchers ------------------------------------------------------------------------

MODES = [(s, m) for s in STACKS for m in ("auto", "env", "mpi4py")
         if m != "mpi4py" or STACKS[s][3]]


@pytest.mark.container
@pytest.mark.parametrize("name, mode", MODES, ids=[f"{s}-{m}" for s, m in MODES])
def test_ranks_share_one_container(name, mode, mpi_image):
    r = launch(name, 3, mpi_image, [f"--mode={mode}"])
    assert r.returncode == 0, r.stdout + r.stderr
    check_ranks(r.stdout, 3)
    ran = "mpi4py" if mode == "mpi4py" else "env"   # auto picks env for every known launcher
    assert len(re.findall(rf"ch-mpirun\[\d+\]: mode {ran}: ", r.stderr)) == 3, r.stderr
    assert_nothing_left(str(mpi_image))


@pytest.mark.container
@pytest.mark.parametrize("name", list(STACKS))
def test_64_ranks_oversubscribed(name, mpi_image):
    r = launch(name, 64, mpi_image, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_ranks(r.stdout, 64)
    assert_nothing_left(str(mpi_image))


@pytest.mark.container
@pytest.mark.parametrize("name", ["mpich4", "ompi5"])
def test_ranks_end_early(name, tiny_image):
    """-- true: the creator exits at once; nobody fails, nothing stays."""
    r = launch(name, 8, tiny_image, cmd=["true"])
    assert r.returncode == 0, r.stderr
    assert_nothing_left(str(tiny_image))


@pytest.mark.container
def test_shell_between_hydra_and_rank(mpi_image):
    """A shell per rank (different parent PIDs) still gives one group: the PMI proxy is the tag."""
    launcher, chm, prog, _ = stack("mpich4")
    inner = " ".join([str(chm), "-v", str(mpi_image), "--", *prog]) + "; exit $?"
    r = run(launcher + ["-n", "3", "sh", "-c", inner], env=mpi_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    check_ranks(r.stdout, 3)
    assert "PMI proxy PID" in r.stderr


@pytest.mark.container
def test_ch_run_options_pass_through(tiny_image, tmp_path):
    (tmp_path / "f").write_text("x\n")
    probe = f"/tmp/mpirun-private-tmp-probe-{os.getpid()}"
    r = launch("mpich4", 3, tiny_image, ["-b", f"{tmp_path}:/mnt/0", "-c", "/mnt/0", "-t"],
               cmd=["sh", "-c", f"cat f; touch {probe} && readlink /proc/self/ns/mnt"],
               timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines.count("x") == 3
    assert len({l for l in lines if l.startswith("mnt:")}) == 1
    assert not os.path.exists(probe), "-t: /tmp of the container is the host's"


@pytest.mark.container
def test_forced_mpi4py_without_mpi4py_fails(mpi_image):
    """Forced mpi4py where mpi4py is missing (Debian venv) fails clearly, never hangs."""
    r = launch("mpich4", 2, mpi_image, ["--mode=mpi4py"], timeout=120)
    assert r.returncode == 31
    assert "mode mpi4py" in r.stderr and "use --mode=env" in r.stderr


# --- pytest-mpi: the launcher's variables agree with MPI itself ----------------------------

@pytest.mark.container
@pytest.mark.parametrize("name", ["ompi5", "mpich5"])
def test_env_agrees_with_mpi_under_pytest_mpi(name):
    """Runs tests/test_mpirun_mpi.py on 3 ranks with pytest-mpi (--with-mpi)."""
    launcher = stack(name)[0]
    py = VENVS / name / "bin/python"
    here = Path(__file__).resolve().parent
    r = run(launcher + ["-n", "3", py, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--with-mpi", "--rootdir", str(here), "-o", "addopts=",
                        str(here / "test_mpirun_mpi.py")],
            env={**mpi_env(), "PYTHONPATH": str(here.parent)}, timeout=300, cwd="/")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert r.stdout.count("passed") >= 3, r.stdout
