"""The two-node Slurm brought up by ci/slurm-up.sh behaves like two nodes.

Skipped unless CHRUN_SLURM=1 (set by the CI runner once the cluster is up).
Works as root and as a plain user. The expected per-node task counts are
what Debian 12's Slurm 22.05 does with select/cons_tres + CR_Core and 8
CPUs per emulated node: block distribution fills n1 first and leaves one
task for n2.
"""

import os
import re
import subprocess
import time
import uuid

import pytest

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("CHRUN_SLURM") != "1",
                       reason="needs CHRUN_SLURM=1 (ci/slurm-up.sh)"),
]

TIMEOUT = 90

VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NODEID", "SLURM_LOCALID",
        "SLURM_STEP_ID", "SLURM_JOB_ID", "SLURM_CPUS_ON_NODE", "SLURM_PROCID")


def _env():
    # Drop the variables of any job we might run inside, keep SLURM_CONF.
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SALLOC_", "SBATCH_", "SRUN_"))
            or k == "SLURM_CONF"}


def run(args, cwd=None, check=True):
    p = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True,
                       text=True, timeout=TIMEOUT)
    if check and p.returncode != 0:
        pytest.fail(f"{args} exited {p.returncode}\nstdout:\n{p.stdout}\n"
                    f"stderr:\n{p.stderr}")
    return p


def task_env(*srun_args):
    """Run one step; return {procid: {"host": ..., VAR: value}} per task."""
    script = "echo HOST=$(hostname); " + "; ".join(
        f'echo {v}="${v}"' for v in VARS)
    out = run(["srun", *srun_args, "-l", "sh", "-c", script]).stdout
    tasks = {}
    for line in out.splitlines():
        label, _, kv = line.partition(": ")
        k, _, v = kv.partition("=")
        tasks.setdefault(int(label), {})["host" if k == "HOST" else k] = v
    return tasks


def wait_job(jobid):
    """Wait until a job has ended; return its final JobState."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        out = run(["scontrol", "-o", "show", "job", jobid]).stdout
        state = re.search(r"\bJobState=(\S+)", out).group(1)
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING",
                         "SUSPENDED", "REQUEUED", "RESIZING"):
            return state
        time.sleep(0.1)
    pytest.fail(f"job {jobid} still not done after {TIMEOUT} s")


def test_hostname_two_nodes():
    out = run(["srun", "-N", "2", "-n", "4", "hostname"]).stdout.split()
    assert len(out) == 4
    assert set(out) == {"n1", "n2"}


@pytest.mark.parametrize("ntasks, per_node, counts", [
    (2, "1(x2)", [1, 1]),
    (3, "2,1", [2, 1]),
    (4, "3,1", [3, 1]),
    (6, "5,1", [5, 1]),
])
def test_step_env_per_node(ntasks, per_node, counts):
    tasks = task_env("-N", "2", "-n", str(ntasks))
    assert sorted(tasks) == list(range(ntasks))
    by_host = {"n1": [], "n2": []}
    for rank, t in tasks.items():
        assert t["SLURM_STEP_TASKS_PER_NODE"] == per_node
        assert t["SLURM_STEP_ID"] == "0"
        assert t["SLURM_PROCID"] == str(rank)
        by_host[t["host"]].append(t)
    assert len({t["SLURM_JOB_ID"] for t in tasks.values()}) == 1
    for nodeid, host in enumerate(("n1", "n2")):
        ts = by_host[host]
        assert len(ts) == counts[nodeid]
        # SLURM_NODEID differs per node and matches the host.
        assert {t["SLURM_NODEID"] for t in ts} == {str(nodeid)}
        assert sorted(int(t["SLURM_LOCALID"]) for t in ts) \
            == list(range(counts[nodeid]))
        # srun makes the allocation itself: one CPU per task on each node.
        assert {t["SLURM_CPUS_ON_NODE"] for t in ts} == {str(counts[nodeid])}


def test_step_id_zero_in_every_new_job(tmp_path):
    # Steps are numbered from 0 again in every job (batch or interactive),
    # so SLURM_STEP_ID alone never tells two jobs apart.
    steps = ("srun -N 2 -n 2 -l printenv SLURM_STEP_ID SLURM_JOB_ID; "
             "srun -N 1 -n 1 printenv SLURM_STEP_ID")
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n{steps}\n")
    outputs = []
    out = tmp_path / "batch.out"
    # (Not sbatch --wait: it polls with a growing sleep, up to 10 s here.)
    # stderr apart: srun may say "step creation temporarily disabled" while
    # the first step's CPUs are being released.
    p = run(["sbatch", "--parsable", "-N", "2", "-n", "2",
             "-o", str(out), "-e", str(tmp_path / "batch.err"), str(script)],
            cwd=tmp_path)
    jobid = p.stdout.strip().split(";")[0]
    assert wait_job(jobid) == "COMPLETED"
    outputs.append((jobid, out.read_text()))
    for _ in range(2):
        p = run(["salloc", "-N", "2", "-n", "2", "sh", "-c",
                 'echo "JOB $SLURM_JOB_ID"; ' + steps])
        head, _, rest = p.stdout.partition("\n")
        assert head.startswith("JOB ")
        outputs.append((head.split()[1], rest))
    for jobid, text in outputs:
        lines = text.split()
        # -l output: "0: 0", "0: JOBID", "1: 0", "1: JOBID" in any order
        # between the tasks, then the second step's "1".
        labelled = sorted(" ".join(lines[k:k + 2]) for k in range(0, 8, 2))
        assert labelled == sorted(["0: 0", f"0: {jobid}",
                                   "1: 0", f"1: {jobid}"]), text
        assert lines[8:] == ["1"], text
    assert len({jobid for jobid, _ in outputs}) == 3


def test_nodes_have_private_dev_shm():
    name = f"chrun-slurm-test-{uuid.uuid4().hex}"
    f = f"/dev/shm/{name}"
    one = ["srun", "-N", "1", "-n", "1", "-w"]
    assert not os.path.exists(f)
    run(one + ["n1", "touch", f])
    try:
        assert run(one + ["n1", "test", "-e", f], check=False).returncode == 0
        assert run(one + ["n2", "test", "-e", f], check=False).returncode != 0
        assert not os.path.exists(f), "file leaked to the host's /dev/shm"
    finally:
        run(one + ["n1", "rm", "-f", f], check=False)
    # A fresh world-writable sticky tmpfs on each node.
    out = run(["srun", "-N", "2", "-n", "2", "-l", "stat", "-f", "-c", "%T",
               "/dev/shm"]).stdout.split()
    assert sorted(out) == ["0:", "1:", "tmpfs", "tmpfs"]
    out = run(["srun", "-N", "2", "-n", "2", "stat", "-c", "%a",
               "/dev/shm"]).stdout.split()
    assert out == ["1777", "1777"]


def test_pmix():
    p = run(["srun", "--mpi=list"])
    mpis = p.stdout + p.stderr
    if "pmix" not in mpis:
        pytest.skip("this Slurm has no mpi/pmix plugin")
    tasks = {}
    out = run(["srun", "--mpi=pmix", "-N", "2", "-n", "3", "-l", "sh", "-c",
               'echo $(hostname) "$PMIX_RANK" "$PMIX_NAMESPACE"']).stdout
    for line in out.splitlines():
        label, _, rest = line.partition(": ")
        tasks[int(label)] = rest.split()
    assert sorted(tasks) == [0, 1, 2]
    assert {t[0] for t in tasks.values()} == {"n1", "n2"}
    for rank, (_, pmix_rank, _) in tasks.items():
        assert pmix_rank == str(rank)
    assert len({t[2] for t in tasks.values()}) == 1


MPI_PROG = """\
import socket
from mpi4py import MPI
c = MPI.COMM_WORLD
node = c.Split_type(MPI.COMM_TYPE_SHARED)
print(c.rank, c.size, socket.gethostname(), c.allreduce(c.rank), node.size)
"""


def test_mpi4py_over_pmix(tmp_path):
    # A real MPI job across the two emulated nodes, if Debian's mpi4py
    # (built on Open MPI) is installed; MPI must see two separate nodes.
    py = "/usr/bin/python3"
    if subprocess.run([py, "-c", "import mpi4py"],
                      capture_output=True).returncode != 0:
        pytest.skip("no mpi4py for /usr/bin/python3 (python3-mpi4py)")
    p = run(["srun", "--mpi=list"])
    if "pmix" not in p.stdout + p.stderr:
        pytest.skip("this Slurm has no mpi/pmix plugin")
    prog = tmp_path / "mpi_prog.py"
    prog.write_text(MPI_PROG)
    args = ["srun", "--mpi=pmix", "-N", "2", "-n", "4", py, str(prog)]
    out = run(args, check=False)
    if out.returncode != 0:
        # Seen once in ~60 runs, on a 2-core VM at load 40: one rank of
        # Debian's Open MPI 4.1.4 died of SIGSEGV. One retry, so CI does
        # not go red on that; a setup that is really broken fails twice.
        out = run(args)
    rows = sorted(line.split() for line in out.stdout.splitlines())
    assert rows == [["0", "4", "n1", "6", "3"], ["1", "4", "n1", "6", "3"],
                    ["2", "4", "n1", "6", "3"], ["3", "4", "n2", "6", "1"]]
