#!/usr/bin/env python3
"""Start-up time of ``LAUNCHER -n N ch-mpirun IMG -- CMD`` vs ``LAUNCHER -n N ch-run --join IMG -- CMD``.

Runs the variants in turn (interleaved, so drift hits all alike), REPS times each,
and prints per variant the median wall time and its ratio to ``ch-run --join``.

    python3 examples/launch-bench/mpirun_vs_join.py [--reps 9] [-n 8] [--stack ompi5 ...]

Stacks (as in ci/install-mpi.sh; the image is ci/build-mpi-image.sh's):
  ompi5   /opt/chrun/ompi5/bin/mpirun    CMD: /opt/ompi5/bin/python /opt/mpi-tests/allreduce.py
  mpich5  /opt/chrun/mpich5/bin/mpiexec  CMD: /opt/mpich5/bin/python /opt/mpi-tests/allreduce.py
  ompi4   mpirun.openmpi                 CMD: /opt/mpi-tests/allreduce-ompi4
  mpich4  mpiexec.mpich                  CMD: /opt/mpi-tests/allreduce-mpich4
Use --cmd true to time the container start alone (no MPI in CMD).
--bin DIR takes ch-run/ch-mpirun from DIR/<stack>/bin instead of the stack's venv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

IMG = os.environ.get("CHRUN_IMAGES", "/var/tmp/chrun-images") + "/mpi"
STACKS = {
    "ompi5": ("/opt/chrun/ompi5", ["/opt/chrun/ompi5/bin/mpirun", "--oversubscribe"],
              ["/opt/ompi5/bin/python", "/opt/mpi-tests/allreduce.py"], True),
    "mpich5": ("/opt/chrun/mpich5", ["/opt/chrun/mpich5/bin/mpiexec"],
               ["/opt/mpich5/bin/python", "/opt/mpi-tests/allreduce.py"], True),
    "ompi4": ("/opt/chrun/venv", ["mpirun.openmpi", "--oversubscribe"],
              ["/opt/mpi-tests/allreduce-ompi4"], False),
    "mpich4": ("/opt/chrun/venv", ["mpiexec.mpich"], ["/opt/mpi-tests/allreduce-mpich4"], False),
}


def timed(argv: list) -> float:
    t = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=300)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(argv)}\n{r.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("-n", type=int, default=8, help="ranks (default 8)")
    ap.add_argument("--stack", action="append", choices=sorted(STACKS))
    ap.add_argument("--cmd", choices=("mpi", "true"), default="mpi")
    ap.add_argument("--bin", help="directory with <stack>/bin/ch-run and ch-mpirun")
    a = ap.parse_args()
    if os.geteuid() == 0:
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    print(f"{a.n} ranks, {a.reps} interleaved runs each, CMD={a.cmd}, image {IMG}")
    print(f"{'stack':7} {'variant':26} {'median s':>9} {'min s':>7} {'ratio':>6}")
    for name in a.stack or list(STACKS):
        venv, launcher, cmd, has_mpi4py = STACKS[name]
        bindir = f"{a.bin}/{'venv' if venv.endswith('venv') else name}/bin" if a.bin else venv + "/bin"
        cmd = ["true"] if a.cmd == "true" else cmd
        variants = {
            "ch-run --join": launcher + ["-n", str(a.n), f"{bindir}/ch-run", "--join",
                                         f"--join-ct={a.n}", IMG, "--"] + cmd,
            "ch-mpirun --mode=env": launcher + ["-n", str(a.n), f"{bindir}/ch-mpirun",
                                                "--mode=env", IMG, "--"] + cmd,
        }
        if has_mpi4py:
            variants["ch-mpirun --mode=mpi4py"] = launcher + [
                "-n", str(a.n), f"{bindir}/ch-mpirun", "--mode=mpi4py", IMG, "--"] + cmd
        times: dict = {k: [] for k in variants}
        for k, argv in variants.items():  # warm-up (page cache), not counted
            timed(argv)
        for _ in range(a.reps):
            for k, argv in variants.items():
                times[k].append(timed(argv))
        base = statistics.median(times["ch-run --join"])
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:7} {k:26} {med:9.3f} {min(ts):7.3f} {med / base:6.2f}")


if __name__ == "__main__":
    main()
